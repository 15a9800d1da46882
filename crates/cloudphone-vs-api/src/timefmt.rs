//! The document's time format, UTC `YYYY-MM-DDThh:mm:ssZ` (`Timestamp`, `CreatedTime`, the
//! SDK's `x-acs-date`), and the ±15 minute window a request's time must fall in.

use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::FormatItem, macros::format_description,
};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// How far a request's `Timestamp` may be from the server's clock, either way.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;

/// Unix milliseconds as `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_unix_ms(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(FORMAT).unwrap_or_default()
}

/// `YYYY-MM-DDThh:mm:ssZ` as Unix milliseconds; `None` for any other shape.
pub fn parse_to_unix_ms(text: &str) -> Option<i64> {
    let at = PrimitiveDateTime::parse(text, FORMAT).ok()?.assume_utc();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Whether a request stamped `stamped_ms` is acceptable at `now_ms` (inclusive bounds).
pub fn within_window(stamped_ms: i64, now_ms: i64) -> bool {
    (stamped_ms - now_ms).abs() <= WINDOW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_document_example_and_refuses_other_shapes() {
        let ms = parse_to_unix_ms("2019-02-28T00:00:00Z").unwrap();
        assert_eq!(ms, 1_551_312_000_000);
        assert_eq!(format_unix_ms(ms), "2019-02-28T00:00:00Z");
        for bad in [
            "2019-02-28 00:00:00",
            "2019-02-28T00:00:00",
            "",
            "2019-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_to_unix_ms(bad), None, "{bad}");
        }
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
