//! Every text form of time the APIs speak, in one place: the seeds' UTC `yyyy-MM-dd HH:mm:ss`
//! (e.g. `2023-08-15 14:30:45`), IAM's `expires_at`, and the live edge's `YYYY-MM-DDThh:mm:ssZ`
//! (`cloudphone-vs-api` formats and parses through [`format_in`] and [`parse_in`]).

use time::{
    OffsetDateTime, PrimitiveDateTime, format_description::FormatItem, macros::format_description,
};

/// One text form of a UTC time (a `time` format description).
pub type Format = &'static [FormatItem<'static>];

/// The seeds' `yyyy-MM-dd HH:mm:ss`.
pub const SEED: Format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// IAM's `expires_at`: RFC 3339 with microseconds and `Z`.
pub const IAM: Format =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Seed 003's (Alibaba's) `YYYY-MM-DDThh:mm:ssZ`: `Timestamp`, `CreatedTime`, `x-acs-date`.
pub const ISO_UTC: Format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// Unix milliseconds in `format` (the epoch for a time `time` cannot hold).
pub fn format_in(unix_ms: i64, format: Format) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(format).unwrap_or_default()
}

/// `text` in `format` as Unix milliseconds; `None` for any other shape.
pub fn parse_in(text: &str, format: Format) -> Option<i64> {
    let at = PrimitiveDateTime::parse(text, format).ok()?.assume_utc();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats Unix milliseconds as the seeds' UTC time string.
pub fn format_unix_ms(unix_ms: i64) -> String {
    format_in(unix_ms, SEED)
}

/// Parses the seeds' UTC time string into Unix milliseconds.
pub fn parse_to_unix_ms(text: &str) -> Option<i64> {
    parse_in(text, SEED)
}

/// Formats Unix milliseconds as IAM's `expires_at`.
pub fn format_iam(unix_ms: i64) -> String {
    format_in(unix_ms, IAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each format's documented example, as text and as Unix milliseconds.
    const EXAMPLES: &[(Format, &str, i64)] = &[
        (SEED, "2023-08-15 14:30:45", 1_692_109_845_000),
        (IAM, "2019-02-12T06:52:13.855000Z", 1_549_954_333_855),
        (ISO_UTC, "2019-02-28T00:00:00Z", 1_551_312_000_000),
    ];

    #[test]
    fn every_format_round_trips_its_documented_example() {
        for &(format, text, ms) in EXAMPLES {
            assert_eq!(parse_in(text, format), Some(ms), "{text}");
            assert_eq!(format_in(ms, format), text);
        }
    }

    #[test]
    fn other_shapes_are_refused() {
        let refused: &[(Format, &[&str])] = &[
            (
                SEED,
                &[
                    "2023-08-15T14:30:45",
                    "2023-8-15 14:30:45",
                    "2023-08-15",
                    "",
                    "2023-13-01 00:00:00",
                ],
            ),
            (
                ISO_UTC,
                &[
                    "2019-02-28 00:00:00",
                    "2019-02-28T00:00:00",
                    "",
                    "2019-13-01T00:00:00Z",
                ],
            ),
        ];
        for &(format, texts) in refused {
            for text in texts {
                assert_eq!(parse_in(text, format), None, "{text}");
            }
        }
    }

    #[test]
    fn the_seed_shorthands_use_the_seed_and_iam_formats() {
        assert_eq!(
            parse_to_unix_ms("2023-08-15 14:30:45"),
            Some(1_692_109_845_000)
        );
        assert_eq!(format_unix_ms(1_692_109_845_000), "2023-08-15 14:30:45");
        assert_eq!(format_iam(1_549_954_333_855), "2019-02-12T06:52:13.855000Z");
    }
}
