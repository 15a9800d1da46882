//! Large text from the X server's built-in `fixed` font: every X server has it (Xvfb without
//! any font package included), but it is 6×13 pixels, unreadable on a 720×1280 phone. Its
//! Latin-1 glyphs are drawn once into a pixmap and read back as bitmaps; text is then drawn
//! as filled rectangles, each font pixel `scale`×`scale` screen pixels.

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};

use crate::Error;

/// Glyphs per row of the pixmap they are drawn into.
const PER_ROW: u16 = 64;
/// The font every X server has built in.
const FONT: &[u8] = b"fixed";

/// The bitmaps of the `fixed` font's characters 0–255.
pub(crate) struct Glyphs {
    /// Cell width and height in font pixels (the font is monospaced).
    pub(crate) width: i32,
    pub(crate) height: i32,
    /// Per character, the lit pixels of its cell, row by row.
    bits: Vec<Vec<bool>>,
}

impl Glyphs {
    /// Reads the font's glyphs from the server through a scratch pixmap on `root`.
    pub(crate) fn load(
        conn: &impl Connection,
        root: xproto::Window,
        depth: u8,
    ) -> Result<Self, Error> {
        let font = conn.generate_id()?;
        conn.open_font(font, FONT)?.check()?;
        let info = conn.query_font(font)?.reply()?;
        let cell_w = info.max_bounds.character_width.max(1) as u16;
        let ascent = info.font_ascent.max(1) as u16;
        let cell_h = ascent + info.font_descent.max(0) as u16;
        let rows = 256 / PER_ROW;
        let (pw, ph) = (cell_w * PER_ROW, cell_h * rows);

        let pixmap = conn.generate_id()?;
        conn.create_pixmap(depth, pixmap, root, pw, ph)?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            pixmap,
            &xproto::CreateGCAux::new()
                .foreground(0)
                .background(0)
                .font(font),
        )?;
        conn.poly_fill_rectangle(
            pixmap,
            gc,
            &[xproto::Rectangle {
                x: 0,
                y: 0,
                width: pw,
                height: ph,
            }],
        )?;
        conn.change_gc(gc, &xproto::ChangeGCAux::new().foreground(u32::MAX))?;
        for row in 0..rows {
            let first = row * PER_ROW;
            // Characters without a glyph in the font draw nothing.
            let chars: Vec<u8> = (first..first + PER_ROW).map(|c| c as u8).collect();
            conn.image_text8(pixmap, gc, 0, (row * cell_h + ascent) as i16, &chars)?;
        }
        let image = conn
            .get_image(xproto::ImageFormat::Z_PIXMAP, pixmap, 0, 0, pw, ph, !0)?
            .reply()?;
        conn.free_gc(gc)?;
        conn.free_pixmap(pixmap)?;
        conn.close_font(font)?;

        let format = conn
            .setup()
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .ok_or(Error::Display(format!("no pixmap format of depth {depth}")))?;
        let bpp = usize::from(format.bits_per_pixel);
        let pad = usize::from(format.scanline_pad);
        if bpp % 8 != 0 {
            return Err(Error::Display(format!("{bpp} bits per pixel")));
        }
        let stride = (usize::from(pw) * bpp).div_ceil(pad) * pad / 8;
        let bytes = bpp / 8;
        let lit = |x: usize, y: usize| {
            let at = y * stride + x * bytes;
            image
                .data
                .get(at..at + bytes)
                .is_some_and(|p| p.iter().any(|&b| b != 0))
        };
        let (cw, ch) = (usize::from(cell_w), usize::from(cell_h));
        let bits = (0..256usize)
            .map(|c| {
                let (ox, oy) = ((c % PER_ROW as usize) * cw, (c / PER_ROW as usize) * ch);
                (0..ch)
                    .flat_map(|y| (0..cw).map(move |x| (x, y)))
                    .map(|(x, y)| lit(ox + x, oy + y))
                    .collect()
            })
            .collect();
        Ok(Self {
            width: i32::from(cell_w),
            height: i32::from(cell_h),
            bits,
        })
    }

    /// Rectangles drawing `text` with its top-left corner at `(x, y)`, each font pixel
    /// `scale`×`scale`; runs of lit pixels in a row become one rectangle. Characters past
    /// Latin-1 draw as `?`.
    pub(crate) fn rects(&self, text: &str, x: i32, y: i32, scale: i32) -> Vec<xproto::Rectangle> {
        let mut out = Vec::new();
        for (i, c) in text.chars().enumerate() {
            let code = u32::from(c);
            let glyph = &self.bits[if code < 256 {
                code as usize
            } else {
                b'?' as usize
            }];
            let left = x + i as i32 * self.width * scale;
            for row in 0..self.height {
                let line = &glyph[(row * self.width) as usize..((row + 1) * self.width) as usize];
                let mut col = 0;
                while col < self.width {
                    if !line[col as usize] {
                        col += 1;
                        continue;
                    }
                    let start = col;
                    while col < self.width && line[col as usize] {
                        col += 1;
                    }
                    // Each run a little wider than the font's: its 1-pixel strokes, scaled, are
                    // thin on a phone screen; half a font pixel more keeps letters apart.
                    out.push(rect(
                        left + start * scale,
                        y + row * scale,
                        (col - start) * scale + scale / 2,
                        scale,
                    ));
                }
            }
        }
        out
    }

    /// Width in screen pixels of `text` at `scale`.
    pub(crate) fn text_width(&self, text: &str, scale: i32) -> i32 {
        text.chars().count() as i32 * self.width * scale
    }
}

/// An X rectangle from window coordinates (clamped to what X can express).
pub(crate) fn rect(x: i32, y: i32, w: i32, h: i32) -> xproto::Rectangle {
    let clamp16 = |v: i32| v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    let clampu = |v: i32| v.clamp(0, i32::from(u16::MAX)) as u16;
    xproto::Rectangle {
        x: clamp16(x),
        y: clamp16(y),
        width: clampu(w),
        height: clampu(h),
    }
}
