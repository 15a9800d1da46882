//! The keys a viewer can press, by DOM `KeyboardEvent.code`: parsed once here, with one table
//! of the named keys and the code each runtime types them with (an X keysym, an Android
//! `KEYCODE_*`), so the runtimes cannot drift apart on which keys exist.

/// A key a DOM code names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DomKey {
    /// `KeyA`..`KeyZ`: the upper-case letter.
    Letter(char),
    /// `Digit0`..`Digit9`: the digit.
    Digit(char),
    /// `F1`..`F12`: the number.
    Function(u32),
    /// Any other key the node types.
    Named(KeyCodes),
}

/// A named key's code on each runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyCodes {
    pub(crate) x_keysym: u32,
    pub(crate) android: u32,
}

/// (DOM code, X keysym, Android keycode) of every named key.
const NAMED: [(&str, u32, u32); 36] = [
    ("Enter", 0xff0d, 66),
    ("NumpadEnter", 0xff0d, 66),
    ("Escape", 0xff1b, 111),
    ("Backspace", 0xff08, 67),
    ("Tab", 0xff09, 61),
    ("Space", 0x20, 62),
    ("ArrowLeft", 0xff51, 21),
    ("ArrowUp", 0xff52, 19),
    ("ArrowRight", 0xff53, 22),
    ("ArrowDown", 0xff54, 20),
    ("Home", 0xff50, 122),
    ("End", 0xff57, 123),
    ("PageUp", 0xff55, 92),
    ("PageDown", 0xff56, 93),
    ("Insert", 0xff63, 124),
    ("Delete", 0xffff, 112),
    ("ShiftLeft", 0xffe1, 59),
    ("ShiftRight", 0xffe2, 60),
    ("ControlLeft", 0xffe3, 113),
    ("ControlRight", 0xffe4, 114),
    ("AltLeft", 0xffe9, 57),
    ("AltRight", 0xffea, 58),
    ("MetaLeft", 0xffeb, 117),
    ("MetaRight", 0xffec, 118),
    ("CapsLock", 0xffe5, 115),
    ("Minus", 0x2d, 69),
    ("Equal", 0x3d, 70),
    ("BracketLeft", 0x5b, 71),
    ("BracketRight", 0x5d, 72),
    ("Backslash", 0x5c, 73),
    ("Semicolon", 0x3b, 74),
    ("Quote", 0x27, 75),
    ("Backquote", 0x60, 68),
    ("Comma", 0x2c, 55),
    ("Period", 0x2e, 56),
    ("Slash", 0x2f, 76),
];

/// The key `code` names; `None` for codes the node does not type.
pub(crate) fn parse(code: &str) -> Option<DomKey> {
    if let Some(letter) = code.strip_prefix("Key") {
        return only_char(letter)
            .filter(char::is_ascii_uppercase)
            .map(DomKey::Letter);
    }
    if let Some(digit) = code.strip_prefix("Digit") {
        return only_char(digit)
            .filter(char::is_ascii_digit)
            .map(DomKey::Digit);
    }
    if let Some(n) = code.strip_prefix('F').and_then(|n| n.parse::<u32>().ok())
        && (1..=12).contains(&n)
    {
        return Some(DomKey::Function(n));
    }
    NAMED
        .iter()
        .find(|(name, _, _)| *name == code)
        .map(|&(_, x_keysym, android)| DomKey::Named(KeyCodes { x_keysym, android }))
}

/// The one character of `text`, if it has exactly one (`KeyA` → `A`, `Digit7` → `7`).
fn only_char(text: &str) -> Option<char> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::android::android_keycode;
    use crate::runtime::x11::input::keysym_for_code;

    #[test]
    fn dom_codes_on_each_runtime() {
        // (DOM code, X keysym and Android keycode, or neither)
        let cases = [
            ("KeyA", Some((0x61, 29))),
            ("KeyZ", Some((0x7a, 54))),
            ("Digit0", Some((0x30, 7))),
            ("Digit9", Some((0x39, 16))),
            ("Enter", Some((0xff0d, 66))),
            ("Escape", Some((0xff1b, 111))),
            ("Backspace", Some((0xff08, 67))),
            ("Space", Some((0x20, 62))),
            ("ArrowUp", Some((0xff52, 19))),
            ("F1", Some((0xffbe, 131))),
            ("F12", Some((0xffc9, 142))),
            ("ShiftLeft", Some((0xffe1, 59))),
            ("MetaLeft", Some((0xffeb, 117))),
            ("Slash", Some((0x2f, 76))),
            ("F13", None),
            ("Keya", None),
            ("Keyz", None),
            ("KeyAB", None),
            ("Digit10", None),
            ("Nonsense", None),
        ];
        for (code, want) in cases {
            let got = (keysym_for_code(code), android_keycode(code));
            assert_eq!(got, (want.map(|w| w.0), want.map(|w| w.1)), "{code}");
        }
    }
}
