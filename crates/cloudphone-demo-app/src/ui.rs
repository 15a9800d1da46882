//! What the app shows and how it reacts, without X: the layout for a screen size, hit tests,
//! the typed text, tap counters and keysym → character. Pure, so it is tested without a display.

/// An axis-aligned box in window pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub(crate) x: i32,
    pub(crate) y: i32,
    pub(crate) w: i32,
    pub(crate) h: i32,
}

impl Rect {
    fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x && x < self.x + self.w && y >= self.y && y < self.y + self.h
    }
}

/// Something a tap can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Field,
    /// One of the [`TAP_BUTTONS`] counting buttons.
    Tap(usize),
    Tone,
    Clear,
}

/// How many counting buttons the row has.
pub(crate) const TAP_BUTTONS: usize = 3;
/// Their names, shown above their counters.
pub(crate) const TAP_NAMES: [&str; TAP_BUTTONS] = ["A", "B", "C"];
/// The colours each counting button goes through, one step per tap: a family per button (reds,
/// greens, blues) so the three never look alike whatever their counts.
pub(crate) const TAP_COLOURS: [[u32; 3]; TAP_BUTTONS] = [
    [0xe5_39_35, 0xff_70_43, 0xad_14_57],
    [0x43_a0_47, 0x7c_b3_42, 0x2e7d32],
    [0x1e_88_e5, 0x5e_35_b1, 0x03_9b_e5],
];
/// The typed text is cut to its last this many characters: a demo, not an editor.
const MAX_TEXT: usize = 2000;

/// Where everything goes on a `width`×`height` window (portrait phones: 720×1280 and so on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) width: i32,
    pub(crate) height: i32,
    /// Font pixels per screen pixel side: the built-in 6×13 font scaled to stay readable.
    pub(crate) scale: i32,
    pub(crate) title: Rect,
    pub(crate) field: Rect,
    pub(crate) taps: [Rect; TAP_BUTTONS],
    pub(crate) tone: Rect,
    pub(crate) clear: Rect,
    pub(crate) status: Rect,
}

impl Layout {
    pub(crate) fn new(width: u16, height: u16) -> Self {
        let (w, h) = (i32::from(width.max(60)), i32::from(height.max(120)));
        // 720 wide → 4: 24×52-pixel characters, 27 to a line of the text field.
        let scale = (w / 180).clamp(1, 8);
        let margin = (w / 24).max(4);
        let gap = margin / 2;
        let inner = w - 2 * margin;
        let line = 13 * scale;
        // Every control but the tap buttons is a full-width row.
        let row = |y, h| Rect {
            x: margin,
            y,
            w: inner,
            h,
        };
        let title = row(margin, line);
        let field = row(title.y + title.h + gap, h * 34 / 100);
        let button_h = (h * 13 / 100).max(2 * line + gap);
        let tap_w = (inner - 2 * gap) / 3;
        let taps_y = field.y + field.h + margin;
        let taps = [0, 1, 2].map(|i| Rect {
            x: margin + i * (tap_w + gap),
            y: taps_y,
            w: tap_w,
            h: button_h,
        });
        let tone = row(taps_y + button_h + margin, button_h);
        let clear = row(tone.y + tone.h + margin, button_h * 2 / 3);
        let status = row(h - margin - line, line);
        Self {
            width: w,
            height: h,
            scale,
            title,
            field,
            taps,
            tone,
            clear,
            status,
        }
    }

    /// The control under `(x, y)`, if any.
    pub(crate) fn hit(&self, x: i32, y: i32) -> Option<Control> {
        if self.field.contains(x, y) {
            return Some(Control::Field);
        }
        if let Some(i) = self.taps.iter().position(|r| r.contains(x, y)) {
            return Some(Control::Tap(i));
        }
        if self.tone.contains(x, y) {
            return Some(Control::Tone);
        }
        self.clear.contains(x, y).then_some(Control::Clear)
    }
}

/// What a tap asks of the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    PlayTone,
}

/// Everything the screen shows that input changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) text: String,
    /// Taps per counting button.
    pub(crate) counts: [u32; TAP_BUTTONS],
    /// The control a finger is down on (drawn pressed until it lifts).
    pub(crate) pressed: Option<Control>,
    /// A tone is playing (the button says so until it ends).
    pub(crate) playing: bool,
    pub(crate) tones: u32,
    /// Why the last tone could not play, shown in the status line.
    pub(crate) sound_error: Option<String>,
}

impl State {
    /// A key press of `keysym`; true when the text changed.
    pub(crate) fn key(&mut self, keysym: u32) -> bool {
        match keysym {
            BACKSPACE => self.text.pop().is_some(),
            _ => match char_for_keysym(keysym) {
                Some(c) => {
                    self.text.push(c);
                    if self.text.chars().count() > MAX_TEXT {
                        self.text.remove(0);
                    }
                    true
                }
                None => false,
            },
        }
    }

    /// A finger went down on `control`.
    pub(crate) fn press(&mut self, control: Option<Control>) {
        self.pressed = control;
    }

    /// The finger lifted on `control`: a tap when it is the one it went down on.
    pub(crate) fn release(&mut self, control: Option<Control>) -> Effect {
        let pressed = self.pressed.take();
        if control.is_none() || pressed != control {
            return Effect::None;
        }
        match control {
            Some(Control::Tap(i)) => {
                self.counts[i] += 1;
                Effect::None
            }
            Some(Control::Clear) => {
                self.text.clear();
                Effect::None
            }
            Some(Control::Tone) if !self.playing => {
                self.playing = true;
                self.tones += 1;
                self.sound_error = None;
                Effect::PlayTone
            }
            _ => Effect::None,
        }
    }

    /// Counting button `i`'s colour now.
    pub(crate) fn tap_colour(&self, i: usize) -> u32 {
        TAP_COLOURS[i][self.counts[i] as usize % TAP_COLOURS[i].len()]
    }
}

const BACKSPACE: u32 = 0xff08;
const TAB: u32 = 0xff09;
const RETURN: u32 = 0xff0d;
const KP_ENTER: u32 = 0xff8d;

/// The character a keysym types: Latin-1 keysyms are their own code points, Unicode keysyms
/// are `0x0100_0000 + code point` (what the node's XTest injection sends for other text),
/// Return a new line, Tab a space. Function and modifier keys type nothing.
pub(crate) fn char_for_keysym(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        RETURN | KP_ENTER => Some('\n'),
        TAB => Some(' '),
        0x0100_0100..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

/// `text` cut into lines of at most `columns` characters (at new lines, then by length); the
/// last `rows` of them, so the field shows the end of what was typed.
pub(crate) fn wrap(text: &str, columns: usize, rows: usize) -> Vec<String> {
    let columns = columns.max(1);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let chars: Vec<char> = paragraph.chars().collect();
        if chars.is_empty() {
            lines.push(String::new());
        }
        for chunk in chars.chunks(columns) {
            lines.push(chunk.iter().collect());
        }
    }
    let skip = lines.len().saturating_sub(rows);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_fits_the_screen_and_keeps_controls_apart() {
        for (w, h) in [(720, 1280), (360, 640), (1080, 1920), (480, 800)] {
            let l = Layout::new(w, h);
            let all = [
                l.title, l.field, l.taps[0], l.taps[1], l.taps[2], l.tone, l.clear, l.status,
            ];
            for (i, a) in all.iter().enumerate() {
                assert!(a.x >= 0 && a.y >= 0, "{w}x{h} {a:?}");
                assert!(
                    a.x + a.w <= l.width && a.y + a.h <= l.height,
                    "{w}x{h} {a:?}"
                );
                for b in &all[i + 1..] {
                    let apart = a.x + a.w <= b.x
                        || b.x + b.w <= a.x
                        || a.y + a.h <= b.y
                        || b.y + b.h <= a.y;
                    assert!(apart, "{w}x{h}: {a:?} overlaps {b:?}");
                }
            }
            let centre = |r: Rect| (r.x + r.w / 2, r.y + r.h / 2);
            let (x, y) = centre(l.taps[1]);
            assert_eq!(l.hit(x, y), Some(Control::Tap(1)));
            let (x, y) = centre(l.tone);
            assert_eq!(l.hit(x, y), Some(Control::Tone));
            let (x, y) = centre(l.field);
            assert_eq!(l.hit(x, y), Some(Control::Field));
            assert_eq!(l.hit(0, 0), None);
        }
        assert_eq!(Layout::new(720, 1280).scale, 4);
    }

    #[test]
    fn taps_count_change_colour_and_ask_for_sound_once_at_a_time() {
        let mut s = State::default();
        let before = s.tap_colour(0);
        s.press(Some(Control::Tap(0)));
        assert_eq!(s.release(Some(Control::Tap(0))), Effect::None);
        assert_eq!(s.counts, [1, 0, 0]);
        assert_ne!(s.tap_colour(0), before);
        // Whatever the counts, the three buttons differ.
        for n in 0..27u32 {
            let s = State {
                counts: [n % 3, n / 3 % 3, n / 9],
                ..State::default()
            };
            let colours = [s.tap_colour(0), s.tap_colour(1), s.tap_colour(2)];
            assert!(
                colours[0] != colours[1] && colours[1] != colours[2] && colours[0] != colours[2],
                "{colours:x?}"
            );
        }
        // Down on one control, up on another: no tap.
        s.press(Some(Control::Tap(1)));
        s.release(Some(Control::Tap(2)));
        assert_eq!(s.counts, [1, 0, 0]);
        s.press(Some(Control::Tone));
        assert_eq!(s.release(Some(Control::Tone)), Effect::PlayTone);
        s.press(Some(Control::Tone));
        assert_eq!(
            s.release(Some(Control::Tone)),
            Effect::None,
            "already playing"
        );
        assert_eq!(s.tones, 1);
    }

    #[test]
    fn keys_type_text_and_backspace_and_clear_remove_it() {
        let mut s = State::default();
        for k in [0x68, 0x69, 0xffe1, RETURN, 0x0100_20ac, 0xe9] {
            s.key(k);
        }
        assert_eq!(s.text, "hi\n€é");
        assert!(s.key(BACKSPACE));
        assert_eq!(s.text, "hi\n€");
        s.press(Some(Control::Clear));
        s.release(Some(Control::Clear));
        assert_eq!(s.text, "");
        assert!(!s.key(BACKSPACE));
    }

    #[test]
    fn wrapping_keeps_the_last_rows() {
        assert_eq!(wrap("abcdefg", 3, 5), ["abc", "def", "g"]);
        assert_eq!(wrap("abcdefg", 3, 2), ["def", "g"]);
        assert_eq!(wrap("ab\n\ncd", 3, 5), ["ab", "", "cd"]);
        assert_eq!(wrap("", 3, 5), [""]);
    }
}
