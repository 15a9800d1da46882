//! Request budgets and login backoff counted in the database, so that control replicas on one
//! PostgreSQL together allow what one process would (SQLite's one process counts in memory and
//! never calls these).
//!
//! A budget is a fixed-window counter: one row per key and window, raised by one upsert that
//! refuses to go past the limit, so concurrent requests on any replica cannot overshoot it. A
//! backoff key's row is read and rewritten under its row lock (the no-op `UPDATE` of
//! `store::placement`), by the same pure rule as the in-memory backoff
//! (`cloudphone_core::login_backoff::BackoffRules::after_failure`).

use async_trait::async_trait;
use cloudphone_core::login_backoff::BackoffRules;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{SqlStore, StoreError};

/// A backoff key as its row names it: its SHA-256, since a key may hold a NUL (PostgreSQL's
/// TEXT takes none) and a made-up user name of any length (the row's stays 64 characters).
fn row_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The shared budgets and backoff of [`super::Store`].
#[async_trait]
pub trait LimitStore {
    /// Counts a request by `key` in the window starting at `window_start_ms`; false (and not
    /// counted) when the window already holds `limit`.
    async fn count_request(
        &self,
        key: &str,
        window_start_ms: i64,
        limit: i64,
    ) -> Result<bool, StoreError>;

    /// How long the longest lock among `keys` still runs at `now_ms`; `None` when none does.
    async fn login_locked(&self, keys: &[String], now_ms: i64) -> Result<Option<i64>, StoreError>;

    /// Records a wrong password against each of `keys` at `now_ms`.
    async fn login_failed(
        &self,
        keys: &[String],
        rules: &BackoffRules,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// A right password: `key` starts again from zero.
    async fn login_succeeded(&self, key: &str) -> Result<(), StoreError>;

    /// Drops request windows that started before `windows_before_ms` and backoff keys whose
    /// lock is over and whose last failure is older than `failures_before_ms` (the leader's
    /// purge); returns how many rows went.
    async fn purge_limits(
        &self,
        windows_before_ms: i64,
        failures_before_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError>;
}

#[async_trait]
impl LimitStore for SqlStore {
    async fn count_request(
        &self,
        key: &str,
        window_start_ms: i64,
        limit: i64,
    ) -> Result<bool, StoreError> {
        if limit < 1 {
            return Ok(false);
        }
        // A conflicting row is raised only while under the limit; otherwise nothing is written
        // and nothing returned.
        let counted = sqlx::query(
            "INSERT INTO rate_windows (key, window_start_ms, count) VALUES ($1, $2, 1) \
             ON CONFLICT (key, window_start_ms) DO UPDATE SET count = rate_windows.count + 1 \
             WHERE rate_windows.count < $3 RETURNING count",
        )
        .bind(key)
        .bind(window_start_ms)
        .bind(limit)
        .fetch_optional(&self.pool)
        .await?;
        Ok(counted.is_some())
    }

    async fn login_locked(&self, keys: &[String], now_ms: i64) -> Result<Option<i64>, StoreError> {
        let mut longest: Option<i64> = None;
        for key in keys {
            let row = sqlx::query("SELECT locked_until_ms FROM login_failures WHERE key = $1")
                .bind(row_key(key))
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                let wait = row.try_get::<i64, _>("locked_until_ms")? - now_ms;
                if wait > 0 {
                    longest = Some(longest.map_or(wait, |l| l.max(wait)));
                }
            }
        }
        Ok(longest)
    }

    async fn login_failed(
        &self,
        keys: &[String],
        rules: &BackoffRules,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // Keys sorted: two logins sharing keys lock them in one order.
        let mut sorted: Vec<String> = keys.iter().map(|key| row_key(key)).collect();
        sorted.sort();
        sorted.dedup();
        let mut tx = self.pool.begin().await?;
        for key in &sorted {
            sqlx::query(
                "INSERT INTO login_failures (key, failures, last_failure_ms, locked_until_ms) \
                 VALUES ($1, 0, $2, 0) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            // The row lock until commit: concurrent failures of one key count one by one.
            sqlx::query("UPDATE login_failures SET failures = failures WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let row =
                sqlx::query("SELECT failures, last_failure_ms FROM login_failures WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            let earlier = u32::try_from(row.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX);
            let last_ms: i64 = row.try_get("last_failure_ms")?;
            let (failures, locked_until_ms) = rules.after_failure(Some((earlier, last_ms)), now_ms);
            sqlx::query(
                "UPDATE login_failures SET failures = $2, last_failure_ms = $3, \
                 locked_until_ms = $4 WHERE key = $1",
            )
            .bind(key)
            .bind(i64::from(failures))
            .bind(now_ms)
            .bind(locked_until_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn login_succeeded(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(row_key(key))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_limits(
        &self,
        windows_before_ms: i64,
        failures_before_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let windows = sqlx::query("DELETE FROM rate_windows WHERE window_start_ms < $1")
            .bind(windows_before_ms)
            .execute(&self.pool)
            .await?;
        let failures = sqlx::query(
            "DELETE FROM login_failures WHERE last_failure_ms < $1 AND locked_until_ms <= $2",
        )
        .bind(failures_before_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(windows.rows_affected() + failures.rows_affected())
    }
}
