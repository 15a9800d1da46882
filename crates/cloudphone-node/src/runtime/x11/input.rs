//! Input into an Xvfb display through XTest: touches as pointer moves and button 1, DOM key
//! codes and text as keysyms mapped through the server's keyboard map (see the x11 module
//! docs for the mapping).

use std::collections::HashMap;
use std::sync::Mutex;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::x_err;
use crate::runtime::common::{lock, pixel_of};
use crate::runtime::{InputEvent, PhoneKey, RuntimeError, TouchAction};

const SHIFT_L: u32 = 0xffe1;
const ALT_L: u32 = 0xffe9;
const TAB: u32 = 0xff09;
const ESCAPE: u32 = 0xff1b;
const SUPER_L: u32 = 0xffeb;
const RETURN: u32 = 0xff0d;

/// A client connection used to inject input into one display.
pub(super) struct XInput {
    conn: RustConnection,
    root: xproto::Window,
    width: u16,
    height: u16,
    keymap: Mutex<Keymap>,
}

/// The server's keycode ↔ keysym table, as far as injection needs it.
struct Keymap {
    per_keycode: u8,
    /// keysym → (keycode, level); the lowest level wins.
    lookup: HashMap<u32, (u8, usize)>,
    /// A keycode with no keysyms, rebound on demand for keysyms the map lacks.
    spare: Option<u8>,
}

impl XInput {
    pub(super) fn connect(display: u32) -> Result<Self, RuntimeError> {
        let (conn, screen_num) = RustConnection::connect(Some(&format!(":{display}")))
            .map_err(|e| x_err(e.to_string()))?;
        let screen = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| x_err("display has no screen"))?;
        let (root, width, height) = (screen.root, screen.width_in_pixels, screen.height_in_pixels);
        conn.extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)
            .map_err(|e| x_err(e.to_string()))?
            .ok_or_else(|| x_err("XTEST extension missing"))?;
        let keymap = Keymap::load(&conn)?;
        Ok(Self {
            conn,
            root,
            width,
            height,
            keymap: Mutex::new(keymap),
        })
    }

    pub(super) fn inject(&self, event: &InputEvent) -> Result<(), RuntimeError> {
        match event {
            InputEvent::Touch { action, x, y, .. } => {
                let px = scale(*x, self.width);
                let py = scale(*y, self.height);
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, px, py)?;
                match action {
                    TouchAction::Down => self.fake(xproto::BUTTON_PRESS_EVENT, 1, 0, 0)?,
                    TouchAction::Up => self.fake(xproto::BUTTON_RELEASE_EVENT, 1, 0, 0)?,
                    TouchAction::Move => {}
                }
            }
            InputEvent::Key { code, down } => {
                let keysym = keysym_for_code(code).ok_or_else(|| RuntimeError::Process {
                    program: "x11".to_owned(),
                    detail: format!("unknown key code {code:?}"),
                })?;
                let (keycode, _) = self.keycode_for(keysym)?;
                let kind = if *down {
                    xproto::KEY_PRESS_EVENT
                } else {
                    xproto::KEY_RELEASE_EVENT
                };
                self.fake(kind, keycode, 0, 0)?;
            }
            InputEvent::Text { text } => {
                for c in text.chars() {
                    self.type_keysym(keysym_for_char(c))?;
                }
            }
            InputEvent::Phone { key } => match key {
                PhoneKey::Back => self.tap(&[ESCAPE])?,
                PhoneKey::Home => self.tap(&[SUPER_L])?,
                PhoneKey::Recents => self.tap(&[ALT_L, TAB])?,
            },
        }
        // A round trip, so errors surface here and events are applied in order before the
        // next call.
        self.conn
            .get_input_focus()
            .map_err(|e| x_err(e.to_string()))?
            .reply()
            .map_err(|e| x_err(e.to_string()))?;
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), RuntimeError> {
        let root = if kind == xproto::MOTION_NOTIFY_EVENT {
            self.root
        } else {
            x11rb::NONE
        };
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, root, x, y, 0)
            .map_err(|e| x_err(e.to_string()))?;
        self.conn.flush().map_err(|e| x_err(e.to_string()))
    }

    /// Presses `keysyms` in order, then releases them in reverse (a chord such as Alt+Tab).
    fn tap(&self, keysyms: &[u32]) -> Result<(), RuntimeError> {
        let mut codes = Vec::with_capacity(keysyms.len());
        for &keysym in keysyms {
            codes.push(self.keycode_for(keysym)?.0);
        }
        for &code in &codes {
            self.fake(xproto::KEY_PRESS_EVENT, code, 0, 0)?;
        }
        for &code in codes.iter().rev() {
            self.fake(xproto::KEY_RELEASE_EVENT, code, 0, 0)?;
        }
        Ok(())
    }

    /// Types one keysym, holding Shift when it sits on the shifted level.
    fn type_keysym(&self, keysym: u32) -> Result<(), RuntimeError> {
        let (code, level) = self.keycode_for(keysym)?;
        if level == 1 {
            let shift = self.keycode_for(SHIFT_L)?.0;
            self.fake(xproto::KEY_PRESS_EVENT, shift, 0, 0)?;
            self.fake(xproto::KEY_PRESS_EVENT, code, 0, 0)?;
            self.fake(xproto::KEY_RELEASE_EVENT, code, 0, 0)?;
            self.fake(xproto::KEY_RELEASE_EVENT, shift, 0, 0)
        } else {
            self.fake(xproto::KEY_PRESS_EVENT, code, 0, 0)?;
            self.fake(xproto::KEY_RELEASE_EVENT, code, 0, 0)
        }
    }

    /// The keycode (and level) producing `keysym`, binding it to the spare keycode when the
    /// current map has none.
    fn keycode_for(&self, keysym: u32) -> Result<(u8, usize), RuntimeError> {
        let mut keymap = lock(&self.keymap);
        if let Some(&found) = keymap.lookup.get(&keysym) {
            return Ok(found);
        }
        let spare = keymap
            .spare
            .ok_or_else(|| x_err(format!("no keycode for keysym {keysym:#x}")))?;
        let syms = vec![keysym; usize::from(keymap.per_keycode)];
        self.conn
            .change_keyboard_mapping(1, spare, keymap.per_keycode, &syms)
            .map_err(|e| x_err(e.to_string()))?;
        self.conn
            .get_input_focus()
            .map_err(|e| x_err(e.to_string()))?
            .reply()
            .map_err(|e| x_err(e.to_string()))?;
        // The spare keycode now means this keysym; forget what it meant before.
        keymap.lookup.retain(|_, (code, _)| *code != spare);
        keymap.lookup.insert(keysym, (spare, 0));
        Ok((spare, 0))
    }
}

impl Keymap {
    fn load(conn: &RustConnection) -> Result<Self, RuntimeError> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, max - min + 1)
            .map_err(|e| x_err(e.to_string()))?
            .reply()
            .map_err(|e| x_err(e.to_string()))?;
        let per = usize::from(reply.keysyms_per_keycode.max(1));
        let mut lookup = HashMap::new();
        let mut spare = None;
        for (i, syms) in reply.keysyms.chunks(per).enumerate() {
            let Ok(offset) = u8::try_from(i) else { break };
            let code = min.saturating_add(offset);
            if syms.iter().all(|&s| s == 0) {
                spare = Some(code);
                continue;
            }
            // Only the unshifted and shifted levels of group 1 are reachable with Shift alone.
            for (level, &sym) in syms.iter().take(2).enumerate() {
                if sym != 0 {
                    lookup.entry(sym).or_insert((code, level));
                }
            }
        }
        Ok(Self {
            per_keycode: reply.keysyms_per_keycode.max(1),
            lookup,
            spare,
        })
    }
}

/// Normalised 0..=1 to a pixel, clamped on screen.
fn scale(v: f64, size: u16) -> i16 {
    let px = pixel_of(v, u32::from(size));
    // In range by construction (0..=u16::MAX-1 fits i16 only for sane screens; clamp anyway).
    px.min(f64::from(i16::MAX)) as i16
}

/// The X keysym for a DOM `KeyboardEvent.code`; `None` for codes not mapped.
pub fn keysym_for_code(code: &str) -> Option<u32> {
    if let Some(letter) = code.strip_prefix("Key") {
        let mut chars = letter.chars();
        if let (Some(c), None) = (chars.next(), chars.next())
            && c.is_ascii_uppercase()
        {
            return Some(u32::from(c.to_ascii_lowercase()));
        }
        return None;
    }
    if let Some(digit) = code.strip_prefix("Digit") {
        let mut chars = digit.chars();
        if let (Some(c), None) = (chars.next(), chars.next())
            && c.is_ascii_digit()
        {
            return Some(u32::from(c));
        }
        return None;
    }
    if let Some(n) = code.strip_prefix('F').and_then(|n| n.parse::<u32>().ok())
        && (1..=12).contains(&n)
    {
        return Some(0xffbe + n - 1);
    }
    let keysym = match code {
        "Enter" | "NumpadEnter" => RETURN,
        "Escape" => ESCAPE,
        "Backspace" => 0xff08,
        "Tab" => TAB,
        "Space" => 0x20,
        "ArrowLeft" => 0xff51,
        "ArrowUp" => 0xff52,
        "ArrowRight" => 0xff53,
        "ArrowDown" => 0xff54,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "Insert" => 0xff63,
        "Delete" => 0xffff,
        "ShiftLeft" => SHIFT_L,
        "ShiftRight" => 0xffe2,
        "ControlLeft" => 0xffe3,
        "ControlRight" => 0xffe4,
        "AltLeft" => ALT_L,
        "AltRight" => 0xffea,
        "MetaLeft" => SUPER_L,
        "MetaRight" => 0xffec,
        "CapsLock" => 0xffe5,
        "Minus" => 0x2d,
        "Equal" => 0x3d,
        "BracketLeft" => 0x5b,
        "BracketRight" => 0x5d,
        "Backslash" => 0x5c,
        "Semicolon" => 0x3b,
        "Quote" => 0x27,
        "Backquote" => 0x60,
        "Comma" => 0x2c,
        "Period" => 0x2e,
        "Slash" => 0x2f,
        _ => return None,
    };
    Some(keysym)
}

/// The X keysym that types `c`.
pub fn keysym_for_char(c: char) -> u32 {
    match c {
        '\n' | '\r' => RETURN,
        '\t' => TAB,
        // Latin-1 printable characters are their own keysyms.
        ' '..='~' | '\u{a0}'..='\u{ff}' => u32::from(c),
        _ => 0x0100_0000 + u32::from(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom_codes_to_keysyms() {
        let cases = [
            ("KeyA", Some(0x61)),
            ("KeyZ", Some(0x7a)),
            ("Digit0", Some(0x30)),
            ("Digit9", Some(0x39)),
            ("Enter", Some(0xff0d)),
            ("Escape", Some(0xff1b)),
            ("Backspace", Some(0xff08)),
            ("Space", Some(0x20)),
            ("ArrowUp", Some(0xff52)),
            ("F1", Some(0xffbe)),
            ("F12", Some(0xffc9)),
            ("ShiftLeft", Some(0xffe1)),
            ("MetaLeft", Some(0xffeb)),
            ("Slash", Some(0x2f)),
            ("F13", None),
            ("Keya", None),
            ("KeyAB", None),
            ("Digit10", None),
            ("Nonsense", None),
        ];
        for (code, want) in cases {
            assert_eq!(keysym_for_code(code), want, "{code}");
        }
    }

    #[test]
    fn chars_to_keysyms() {
        assert_eq!(keysym_for_char('a'), 0x61);
        assert_eq!(keysym_for_char('A'), 0x41);
        assert_eq!(keysym_for_char('~'), 0x7e);
        assert_eq!(keysym_for_char('é'), 0xe9);
        assert_eq!(keysym_for_char('\n'), 0xff0d);
        assert_eq!(keysym_for_char('€'), 0x0100_20ac);
    }

    #[test]
    fn touch_scaling_stays_on_screen() {
        assert_eq!(scale(0.0, 720), 0);
        assert_eq!(scale(0.5, 720), 360);
        assert_eq!(scale(1.0, 720), 719);
        assert_eq!(scale(-3.0, 720), 0);
        assert_eq!(scale(f64::NAN, 720), 0);
    }
}
