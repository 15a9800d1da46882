//! A machine-readable clock for glass-to-glass latency: the current time drawn as a block
//! barcode on an X display many times per frame, and the reader that gets it back out of a
//! decoded frame. Writer and reader run on one host and read the same realtime clock.
//!
//! Layout, relative to the frame width `w` so it survives scaling: blocks of `w / 30` pixels,
//! an 8 × 8 grid one block in from the top-left corner, row-major. Bits 0–31 are the time in
//! units of 100 µs (wrapping every ~5 days), bits 32–63 their complement: a frame captured
//! between the writer's two fill requests, or one the encoder smeared, fails the check and
//! is counted instead of read wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, CreateGCAux, Rectangle};

/// Blocks per row and column.
pub const GRID: u32 = 8;
/// How often the writer redraws: what the screen shows is at most this old.
pub const DRAW_PERIOD: Duration = Duration::from_millis(2);

/// Now, in the clock's unit (100 µs), truncated to 32 bits.
pub fn now_ticks() -> u32 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_micros() / 100) as u32
}

/// Milliseconds from a drawn value to now (wrapping arithmetic; negative means clock skew).
pub fn age_ms(drawn: u32) -> f64 {
    f64::from(now_ticks().wrapping_sub(drawn) as i32) / 10.0
}

fn block(width: u32) -> u32 {
    (width / 30).max(4)
}

/// The 64 bits drawn for `value`.
pub fn bits(value: u32) -> u64 {
    u64::from(value) | (u64::from(!value) << 32)
}

/// The block rectangles (x, y, size) for bit `i` of a frame `width` wide.
pub fn block_rect(width: u32, i: u32) -> (u32, u32, u32) {
    let b = block(width);
    let (col, row) = (i % GRID, i / GRID);
    (b + col * b, b + row * b, b)
}

/// Reads the clock from a GRAY8 frame (`stride` bytes per row); `None` when the check fails.
pub fn read_gray(data: &[u8], width: u32, height: u32, stride: usize) -> Option<u32> {
    let mut word = 0u64;
    for i in 0..GRID * GRID {
        let (x, y, b) = block_rect(width, i);
        if y + b > height {
            return None;
        }
        // Mean of the central half of the block: away from the edges the encoder blurs.
        let (x0, y0, inner) = (x + b / 4, y + b / 4, (b / 2).max(1));
        let mut sum = 0u64;
        for yy in y0..y0 + inner {
            let row = data.get(yy as usize * stride..)?;
            for xx in x0..x0 + inner {
                sum += u64::from(*row.get(xx as usize)?);
            }
        }
        let mean = sum / u64::from(inner * inner);
        if mean < 128 {
            word |= 1 << i;
        }
    }
    let value = word as u32;
    ((word >> 32) as u32 == !value).then_some(value)
}

/// Draws the clock on the root window of `$DISPLAY` every [`DRAW_PERIOD`], forever: the
/// "app" of the benchmark's x11 instance (its launcher).
pub fn run_writer() -> Result<()> {
    let (conn, screen_num) = x11rb::connect(None).context("connecting to $DISPLAY")?;
    let screen = &conn.setup().roots[screen_num];
    let (root, width) = (screen.root, u32::from(screen.width_in_pixels));
    let black = conn.generate_id()?;
    let white = conn.generate_id()?;
    conn.create_gc(
        black,
        root,
        &CreateGCAux::new().foreground(screen.black_pixel),
    )?;
    conn.create_gc(
        white,
        root,
        &CreateGCAux::new().foreground(screen.white_pixel),
    )?;
    // A white field behind the code, once, so the rest of the screen does not matter.
    let field = block(width) * (GRID + 2);
    conn.poly_fill_rectangle(
        root,
        white,
        &[Rectangle {
            x: 0,
            y: 0,
            width: field as u16,
            height: field as u16,
        }],
    )?;
    loop {
        let word = bits(now_ticks());
        let (mut ones, mut zeros) = (Vec::with_capacity(64), Vec::with_capacity(64));
        for i in 0..GRID * GRID {
            let (x, y, b) = block_rect(width, i);
            let r = Rectangle {
                x: x as i16,
                y: y as i16,
                width: b as u16,
                height: b as u16,
            };
            if word >> i & 1 == 1 {
                ones.push(r);
            } else {
                zeros.push(r);
            }
        }
        conn.poly_fill_rectangle(root, black, &ones)?;
        conn.poly_fill_rectangle(root, white, &zeros)?;
        conn.flush()?;
        std::thread::sleep(DRAW_PERIOD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_word_reads_back_and_a_torn_one_does_not() {
        let (w, h) = (360u32, 640u32);
        let paint = |word: u64| {
            let mut img = vec![255u8; (w * h) as usize];
            for i in 0..64 {
                if word >> i & 1 == 1 {
                    let (x, y, b) = block_rect(w, i);
                    for yy in y..y + b {
                        for xx in x..x + b {
                            img[(yy * w + xx) as usize] = 0;
                        }
                    }
                }
            }
            img
        };
        let value = 0xdead_beef;
        assert_eq!(
            read_gray(&paint(bits(value)), w, h, w as usize),
            Some(value)
        );
        let torn = bits(value) | 1 << 32;
        assert_eq!(read_gray(&paint(torn), w, h, w as usize), None);
        assert!(age_ms(now_ticks().wrapping_sub(25)) >= 2.5);
    }
}
