//! Merging usage records (duplicates, replays, partial records), billing open sessions up to
//! now, bucketing, rounding and the rate limit.

use std::collections::BTreeMap;

use cloudphone_usage::class::{Codec, huawei_spec, volc_class};
use cloudphone_usage::huawei;
use cloudphone_usage::meter::{Grid, Record, Span, bucket_totals, merge_sessions, minutes_2dp};
use cloudphone_usage::ratelimit::RateLimiter;
use cloudphone_usage::volc;
use cloudphone_usage::{HOUR_MS, MINUTE_MS};

fn rec(id: &str, session: &str, start: i64, end: i64, is_final: bool) -> Record {
    Record {
        record_id: id.into(),
        span: Span {
            session_id: session.into(),
            domain: "live.example.com".into(),
            app: "cloudphone".into(),
            stream: "inst-1".into(),
            codec: Codec::H264,
            width: 720,
            height: 1280,
            start_ms: start,
            end_ms: end,
        },
        is_final,
    }
}

const T0: i64 = 1_795_000_000_000 / HOUR_MS * HOUR_MS;

#[test]
fn duplicates_and_overlaps_count_once_partials_merge() {
    let records = vec![
        rec("a", "s", T0, T0 + 30_000, false),
        rec("a", "s", T0, T0 + 30_000, false),
        rec("b", "s", T0 + 30_000, T0 + 60_000, false),
        // A replayed interval under another id (node restart re-sent it): still once.
        rec("b2", "s", T0 + 30_000, T0 + 60_000, false),
        rec("c", "s", T0 + 60_000, T0 + 75_500, true),
    ];
    let spans = merge_sessions(&records, T0 + 10 * HOUR_MS, 60_000);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].end_ms - spans[0].start_ms, 75_500);
}

#[test]
fn open_sessions_bill_up_to_now_within_the_grace() {
    let records = vec![rec("a", "s", T0, T0 + 30_000, false)];
    let spans = merge_sessions(&records, T0 + 45_000, 60_000);
    assert_eq!(spans[0].end_ms, T0 + 45_000, "billed up to now");
    let spans = merge_sessions(&records, T0 + 10 * MINUTE_MS, 60_000);
    assert_eq!(
        spans[0].end_ms,
        T0 + 90_000,
        "a silent session stops at last record + grace"
    );
    // Once final, no extension.
    let records = vec![rec("a", "s", T0, T0 + 30_000, true)];
    assert_eq!(
        merge_sessions(&records, T0 + 45_000, 60_000)[0].end_ms,
        T0 + 30_000
    );
}

#[test]
fn a_gap_stays_a_gap_and_bad_records_are_ignored() {
    let records = vec![
        rec("a", "s", T0, T0 + 10_000, false),
        rec("b", "s", T0 + 20_000, T0 + 30_000, true),
        rec("x", "s2", T0 + 5_000, T0, true),
    ];
    let spans = merge_sessions(&records, T0 + HOUR_MS, 60_000);
    let total: i64 = spans.iter().map(|s| s.end_ms - s.start_ms).sum();
    assert_eq!(total, 20_000);
}

#[test]
fn buckets_split_at_hour_and_offset_day_boundaries() {
    let records = vec![rec(
        "a",
        "s",
        T0 + HOUR_MS - 90_000,
        T0 + HOUR_MS + 30_000,
        true,
    )];
    let spans = merge_sessions(&records, T0 + 2 * HOUR_MS, 60_000);
    let by_hour = bucket_totals(&spans, Grid::HOURS, T0, T0 + 2 * HOUR_MS, |s| {
        huawei_spec(s.codec, s.width, s.height)
    });
    assert_eq!(by_hour[&(T0, "H264_HD".to_string())], 90_000);
    assert_eq!(by_hour[&(T0 + HOUR_MS, "H264_HD".to_string())], 30_000);
    // Clipped to the window.
    let clipped = bucket_totals(&spans, Grid::HOURS, T0 + HOUR_MS, T0 + 2 * HOUR_MS, |_| ());
    assert_eq!(clipped.values().sum::<i64>(), 30_000);
    // Days at +08:00 start at 16:00Z.
    let (midnight, _) = volc::parse_time("2026-11-13T00:00:00+08:00").unwrap();
    let records = vec![rec("d", "s", midnight - 60_000, midnight + 120_000, true)];
    let spans = merge_sessions(&records, midnight + HOUR_MS, 60_000);
    let by_day = bucket_totals(&spans, Grid::days_at_offset(8 * 3600), 0, i64::MAX, |s| {
        volc_class(s.codec, s.width, s.height)
    });
    let key = ("Normal_H264".to_string(), "720P");
    assert_eq!(by_day[&(midnight - 86_400_000, key.clone())], 60_000);
    assert_eq!(by_day[&(midnight, key)], 120_000);
}

#[test]
fn huawei_body_rounds_to_2dp_and_lists_every_hour() {
    assert_eq!(minutes_2dp(61_000), 1.02);
    assert_eq!(minutes_2dp(60_300), 1.0);
    let q = huawei::TranscodeQuery {
        publish_domain: Some("d".into()),
        start_time: Some(huawei::format_time(T0)),
        end_time: Some(huawei::format_time(T0 + 2 * HOUR_MS)),
        stream: None,
    };
    let w = huawei::window(&q, T0 + 5 * HOUR_MS).unwrap();
    let mut totals = BTreeMap::new();
    totals.insert((T0, "H264_HD".to_string()), 100_000);
    totals.insert((T0 + HOUR_MS, "H264_HD".to_string()), 100_000);
    totals.insert((T0 + HOUR_MS, "H265_FHD".to_string()), 1_000);
    let body = huawei::response(&w, &totals);
    assert_eq!(body.transcode_data_list.len(), 3);
    assert_eq!(body.transcode_data_list[0].spec_list[0].value, 1.67);
    assert!(body.transcode_data_list[2].spec_list.is_empty());
    // 200 000 ms = 3.333… min → 3.33, not 1.67 + 1.67 = 3.34.
    assert_eq!(body.summary_list[0].value, 3.33);
    assert_eq!(body.summary_list[1].spec_type, "H265_FHD");
    let json = serde_json::to_value(&body).unwrap();
    assert_eq!(
        json["transcode_data_list"][0]["spec_list"][0]["type"],
        "H264_HD"
    );
}

#[test]
fn rate_limit_is_100_per_minute_per_user() {
    let mut limiter = RateLimiter::volcengine();
    for i in 0..100 {
        assert!(limiter.allow("alice", T0 + i), "{i}");
    }
    assert!(!limiter.allow("alice", T0 + 100));
    assert!(limiter.allow("bob", T0 + 100), "per user");
    assert!(!limiter.allow("alice", T0 + 59_999));
    assert!(
        limiter.allow("alice", T0 + 60_000),
        "the first hit left the window"
    );
    assert!(!limiter.allow("alice", T0 + 60_000));
}
