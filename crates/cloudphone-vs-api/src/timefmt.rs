//! The document's time format, UTC `YYYY-MM-DDThh:mm:ssZ` (`Timestamp`, `CreatedTime`, the
//! SDK's `x-acs-date`; formatted by `cloudphone_api::timefmt`, the one place time becomes text),
//! and the ±15 minute window a request's time must fall in.

use cloudphone_api::timefmt::{ISO_UTC, format_in, parse_in};

/// How far a request's `Timestamp` may be from the server's clock, either way.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;

/// Unix milliseconds as `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_unix_ms(unix_ms: i64) -> String {
    format_in(unix_ms, ISO_UTC)
}

/// `YYYY-MM-DDThh:mm:ssZ` as Unix milliseconds; `None` for any other shape.
pub fn parse_to_unix_ms(text: &str) -> Option<i64> {
    parse_in(text, ISO_UTC)
}

/// Whether a request stamped `stamped_ms` is acceptable at `now_ms` (inclusive bounds).
pub fn within_window(stamped_ms: i64, now_ms: i64) -> bool {
    (stamped_ms - now_ms).abs() <= WINDOW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_the_document_format() {
        let ms = parse_to_unix_ms("2019-02-28T00:00:00Z").unwrap();
        assert_eq!(ms, 1_551_312_000_000);
        assert_eq!(format_unix_ms(ms), "2019-02-28T00:00:00Z");
        assert_eq!(parse_to_unix_ms("2019-02-28 00:00:00"), None);
    }

    #[test]
    fn the_window_is_fifteen_minutes_either_way() {
        let now = 1_551_312_000_000;
        assert!(within_window(now + WINDOW_MS, now));
        assert!(within_window(now - WINDOW_MS, now));
        assert!(!within_window(now + WINDOW_MS + 1000, now));
        assert!(!within_window(now - WINDOW_MS - 1000, now));
    }
}
