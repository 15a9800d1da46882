//! Every time rule of both documents, at its boundary.

use cloudphone_usage::huawei::{self, HuaweiError, TranscodeQuery};
use cloudphone_usage::volc::{self, TranscodeRequest, VolcError};
use cloudphone_usage::{DAY_MS, HOUR_MS};

const NOW: &str = "2026-11-25T15:49:11Z";

fn now() -> i64 {
    huawei::parse_time(NOW).unwrap()
}

fn hq(start: Option<&str>, end: Option<&str>) -> TranscodeQuery {
    TranscodeQuery {
        publish_domain: Some("live.example.com".into()),
        stream: None,
        start_time: start.map(Into::into),
        end_time: end.map(Into::into),
    }
}

/// Huawei's window for `start_time` and `end_time` at [`NOW`].
fn hwindow(start: Option<&str>, end: Option<&str>) -> Result<huawei::Window, HuaweiError> {
    huawei::window(&hq(start, end), now())
}

fn invalid(r: Result<huawei::Window, HuaweiError>) -> String {
    match r {
        Err(HuaweiError::InvalidParameter(m)) => m,
        other => panic!("expected LIVE.100011001, got {other:?}"),
    }
}

#[test]
fn huawei_floors_to_the_hour_and_includes_the_end_hour() {
    let w = hwindow(Some("2026-11-20T07:20:40Z"), Some("2026-11-20T08:20:40Z")).unwrap();
    assert_eq!(huawei::format_time(w.first_hour_ms), "2026-11-20T07:00:00Z");
    assert_eq!(huawei::format_time(w.last_hour_ms), "2026-11-20T08:00:00Z");
    assert_eq!(
        w.hours().count(),
        2,
        "the document's example lists 07:00 and 08:00"
    );
    // Inside one hour: valid, one bucket.
    let w = hwindow(Some("2026-11-20T07:00:00Z"), Some("2026-11-20T07:59:59Z")).unwrap();
    assert_eq!(w.hours().count(), 1);
}

#[test]
fn huawei_defaults_last_24_hours_and_now() {
    let w = hwindow(None, None).unwrap();
    assert_eq!(huawei::format_time(w.last_hour_ms), "2026-11-25T15:00:00Z");
    assert_eq!(huawei::format_time(w.first_hour_ms), "2026-11-24T15:00:00Z");
    let w = hwindow(None, Some("2026-11-20T10:30:00Z")).unwrap();
    assert_eq!(huawei::format_time(w.first_hour_ms), "2026-11-19T10:00:00Z");
    let w = hwindow(Some("2026-11-25T10:10:00Z"), None).unwrap();
    assert_eq!(w.hours().count(), 6, "10:00..=15:00");
    // Empty strings count as absent.
    assert!(hwindow(Some(""), Some("")).is_ok());
}

#[test]
fn huawei_end_must_follow_start() {
    let at = "2026-11-20T07:20:40Z";
    assert!(invalid(hwindow(Some(at), Some(at))).contains("end_time"));
    assert!(hwindow(Some(at), Some("2026-11-20T07:20:41Z")).is_ok());
    assert!(invalid(hwindow(Some("2026-11-26T00:00:00Z"), None)).contains("end_time"));
}

#[test]
fn huawei_span_is_at_most_31_days() {
    let ok = hwindow(Some("2026-10-01T00:00:00Z"), Some("2026-11-01T00:59:59Z"));
    assert_eq!(ok.unwrap().hours().count(), 31 * 24 + 1);
    let too_long = hwindow(Some("2026-10-01T00:00:00Z"), Some("2026-11-01T01:00:00Z"));
    assert!(invalid(too_long).contains("31 days"));
}

#[test]
fn huawei_history_is_at_most_one_year() {
    let floor_now = now() / HOUR_MS * HOUR_MS;
    let oldest = huawei::format_time(floor_now - 365 * DAY_MS);
    let end = huawei::format_time(floor_now - 360 * DAY_MS);
    assert!(hwindow(Some(&oldest), Some(&end)).is_ok());
    let older = huawei::format_time(floor_now - 365 * DAY_MS - 1000);
    assert!(invalid(hwindow(Some(&older), Some(&end))).contains("one year"));
}

#[test]
fn huawei_bad_formats_and_missing_domain() {
    for bad in [
        "2026-11-20 07:00:00",
        "2026-11-20T07:00:00+08:00",
        "2026-11-20T07:00:00.5Z",
        "x",
    ] {
        assert_eq!(invalid(hwindow(Some(bad), None)), "start_time", "{bad}");
        assert_eq!(invalid(hwindow(None, Some(bad))), "end_time", "{bad}");
    }
    let mut q = hq(None, None);
    q.publish_domain = None;
    let e = huawei::publish_domain(&q).unwrap_err();
    assert_eq!(e.code(), "LIVE.100011001");
    assert_eq!(e.to_string(), "Invalid request parameter: publish_domain");
    assert_eq!(e.http_status(), 400);
    q.publish_domain = Some(" ".into());
    assert!(huawei::publish_domain(&q).is_err());
}

#[test]
fn huawei_hours_after_now_are_not_listed() {
    let w = hwindow(Some("2026-11-25T14:00:00Z"), Some("2026-11-26T14:00:00Z")).unwrap();
    assert_eq!(w.hours().count(), 2, "14:00 and 15:00 only");
}

fn vq(start: &str, end: &str) -> TranscodeRequest {
    TranscodeRequest {
        start_time: Some(start.into()),
        end_time: Some(end.into()),
        ..Default::default()
    }
}

fn vinvalid(r: Result<volc::Window, VolcError>) -> String {
    match r {
        Err(e @ VolcError::InvalidParam(_)) => {
            assert_eq!((e.code(), e.http_status()), ("InvalidParam", 400));
            e.to_string()
        }
        other => panic!("expected InvalidParam, got {other:?}"),
    }
}

#[test]
fn volcengine_days_follow_the_offset_given() {
    let w = volc::window(
        &vq("2026-11-13T00:00:00+08:00", "2026-11-14T00:00:00+08:00"),
        now(),
    )
    .unwrap();
    assert_eq!(w.offset_secs, 8 * 3600);
    let day = w.grid().floor(w.start_ms + 5 * HOUR_MS);
    assert_eq!(
        volc::format_time(day, w.offset_secs),
        "2026-11-13T00:00:00+08:00"
    );
    // 2026-11-13T23:30+08:00 is 15:30Z: still the 13th in +08:00 days.
    let late = volc::parse_time("2026-11-13T15:30:00Z").unwrap().0;
    assert_eq!(
        volc::format_time(w.grid().floor(late), 8 * 3600),
        "2026-11-13T00:00:00+08:00"
    );
    let w = volc::window(&vq("2026-11-13T00:00:00Z", "2026-11-14T00:00:00Z"), now()).unwrap();
    assert_eq!(
        volc::format_time(w.grid().floor(late), w.offset_secs),
        "2026-11-13T00:00:00Z"
    );
    let w = volc::window(
        &vq("2026-11-13T00:00:00-05:30", "2026-11-14T00:00:00-05:30"),
        now(),
    )
    .unwrap();
    assert_eq!(
        volc::format_time(w.grid().floor(late), w.offset_secs),
        "2026-11-13T00:00:00-05:30"
    );
}

#[test]
fn volcengine_required_times_order_and_aggregation() {
    assert!(vinvalid(volc::window(&TranscodeRequest::default(), now())).contains("StartTime"));
    let mut r = vq("2026-11-13T00:00:00+08:00", "");
    assert!(vinvalid(volc::window(&r, now())).contains("EndTime"));
    r = vq("2026-11-13 00:00:00", "2026-11-14T00:00:00+08:00");
    assert!(vinvalid(volc::window(&r, now())).contains("RFC3339"));
    r = vq("2026-11-13T00:00:00+08:00", "2026-11-13T00:00:00+08:00");
    assert!(vinvalid(volc::window(&r, now())).contains("later"));
    r = vq("2026-11-13T00:00:00+08:00", "2026-11-12T16:00:01Z");
    assert!(
        volc::window(&r, now()).is_ok(),
        "one second later, other offset"
    );
    for (agg, ok) in [(86_400, true), (3600, false), (0, false), (300, false)] {
        r.aggregation = Some(agg);
        assert_eq!(volc::window(&r, now()).is_ok(), ok, "{agg}");
    }
}

#[test]
fn volcengine_span_93_days_and_history_366_days() {
    let start = "2026-08-01T00:00:00+08:00";
    let (s, off) = volc::parse_time(start).unwrap();
    let at_limit = volc::format_time(s + 93 * DAY_MS, off);
    assert!(volc::window(&vq(start, &at_limit), now()).is_ok());
    let over = volc::format_time(s + 93 * DAY_MS + 1000, off);
    assert!(vinvalid(volc::window(&vq(start, &over), now())).contains("93"));
    let oldest = volc::format_time(now() - 366 * DAY_MS, 0);
    let end = volc::format_time(now() - 300 * DAY_MS, 0);
    assert!(volc::window(&vq(&oldest, &end), now()).is_ok());
    let older = volc::format_time(now() - 366 * DAY_MS - 1000, 0);
    assert!(vinvalid(volc::window(&vq(&older, &end), now())).contains("366"));
}

#[test]
fn volcengine_body_type_errors_are_bind_errors() {
    assert_eq!(
        volc::parse_body(br#"{"Aggregation":"daily"}"#).unwrap_err(),
        VolcError::BindError
    );
    assert_eq!(
        volc::parse_body(br#"{"DomainList":"a.com"}"#).unwrap_err(),
        VolcError::BindError
    );
    assert_eq!(
        volc::parse_body(b"{").unwrap_err().code(),
        "InvalidParam.BindError"
    );
    assert!(volc::parse_body(b"").is_ok());
    let r = volc::parse_body(br#"{"DomainList":["a.com"],"StartTime":"x","App":"cloudphone"}"#)
        .unwrap();
    assert_eq!(r.domain_list, Some(vec!["a.com".to_string()]));
    assert_eq!(r.app.as_deref(), Some("cloudphone"));
}
