//! The seeds' time format: UTC `yyyy-MM-dd HH:mm:ss` (e.g. `2023-08-15 14:30:45`).

use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::FormatItem, macros::format_description,
};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// Formats Unix milliseconds as the seeds' UTC time string.
pub fn format_unix_ms(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(FORMAT).unwrap_or_default()
}

/// Parses the seeds' UTC time string into Unix milliseconds.
pub fn parse_to_unix_ms(text: &str) -> Option<i64> {
    let at = PrimitiveDateTime::parse(text, FORMAT).ok()?.assume_utc();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats Unix milliseconds as IAM's `expires_at`: RFC 3339 with microseconds and `Z`.
pub fn format_iam(unix_ms: i64) -> String {
    const IAM: &[FormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(IAM).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_seed_example() {
        let ms = parse_to_unix_ms("2023-08-15 14:30:45").unwrap();
        assert_eq!(ms, 1_692_109_845_000);
        assert_eq!(format_unix_ms(ms), "2023-08-15 14:30:45");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "2023-08-15T14:30:45",
            "2023-8-15 14:30:45",
            "2023-08-15",
            "",
            "2023-13-01 00:00:00",
        ] {
            assert_eq!(parse_to_unix_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn iam_format() {
        assert_eq!(format_iam(1_549_954_333_855), "2019-02-12T06:52:13.855000Z");
    }
}
