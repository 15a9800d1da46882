//! One leader among control replicas on one PostgreSQL, for the background jobs that must run
//! once per fleet (the prepare queue's restore worker, the token purge).
//!
//! The leader is whoever holds PostgreSQL's session advisory lock [`LOCK_KEY`] on a dedicated
//! connection (not a pooled one: the lock lives exactly as long as that session). The others
//! try `pg_try_advisory_lock` every `[replicas] leader_retry_ms`. When the leader's process
//! dies its socket closes and PostgreSQL ends the session, releasing the lock, at once; when
//! its host or network goes, the session's TCP keepalives and `tcp_user_timeout`, set on the
//! session itself ([`session_settings`]), make PostgreSQL end it within [`server_release`].
//! The leader checks its connection every [`CHECK_PERIOD`] and steps down when a check fails
//! or takes longer than [`CHECK_TIMEOUT`], which is sooner than PostgreSQL can hand the lock
//! to someone else ([`Timing::steps_down_within`] < [`server_release`]), so two leaders never
//! overlap. On SQLite there is one process ([`crate::replica`]): it always leads.
//!
//! Jobs learn of it through a watch channel (`AppState::leader`): [`until_leading`] waits.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{LeaderSession, StoreError};

/// The advisory lock's key: "cloudphone leader" in a number no other use of the database takes.
pub(crate) const LOCK_KEY: i64 = 0x636c_6f75_646c_6472;
/// How often the leader checks that its lock's session is still there.
const CHECK_PERIOD: Duration = Duration::from_secs(1);
/// How long such a check may take before the leader gives up its role.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower's attempt (connecting when needed, then the lock query) may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Keepalives on the lock's session, server side: idle seconds before the first probe, seconds
/// between probes, probes lost before the connection is dropped.
const KEEPALIVE_IDLE_S: u64 = 5;
const KEEPALIVE_INTERVAL_S: u64 = 2;
const KEEPALIVE_COUNT: u64 = 3;
/// Unacknowledged data older than this drops the connection (PostgreSQL 12+, Linux).
const USER_TIMEOUT_MS: u64 = 10_000;

/// Set on the lock's session, so that PostgreSQL itself notices a leader whose host vanished:
/// these are per-session settings of the server's socket, not the client's.
fn session_settings() -> [String; 4] {
    [
        format!("SET tcp_keepalives_idle = {KEEPALIVE_IDLE_S}"),
        format!("SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S}"),
        format!("SET tcp_keepalives_count = {KEEPALIVE_COUNT}"),
        format!("SET tcp_user_timeout = {USER_TIMEOUT_MS}"),
    ]
}

/// Whether a store URL is PostgreSQL's, the one several replicas share.
pub(crate) fn is_postgres(store_url: &str) -> bool {
    store_url.starts_with("postgres://") || store_url.starts_with("postgresql://")
}

/// Whether a store URL makes this process the leader without an election (SQLite: one process).
pub(crate) fn always_leads(store_url: &str) -> bool {
    !is_postgres(store_url)
}

/// How long PostgreSQL keeps a session whose peer vanished without closing its socket: the
/// keepalive probes of an idle connection, or the user timeout of one with data in flight.
pub(crate) fn server_release() -> Duration {
    let keepalive = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT;
    Duration::from_secs(keepalive).max(Duration::from_millis(USER_TIMEOUT_MS))
}

/// The election's timing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// A follower's period between attempts (`[replicas] leader_retry_ms`).
    pub retry: Duration,
}

impl Timing {
    pub(crate) fn new(retry_ms: u64) -> Self {
        Self {
            retry: Duration::from_millis(retry_ms),
        }
    }

    /// A new leader after the old one's process died on a live host (killed, crashed, or
    /// stopped: the socket closes, PostgreSQL releases the lock at once): a follower's next
    /// attempt, which may take [`TRY_TIMEOUT`].
    pub(crate) fn after_process_death(self) -> Duration {
        self.retry + TRY_TIMEOUT
    }

    /// A new leader after the old one's host or network vanished: PostgreSQL ends the session
    /// within [`server_release`], then a follower's next attempt.
    pub(crate) fn after_host_loss(self) -> Duration {
        server_release() + self.after_process_death()
    }

    /// How soon a leader cut off from PostgreSQL stops leading.
    pub(crate) fn steps_down_within(self) -> Duration {
        CHECK_PERIOD + CHECK_TIMEOUT
    }
}

/// Runs the election until `stop`: tries for the lock every `timing.retry`, holds it while the
/// session answers, and publishes "am I leader" on `leader`. Gives the lock back on `stop`,
/// so a replica shut down cleanly hands over within one retry period.
pub(crate) async fn elect(
    url: String,
    timing: Timing,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(
        after_process_death = ?timing.after_process_death(),
        after_host_loss = ?timing.after_host_loss(),
        steps_down_within = ?timing.steps_down_within(),
        "electing a leader among the replicas"
    );
    let mut session: Option<LeaderSession> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        match tokio::time::timeout(TRY_TIMEOUT, try_lock(&url, &mut session)).await {
            Ok(Ok(true)) => {
                if let Some(held) = session.as_mut() {
                    leader.send_replace(true);
                    tracing::info!("leading: background jobs run here");
                    let stopped = hold(held, &mut stop).await;
                    leader.send_replace(false);
                    let held = session.take();
                    if stopped {
                        if let Some(held) = held {
                            let _ = tokio::time::timeout(CHECK_TIMEOUT, held.close()).await;
                        }
                        return;
                    }
                    // The session is dropped: if PostgreSQL still holds it, it ends it within
                    // `server_release`, and the lock is free for whoever tries next.
                    tracing::warn!(
                        "the leader's database session stopped answering: stepping down"
                    );
                }
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "leader election: database unavailable");
                session = None;
            }
            Err(_) => {
                tracing::warn!("leader election: the attempt timed out");
                session = None;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(timing.retry) => {}
        }
    }
}

/// One attempt: (re)connects the election's session when it has none, then asks for the lock.
async fn try_lock(url: &str, session: &mut Option<LeaderSession>) -> Result<bool, StoreError> {
    let held = match session {
        Some(held) => held,
        // `tcp_user_timeout` needs PostgreSQL 12: refused, the keepalives still bound an idle
        // session, which the lock's is between checks.
        None => session.insert(LeaderSession::connect(url, &session_settings()).await?),
    };
    held.try_lock(LOCK_KEY).await
}

/// Holds the lock while the session answers a check every [`CHECK_PERIOD`]; true when `stop`
/// ended it, false when the session failed.
async fn hold(session: &mut LeaderSession, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            _ = tokio::time::sleep(CHECK_PERIOD) => {}
        }
        if !matches!(
            tokio::time::timeout(CHECK_TIMEOUT, session.check()).await,
            Ok(Ok(()))
        ) {
            return false;
        }
    }
}

/// Waits until this process leads; false when `stop` came first (the job then returns).
pub(crate) async fn until_leading(
    leader: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        led = leader.wait_for(|leads| *leads) => led.is_ok(),
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_always_leads_and_postgres_elects() {
        assert!(always_leads("sqlite://control.db?mode=rwc"));
        assert!(!always_leads("postgres://u@h/db"));
        assert!(!always_leads("postgresql://u@h/db"));
    }

    #[test]
    fn a_cut_off_leader_steps_down_before_postgres_can_hand_its_lock_on() {
        let timing = Timing::new(2_000);
        assert_eq!(server_release(), Duration::from_secs(11));
        assert!(timing.steps_down_within() < server_release());
        assert_eq!(timing.after_process_death(), Duration::from_secs(4));
        assert_eq!(timing.after_host_loss(), Duration::from_secs(15));
    }

    #[test]
    fn the_session_is_set_to_what_the_bound_counts() {
        assert_eq!(
            session_settings(),
            [
                "SET tcp_keepalives_idle = 5",
                "SET tcp_keepalives_interval = 2",
                "SET tcp_keepalives_count = 3",
                "SET tcp_user_timeout = 10000",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_wait_for_the_lead_and_stop_on_shutdown() {
        let (lead_tx, mut lead) = watch::channel(false);
        let (stop_tx, mut stop) = watch::channel(false);
        let waiting = tokio::spawn(async move {
            let first = until_leading(&mut lead, &mut stop).await;
            (first, lead, stop)
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a follower's job waits");
        lead_tx.send_replace(true);
        let (first, mut lead, mut stop) = waiting.await.unwrap();
        assert!(first);
        lead_tx.send_replace(false);
        stop_tx.send_replace(true);
        assert!(!until_leading(&mut lead, &mut stop).await);
    }
}
