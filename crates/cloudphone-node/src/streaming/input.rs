//! The `input` data channel: viewer JSON ([`cloudphone_signaling::InputMessage`]) checked and
//! turned into the runtime's [`InputEvent`]. Anything out of range is refused rather than
//! clamped, so a buggy client shows up in the node's logs instead of as stray taps.

use cloudphone_signaling::{
    ChannelRequest, InputMessage, InputRefusal, MAX_CLIPBOARD_CHARS, MAX_KEY_CODE_CHARS,
    MAX_POINTER_ID, MAX_TEXT_CHARS,
};

use crate::runtime::InputEvent;

/// Input events refused because of who sent them, by `reason` (`observer`: a view-only token).
pub(crate) const REFUSED_METRIC: &str = "cloudphone_node_input_refused_total";

/// Counts one input event refused for `reason` on `/metrics`.
pub(crate) fn count_refused(reason: InputRefusal) {
    let reason = match reason {
        InputRefusal::Observer => "observer",
    };
    metrics::counter!(REFUSED_METRIC, "reason" => reason).increment(1);
}

/// Largest data-channel message accepted, in bytes: the 16 KiB a data channel message may be
/// (the longest clipboard text, escaped, fits).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Why an input message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum InputError {
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
    #[error("not an input message: {0}")]
    Malformed(String),
    #[error("coordinates must be finite and within 0..=1")]
    OutOfRange,
    #[error("pointer id above {MAX_POINTER_ID}")]
    PointerId,
    #[error("text longer than {MAX_TEXT_CHARS} characters")]
    TextTooLong,
    #[error("key code must be 1..={MAX_KEY_CODE_CHARS} ASCII letters or digits")]
    KeyCode,
    #[error("clipboard text longer than {MAX_CLIPBOARD_CHARS} characters")]
    ClipboardTooLong,
}

/// One checked message off the `input` data channel.
#[derive(Debug, PartialEq)]
pub(crate) enum ChannelMessage {
    /// Pressed on the phone: goes to the runtime's input.
    Input(InputEvent),
    /// Asked of the phone: clipboard or screenshot.
    Request(ChannelRequest),
}

/// Parses and validates one data-channel message: a [`ChannelRequest`] when its `type` is a
/// request's, else an input event (so each type's own error names what was wrong).
pub(crate) fn parse_channel(bytes: &[u8]) -> Result<ChannelMessage, InputError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(InputError::TooLarge(bytes.len()));
    }
    #[derive(serde::Deserialize)]
    struct Tag<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let tag: Tag<'_> =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed(e.to_string()))?;
    if !matches!(tag.kind.as_deref(), Some("clipboard" | "screenshot")) {
        return parse(bytes).map(ChannelMessage::Input);
    }
    let request: ChannelRequest =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed(e.to_string()))?;
    if let ChannelRequest::Clipboard { text } = &request
        && text.chars().count() > MAX_CLIPBOARD_CHARS
    {
        return Err(InputError::ClipboardTooLong);
    }
    Ok(ChannelMessage::Request(request))
}

/// Parses and validates one data-channel message.
pub(crate) fn parse(bytes: &[u8]) -> Result<InputEvent, InputError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(InputError::TooLarge(bytes.len()));
    }
    let message: InputMessage =
        serde_json::from_slice(bytes).map_err(|e| InputError::Malformed(e.to_string()))?;
    convert(message)
}

/// Validates a parsed message; what passes is the runtime's event (text without control
/// characters).
pub(crate) fn convert(message: InputMessage) -> Result<InputEvent, InputError> {
    Ok(match message {
        InputMessage::Touch {
            action,
            pointer_id,
            x,
            y,
        } => {
            let in_range = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
            if !in_range(x) || !in_range(y) {
                return Err(InputError::OutOfRange);
            }
            if pointer_id > MAX_POINTER_ID {
                return Err(InputError::PointerId);
            }
            InputEvent::Touch {
                action,
                pointer_id,
                x,
                y,
            }
        }
        InputMessage::Key { code, down } => {
            let ok = !code.is_empty()
                && code.len() <= MAX_KEY_CODE_CHARS
                && code.chars().all(|c| c.is_ascii_alphanumeric());
            if !ok {
                return Err(InputError::KeyCode);
            }
            InputEvent::Key { code, down }
        }
        InputMessage::Text { text } => {
            if text.chars().count() > MAX_TEXT_CHARS {
                return Err(InputError::TextTooLong);
            }
            // Control characters other than newline and tab would be typed as raw keysyms.
            let text: String = text
                .chars()
                .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
                .collect();
            InputEvent::Text { text }
        }
        InputMessage::Phone { key } => InputEvent::Phone { key },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{PhoneKey, TouchAction};

    #[test]
    fn valid_messages_convert() {
        assert_eq!(
            parse(br#"{"type":"touch","action":"move","pointer_id":2,"x":1,"y":0}"#),
            Ok(InputEvent::Touch {
                action: TouchAction::Move,
                pointer_id: 2,
                x: 1.0,
                y: 0.0
            })
        );
        assert_eq!(
            parse(br#"{"type":"key","code":"Enter","down":false}"#),
            Ok(InputEvent::Key {
                code: "Enter".into(),
                down: false
            })
        );
        assert_eq!(
            parse(br#"{"type":"text","text":"a\u0007b\n"}"#),
            Ok(InputEvent::Text {
                text: "ab\n".into()
            })
        );
        assert_eq!(
            parse(br#"{"type":"phone","key":"home"}"#),
            Ok(InputEvent::Phone {
                key: PhoneKey::Home
            })
        );
    }

    #[test]
    fn requests_and_input_share_the_channel() {
        assert_eq!(
            parse_channel(br#"{"type":"clipboard","text":"x"}"#),
            Ok(ChannelMessage::Request(ChannelRequest::Clipboard {
                text: "x".into()
            }))
        );
        assert_eq!(
            parse_channel(br#"{"type":"screenshot","id":3}"#),
            Ok(ChannelMessage::Request(ChannelRequest::Screenshot {
                id: 3
            }))
        );
        assert_eq!(
            parse_channel(br#"{"type":"phone","key":"power"}"#),
            Ok(ChannelMessage::Input(InputEvent::Phone {
                key: PhoneKey::Power
            }))
        );
        assert!(matches!(
            parse_channel(br#"{"type":"screenshot"}"#),
            Err(InputError::Malformed(_))
        ));
        assert!(matches!(
            parse_channel(br#"{"type":"nope"}"#),
            Err(InputError::Malformed(_))
        ));
        let long = format!(r#"{{"type":"clipboard","text":"{}"}}"#, "a".repeat(2001));
        assert_eq!(
            parse_channel(long.as_bytes()),
            Err(InputError::ClipboardTooLong)
        );
        assert!(matches!(
            parse_channel(br#"{"type":"touch","action":"down","x":2,"y":0}"#),
            Err(InputError::OutOfRange)
        ));
    }

    #[test]
    fn invalid_messages_are_refused() {
        assert_eq!(
            parse(br#"{"type":"touch","action":"down","x":1.01,"y":0}"#),
            Err(InputError::OutOfRange)
        );
        assert_eq!(
            parse(br#"{"type":"touch","action":"down","x":-0.1,"y":0}"#),
            Err(InputError::OutOfRange)
        );
        assert_eq!(
            parse(br#"{"type":"touch","action":"down","pointer_id":10,"x":0,"y":0}"#),
            Err(InputError::PointerId)
        );
        assert_eq!(
            parse(br#"{"type":"key","code":"../x","down":true}"#),
            Err(InputError::KeyCode)
        );
        assert_eq!(
            parse(br#"{"type":"key","code":"","down":true}"#),
            Err(InputError::KeyCode)
        );
        let long = format!(r#"{{"type":"text","text":"{}"}}"#, "é".repeat(1001));
        assert_eq!(parse(long.as_bytes()), Err(InputError::TextTooLong));
        let ok = format!(r#"{{"type":"text","text":"{}"}}"#, "é".repeat(1000));
        assert!(parse(ok.as_bytes()).is_ok());
        assert!(matches!(parse(b"{}"), Err(InputError::Malformed(_))));
        assert!(matches!(
            parse(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(InputError::TooLarge(_))
        ));
    }
}
