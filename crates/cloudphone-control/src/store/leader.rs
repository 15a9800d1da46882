//! The leader election's own PostgreSQL session (`crate::leader`): one connection outside the
//! pool, since the advisory lock it takes lives exactly as long as this session.

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::StoreError;

/// A session that may hold the leader's advisory lock.
#[derive(Debug)]
pub struct LeaderSession(PgConnection);

impl LeaderSession {
    /// Connects to `url` and applies `settings` (`SET …` statements) to the session. A setting
    /// the server refuses is logged and skipped: the others still apply.
    pub async fn connect(url: &str, settings: &[String]) -> Result<Self, StoreError> {
        let mut conn = PgConnection::connect(url).await?;
        for setting in settings {
            if let Err(error) = sqlx::query(setting).execute(&mut conn).await {
                tracing::warn!(%setting, %error, "leader session setting refused");
            }
        }
        Ok(Self(conn))
    }

    /// `pg_try_advisory_lock(key)`: true when this session holds the lock now.
    pub async fn try_lock(&mut self, key: i64) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut self.0)
                .await?,
        )
    }

    /// One round trip: the session (and with it the lock) is still there.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut self.0).await?;
        Ok(())
    }

    /// Ends the session, which gives the lock back at once.
    pub async fn close(self) {
        let _ = self.0.close().await;
    }
}
