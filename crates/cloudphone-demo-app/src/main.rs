//! `cloudphone-demo-app`: the demo phone's app. One full-screen X11 window with a text field
//! that shows what was typed, three buttons that change colour and count taps, a button that
//! plays a tone into the instance's PulseAudio, and one that clears the text — so a person
//! trying the demo sees touch, keys, text and sound work end to end through the player.
//!
//! It speaks the X11 core protocol only (x11rb), with the server's built-in `fixed` font scaled
//! up ([`font`]): it runs on any Xvfb, inside the instance's sandbox, with no toolkit and no
//! font package. Size: `WIDTH`×`HEIGHT` from the environment (the node's launcher sets them),
//! else the screen's.
//!
//! # Layout
//! - [`ui`]: layout, hit tests, text and counters; pure.
//! - [`font`]: the scaled built-in font.
//! - [`tone`]: the tone button's sound.
#![forbid(unsafe_code)]

mod font;
mod tone;
mod ui;

use std::process::{Child, ExitCode};
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use font::{Glyphs, rect};
use ui::{Control, Effect, Layout, State};

/// Why the app stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot connect to the X display: {0}")]
    Connect(#[from] x11rb::errors::ConnectError),
    #[error("X connection: {0}")]
    Connection(#[from] x11rb::errors::ConnectionError),
    #[error("X request failed: {0}")]
    Reply(#[from] x11rb::errors::ReplyError),
    #[error("X request failed: {0}")]
    Id(#[from] x11rb::errors::ReplyOrIdError),
    /// The display cannot be drawn on the way this app draws.
    #[error("unsupported display: {0}")]
    Display(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudphone-demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Colours of everything but the counting buttons.
const BACKGROUND: u32 = 0x12_1a_24;
const FOREGROUND: u32 = 0xf5_f5_f5;
const FIELD: u32 = 0xff_ff_ff;
const FIELD_TEXT: u32 = 0x10_10_10;
const HINT: u32 = 0x90_90_90;
const TONE: u32 = 0x00_89_7b;
const TONE_PLAYING: u32 = 0xff_c1_07;
const CLEAR: u32 = 0x54_6e_7a;
/// A pressed button is drawn with this over it.
const PRESSED: u32 = 0x00_00_00;
/// How often the loop looks at a playing tone's process (and so how late the button says the
/// tone ended); input is read without waiting for it.
const TONE_POLL: Duration = Duration::from_millis(20);

/// The window and what drawing on it needs.
struct App {
    conn: RustConnection,
    window: xproto::Window,
    /// The back buffer: each frame is drawn here whole, then copied, so nothing flickers.
    buffer: xproto::Pixmap,
    gc: xproto::Gcontext,
    depth: u8,
    root: xproto::Window,
    /// Turns `0xRRGGBB` into a pixel of the window's (TrueColor) visual.
    colour: PixelFormat,
    glyphs: Glyphs,
    layout: Layout,
    keymap: Keymap,
}

fn run() -> Result<(), Error> {
    let (conn, screen_num) = x11rb::connect(None)?;
    let screen = conn.setup().roots[screen_num].clone();
    let size = |name: &str, fallback: u16| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(fallback)
    };
    let (width, height) = (
        size("WIDTH", screen.width_in_pixels),
        size("HEIGHT", screen.height_in_pixels),
    );
    let colour = PixelFormat::of_root_visual(&screen)?;
    let glyphs = Glyphs::load(&conn, screen.root, screen.root_depth)?;
    let keymap = Keymap::read(&conn)?;

    let window = conn.generate_id()?;
    conn.create_window(
        screen.root_depth,
        window,
        screen.root,
        0,
        0,
        width,
        height,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        screen.root_visual,
        &xproto::CreateWindowAux::new()
            .background_pixel(colour.pixel(BACKGROUND))
            .event_mask(
                xproto::EventMask::EXPOSURE
                    | xproto::EventMask::KEY_PRESS
                    | xproto::EventMask::BUTTON_PRESS
                    | xproto::EventMask::BUTTON_RELEASE
                    | xproto::EventMask::STRUCTURE_NOTIFY,
            ),
    )?;
    conn.change_property8(
        xproto::PropMode::REPLACE,
        window,
        xproto::AtomEnum::WM_NAME,
        xproto::AtomEnum::STRING,
        b"cloudphone demo",
    )?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, window, &xproto::CreateGCAux::new())?;
    let buffer = conn.generate_id()?;
    conn.create_pixmap(screen.root_depth, buffer, window, width, height)?;
    conn.map_window(window)?;
    conn.flush()?;

    let mut app = App {
        conn,
        window,
        buffer,
        gc,
        depth: screen.root_depth,
        root: screen.root,
        colour,
        glyphs,
        layout: Layout::new(width, height),
        keymap,
    };
    let mut state = State::default();
    let mut tone: Option<Child> = None;
    app.draw(&state)?;
    loop {
        let event = if tone.is_some() {
            match app.conn.poll_for_event()? {
                Some(e) => Some(e),
                None => {
                    std::thread::sleep(TONE_POLL);
                    None
                }
            }
        } else {
            Some(app.conn.wait_for_event()?)
        };
        let mut dirty = false;
        if let Some(event) = event {
            dirty |= app.handle(&event, &mut state, &mut tone)?;
            while let Some(event) = app.conn.poll_for_event()? {
                dirty |= app.handle(&event, &mut state, &mut tone)?;
            }
        }
        if let Some(child) = tone.as_mut() {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    if !status.success() {
                        state.sound_error = Some(format!("no sound: player {status}"));
                    }
                    tone = None;
                    state.playing = false;
                    dirty = true;
                }
                Err(e) => {
                    state.sound_error = Some(e.to_string());
                    tone = None;
                    state.playing = false;
                    dirty = true;
                }
            }
        }
        if dirty {
            app.draw(&state)?;
        }
    }
}

impl App {
    /// Applies one event; true when the screen must be redrawn.
    fn handle(
        &mut self,
        event: &Event,
        state: &mut State,
        tone: &mut Option<Child>,
    ) -> Result<bool, Error> {
        Ok(match event {
            Event::Expose(e) if e.count == 0 => {
                self.present()?;
                false
            }
            Event::ConfigureNotify(e) => {
                let resized = Layout::new(e.width, e.height);
                if resized == self.layout {
                    return Ok(false);
                }
                self.layout = resized;
                self.conn.free_pixmap(self.buffer)?;
                self.buffer = self.conn.generate_id()?;
                self.conn
                    .create_pixmap(self.depth, self.buffer, self.root, e.width, e.height)?;
                true
            }
            Event::MapNotify(_) => {
                // No window manager hands out focus on an instance's display: take it once
                // the window is viewable, so keys (real or injected through XTest) come here
                // wherever the pointer is.
                self.conn.set_input_focus(
                    xproto::InputFocus::POINTER_ROOT,
                    self.window,
                    x11rb::CURRENT_TIME,
                )?;
                self.conn.flush()?;
                false
            }
            Event::Error(e) => {
                eprintln!(
                    "cloudphone-demo-app: X error {:?} (request {})",
                    e.error_kind, e.major_opcode
                );
                false
            }
            Event::MappingNotify(_) => {
                // The node binds keysyms the keymap lacks to a spare keycode before typing
                // them; read the map again so that key means its new keysym.
                self.keymap = Keymap::read(&self.conn)?;
                false
            }
            Event::KeyPress(e) => {
                let shift = u16::from(e.state) & u16::from(xproto::KeyButMask::SHIFT) != 0;
                let lock = u16::from(e.state) & u16::from(xproto::KeyButMask::LOCK) != 0;
                state.key(self.keymap.keysym(e.detail, shift, lock))
            }
            Event::ButtonPress(e) if e.detail == 1 => {
                let hit = self.layout.hit(i32::from(e.event_x), i32::from(e.event_y));
                state.press(hit);
                hit.is_some()
            }
            Event::ButtonRelease(e) if e.detail == 1 => {
                let was = state.pressed;
                let hit = self.layout.hit(i32::from(e.event_x), i32::from(e.event_y));
                if state.release(hit) == Effect::PlayTone {
                    match tone::play() {
                        Ok(child) => *tone = Some(child),
                        Err(e) => {
                            state.playing = false;
                            state.sound_error = Some(format!("no sound: {e}"));
                        }
                    }
                }
                was.is_some()
            }
            _ => false,
        })
    }

    /// Draws the whole screen into the back buffer and shows it.
    fn draw(&self, state: &State) -> Result<(), Error> {
        let l = &self.layout;
        let s = l.scale;
        let line = self.glyphs.height * s;
        self.fill(BACKGROUND, &[rect(0, 0, l.width, l.height)])?;
        self.text(FOREGROUND, "cloudphone demo", l.title.x, l.title.y, s)?;

        // The text field: the end of what was typed, and a cursor after it.
        let f = l.field;
        let pad = s * 3;
        self.fill(FIELD, &[rect(f.x, f.y, f.w, f.h)])?;
        let columns = ((f.w - 2 * pad) / (self.glyphs.width * s)).max(1) as usize;
        let rows = ((f.h - 2 * pad) / line).max(1) as usize;
        if state.text.is_empty() {
            self.text(HINT, "type here", f.x + pad, f.y + pad, s)?;
            self.fill(
                FIELD_TEXT,
                &[rect(f.x + pad, f.y + pad + line - s, s * 2, s)],
            )?;
        } else {
            let lines = ui::wrap(&state.text, columns, rows);
            for (i, text) in lines.iter().enumerate() {
                self.text(FIELD_TEXT, text, f.x + pad, f.y + pad + i as i32 * line, s)?;
            }
            let last = lines.len().saturating_sub(1) as i32;
            let end = self.glyphs.text_width(lines.last().map_or("", |t| t), s);
            self.fill(
                FIELD_TEXT,
                &[rect(
                    f.x + pad + end,
                    f.y + pad + last * line + line - s,
                    self.glyphs.width * s,
                    s,
                )],
            )?;
        }

        for (i, r) in l.taps.iter().enumerate() {
            self.button(
                *r,
                state.tap_colour(i),
                &[ui::TAP_NAMES[i], &state.counts[i].to_string()],
                state.pressed == Some(Control::Tap(i)),
            )?;
        }
        let (tone_colour, tone_label) = if state.playing {
            (TONE_PLAYING, "playing...")
        } else {
            (TONE, "play tone")
        };
        self.button(
            l.tone,
            tone_colour,
            &[tone_label],
            state.pressed == Some(Control::Tone),
        )?;
        self.button(
            l.clear,
            CLEAR,
            &["clear text"],
            state.pressed == Some(Control::Clear),
        )?;

        let status = match &state.sound_error {
            Some(e) => e.clone(),
            None => format!(
                "{}x{}  taps {}  tones {}",
                l.width,
                l.height,
                state.counts.iter().sum::<u32>(),
                state.tones
            ),
        };
        // Smaller than the controls, but never the unreadable 1×.
        let small = ((s + 1) / 2).max(2).min(s);
        self.text(HINT, &status, l.status.x, l.status.y, small)?;
        self.present()
    }

    /// A button: `colour` (darker while pressed) with `labels` centred, one per line.
    fn button(
        &self,
        r: ui::Rect,
        colour: u32,
        labels: &[&str],
        pressed: bool,
    ) -> Result<(), Error> {
        let colour = if pressed {
            mix(colour, PRESSED)
        } else {
            colour
        };
        self.fill(colour, &[rect(r.x, r.y, r.w, r.h)])?;
        let s = self.layout.scale;
        let line = self.glyphs.height * s;
        let top = r.y + (r.h - line * labels.len() as i32) / 2;
        for (i, label) in labels.iter().enumerate() {
            let x = r.x + (r.w - self.glyphs.text_width(label, s)) / 2;
            self.text(FOREGROUND, label, x, top + i as i32 * line, s)?;
        }
        Ok(())
    }

    fn text(&self, colour: u32, text: &str, x: i32, y: i32, scale: i32) -> Result<(), Error> {
        self.fill(colour, &self.glyphs.rects(text, x, y, scale))
    }

    fn fill(&self, colour: u32, rects: &[xproto::Rectangle]) -> Result<(), Error> {
        self.conn.change_gc(
            self.gc,
            &xproto::ChangeGCAux::new().foreground(self.colour.pixel(colour)),
        )?;
        // Long texts make many rectangles; stay well under the request size limit.
        for chunk in rects.chunks(4096) {
            self.conn.poly_fill_rectangle(self.buffer, self.gc, chunk)?;
        }
        Ok(())
    }

    /// Copies the back buffer to the window.
    fn present(&self) -> Result<(), Error> {
        let (w, h) = (self.layout.width as u16, self.layout.height as u16);
        self.conn
            .copy_area(self.buffer, self.window, self.gc, 0, 0, 0, 0, w, h)?;
        self.conn.flush()?;
        Ok(())
    }
}

/// Half of `a`, half of `b`, per channel.
fn mix(a: u32, b: u32) -> u32 {
    let channel = |shift: u32| ((((a >> shift) & 0xff) + ((b >> shift) & 0xff)) / 2) << shift;
    channel(16) | channel(8) | channel(0)
}

/// How `0xRRGGBB` maps onto the root visual's pixels (TrueColor or DirectColor masks).
struct PixelFormat {
    masks: [u32; 3],
}

impl PixelFormat {
    fn of_root_visual(screen: &xproto::Screen) -> Result<Self, Error> {
        let visual = screen
            .allowed_depths
            .iter()
            .flat_map(|d| &d.visuals)
            .find(|v| v.visual_id == screen.root_visual)
            .ok_or(Error::Display("the root visual is not listed".into()))?;
        if visual.class != xproto::VisualClass::TRUE_COLOR
            && visual.class != xproto::VisualClass::DIRECT_COLOR
        {
            return Err(Error::Display(format!(
                "the root visual is {:?}, not TrueColor",
                visual.class
            )));
        }
        Ok(Self {
            masks: [visual.red_mask, visual.green_mask, visual.blue_mask],
        })
    }

    fn pixel(&self, rgb: u32) -> u32 {
        let channels = [(rgb >> 16) & 0xff, (rgb >> 8) & 0xff, rgb & 0xff];
        self.masks
            .iter()
            .zip(channels)
            .map(|(&mask, value)| {
                if mask == 0 {
                    return 0;
                }
                let shift = mask.trailing_zeros();
                let bits = (mask >> shift).count_ones();
                let scaled = if bits >= 8 {
                    value << (bits - 8)
                } else {
                    value >> (8 - bits)
                };
                (scaled << shift) & mask
            })
            .fold(0, |acc, c| acc | c)
    }
}

/// The server's keycode → keysym table.
struct Keymap {
    min_keycode: u8,
    per_keycode: usize,
    keysyms: Vec<u32>,
}

impl Keymap {
    fn read(conn: &RustConnection) -> Result<Self, Error> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn.get_keyboard_mapping(min, max - min + 1)?.reply()?;
        Ok(Self {
            min_keycode: min,
            per_keycode: usize::from(reply.keysyms_per_keycode),
            keysyms: reply.keysyms,
        })
    }

    /// The keysym `keycode` types at the shift level the modifiers choose (core protocol rules:
    /// a missing shifted symbol means the unshifted one, upper-cased for letters; Lock shifts
    /// letters only).
    fn keysym(&self, keycode: u8, shift: bool, lock: bool) -> u32 {
        let Some(index) = keycode.checked_sub(self.min_keycode) else {
            return 0;
        };
        let at = usize::from(index) * self.per_keycode;
        let level = |i: usize| {
            if i < self.per_keycode {
                self.keysyms.get(at + i).copied().unwrap_or(0)
            } else {
                0
            }
        };
        let (lower, upper) = (level(0), level(1));
        let is_letter = |k: u32| (0x61..=0x7a).contains(&k);
        let upper = if upper == 0 {
            if is_letter(lower) {
                lower - 0x20
            } else {
                lower
            }
        } else {
            upper
        };
        let shifted = shift ^ (lock && is_letter(lower));
        if shifted { upper } else { lower }
    }
}
