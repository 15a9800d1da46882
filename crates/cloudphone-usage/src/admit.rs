//! Which times of a node-reported usage record control believes: a node's clock may drift a
//! little, but a record may not bill time before its instance existed nor time that has not
//! happened yet (a hostile or broken node could otherwise inflate a tenant's bill).

/// How far past control's "now" a record may end: the clock skew tolerated between hosts.
pub const MAX_FUTURE_SKEW_MS: i64 = 30_000;

/// The span `[start_ms, end_ms]` cut to `[created_ms, now_ms + MAX_FUTURE_SKEW_MS]`; `None`
/// when nothing of it is left (or it ends before it starts).
pub fn clamp_span(start_ms: i64, end_ms: i64, created_ms: i64, now_ms: i64) -> Option<(i64, i64)> {
    if end_ms < start_ms {
        return None;
    }
    let start = start_ms.max(created_ms);
    let end = end_ms.min(now_ms.saturating_add(MAX_FUTURE_SKEW_MS));
    (start <= end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(start, end)` against an instance created at 1 000 and "now" 100 000.
    fn check(start: i64, end: i64, expected: Option<(i64, i64)>) {
        assert_eq!(
            clamp_span(start, end, 1_000, 100_000),
            expected,
            "{start}..{end}"
        );
    }

    #[test]
    fn spans_are_cut_to_the_instances_life_up_to_now() {
        check(2_000, 3_000, Some((2_000, 3_000)));
        check(0, 3_000, Some((1_000, 3_000)));
        check(0, 500, None);
        check(90_000, 129_000, Some((90_000, 129_000)));
        check(90_000, 10_000_000, Some((90_000, 130_000)));
        check(200_000, 300_000, None);
        check(3_000, 2_000, None);
        check(1_000, 1_000, Some((1_000, 1_000)));
    }
}
