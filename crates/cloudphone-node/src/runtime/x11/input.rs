//! Input into an Xvfb display through XTest: touches as pointer moves and button 1, DOM key
//! codes and text as keysyms mapped through the server's keyboard map (see the x11 module
//! docs for the mapping).

use std::collections::HashMap;
use std::sync::Mutex;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::{round_trip, x_err};
use crate::runtime::common::{lock, pixel_of};
use crate::runtime::keys::{self, DomKey};
use crate::runtime::{InputEvent, PhoneKey, RuntimeError, TouchAction};

const SHIFT_L: u32 = 0xffe1;
const ALT_L: u32 = 0xffe9;
const TAB: u32 = 0xff09;
const ESCAPE: u32 = 0xff1b;
const SUPER_L: u32 = 0xffeb;
const RETURN: u32 = 0xff0d;
const MENU: u32 = 0xff67;
/// XF86XK_AudioRaiseVolume, XF86XK_AudioLowerVolume and XF86XK_PowerOff: the keysyms X
/// desktops bind the hardware volume and power keys to. Xvfb's default map lacks them, so
/// they go through the spare keycode like any missing keysym.
const XF86_AUDIO_RAISE_VOLUME: u32 = 0x1008_ff13;
const XF86_AUDIO_LOWER_VOLUME: u32 = 0x1008_ff11;
const XF86_POWER_OFF: u32 = 0x1008_ff2a;

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
                PhoneKey::Menu => self.tap(&[MENU])?,
                PhoneKey::VolumeUp => self.tap(&[XF86_AUDIO_RAISE_VOLUME])?,
                PhoneKey::VolumeDown => self.tap(&[XF86_AUDIO_LOWER_VOLUME])?,
                PhoneKey::Power => self.tap(&[XF86_POWER_OFF])?,
            },
        }
        // A round trip, so errors surface here and events are applied in order before the
        // next call.
        round_trip(&self.conn)?;
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
        round_trip(&self.conn)?;
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
pub(crate) fn keysym_for_code(code: &str) -> Option<u32> {
    Some(match keys::parse(code)? {
        // Latin-1 letters and digits are their own keysyms.
        DomKey::Letter(c) => u32::from(c.to_ascii_lowercase()),
        DomKey::Digit(c) => u32::from(c),
        DomKey::Function(n) => 0xffbe + n - 1,
        DomKey::Named(codes) => codes.x_keysym,
    })
}

/// The X keysym that types `c`.
pub(crate) fn keysym_for_char(c: char) -> u32 {
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
