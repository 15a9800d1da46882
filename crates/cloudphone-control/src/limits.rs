//! Request budgets that hold across control replicas: counted in this process on SQLite (one
//! process), in the database on PostgreSQL (`store::LimitStore`, a fixed-window counter per
//! key), so N replicas together still allow only the configured rate.

use std::sync::Mutex;

use cloudphone_usage::ratelimit::RateLimiter;

use crate::AppState;
use crate::store::StoreError;

/// Counts a request by `key` against `budget` (`limit` per `window_ms`); false when over it.
/// `local` is this process's own limiter, used unless the replicas share their database.
pub(crate) async fn allow(
    state: &AppState,
    budget: &str,
    local: &Mutex<RateLimiter>,
    key: &str,
    (limit, window_ms): (usize, u64),
    now_ms: i64,
) -> Result<bool, StoreError> {
    if !state.shared_limits {
        return Ok(local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(key, now_ms));
    }
    let window_ms = i64::try_from(window_ms).unwrap_or(i64::MAX).max(1);
    let window_start_ms = now_ms - now_ms.rem_euclid(window_ms);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    state
        .store
        .count_request(&format!("{budget}:{key}"), window_start_ms, limit)
        .await
}
