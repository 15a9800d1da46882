//! Usage records → merged sessions → milliseconds per time bucket.
//!
//! A node sends each encoder run ("session") as contiguous partial records plus a final one, and
//! may send any record more than once (at-least-once delivery, replays after restarts). Storage
//! keeps each `record_id` once; here a session's records are merged into the union of their
//! intervals, so even two different records covering the same time count it once. A session
//! with no final record yet is still running: it is billed up to now, but never more than
//! `open_grace_ms` past its last record, so a node that died without a word is not billed for
//! time nobody saw (its recovery record, if it comes back, settles the exact end).

use std::collections::BTreeMap;

use crate::class::Codec;

/// One stored usage record: the stretch it reports, under the id it was sent with, and whether
/// it is the session's last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub record_id: String,
    pub span: Span,
    pub is_final: bool,
}

/// A stretch of encoding of one session, with what it is billed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub session_id: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Merges records into disjoint spans per session, extending open sessions up to now.
pub fn merge_sessions(records: &[Record], now_ms: i64, open_grace_ms: i64) -> Vec<Span> {
    let mut seen = std::collections::HashSet::new();
    let mut sessions: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if r.span.end_ms < r.span.start_ms || !seen.insert(r.record_id.as_str()) {
            continue;
        }
        sessions
            .entry(r.span.session_id.as_str())
            .or_default()
            .push(r);
    }
    let mut spans = Vec::new();
    for (_, mut recs) in sessions {
        recs.sort_by_key(|r| (r.span.start_ms, r.span.end_ms));
        let open = !recs.iter().any(|r| r.is_final);
        let mut merged: Vec<Span> = Vec::new();
        for r in recs {
            let r = &r.span;
            match merged.last_mut() {
                Some(last) if r.start_ms <= last.end_ms => last.end_ms = last.end_ms.max(r.end_ms),
                _ => merged.push(r.clone()),
            }
        }
        if open && let Some(last) = merged.last_mut() {
            let billed_to = now_ms.min(last.end_ms + open_grace_ms);
            last.end_ms = last.end_ms.max(billed_to);
        }
        spans.extend(merged.into_iter().filter(|s| s.end_ms > s.start_ms));
    }
    spans
}

/// Fixed-length buckets whose boundaries fall on `origin_ms + k × len_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub origin_ms: i64,
    pub len_ms: i64,
}

impl Grid {
    /// UTC hours (Huawei).
    pub const HOURS: Grid = Grid {
        origin_ms: 0,
        len_ms: crate::HOUR_MS,
    };

    /// Days starting at local midnight of a fixed UTC offset (Volcengine).
    pub fn days_at_offset(offset_secs: i32) -> Grid {
        Grid {
            origin_ms: -i64::from(offset_secs) * 1000,
            len_ms: crate::DAY_MS,
        }
    }

    /// Start of the bucket holding `t`.
    pub fn floor(&self, t: i64) -> i64 {
        self.origin_ms + (t - self.origin_ms).div_euclid(self.len_ms) * self.len_ms
    }
}

/// Milliseconds per (bucket start, key) of the spans' parts inside `[from_ms, to_ms)`.
pub fn bucket_totals<K: Ord>(
    spans: &[Span],
    grid: Grid,
    from_ms: i64,
    to_ms: i64,
    key: impl Fn(&Span) -> K,
) -> BTreeMap<(i64, K), i64> {
    let mut totals = BTreeMap::new();
    for span in spans {
        let (mut t, end) = (span.start_ms.max(from_ms), span.end_ms.min(to_ms));
        while t < end {
            let bucket = grid.floor(t);
            let next = (bucket + grid.len_ms).min(end);
            *totals.entry((bucket, key(span))).or_insert(0) += next - t;
            t = next;
        }
    }
    totals
}

/// Minutes rounded to two decimals, as Huawei reports them.
pub fn minutes_2dp(ms: i64) -> f64 {
    (ms as f64 / crate::MINUTE_MS as f64 * 100.0).round() / 100.0
}

/// Exact minutes, as Volcengine reports them.
pub fn minutes(ms: i64) -> f64 {
    ms as f64 / crate::MINUTE_MS as f64
}
