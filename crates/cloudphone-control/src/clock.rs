//! The time control's rules read: token expiry and purging, the Volcengine rate window and the
//! usage queries' "now" go through [`Clock`], so tests can run them in tokio's paused time instead of waiting on the wall
//! clock. (Node liveness is monotonic and uses tokio's `Instant` directly, see `nodes`.)

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The system's wall clock (production).
    System,
    /// Unix time derived from tokio's clock: `base_ms` at `origin`, moving with
    /// `tokio::time::advance` when time is paused (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Tokio {
        base_ms: i64,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that starts at the current wall-clock time and then follows tokio's time.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn tokio() -> Self {
        Self::tokio_at(crate::unix_ms())
    }

    /// A clock that reads `base_ms` now and then follows tokio's time: rules that depend on
    /// "now" floored to the hour or day are deterministic when `base_ms` is mid-hour.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn tokio_at(base_ms: i64) -> Self {
        Self::Tokio {
            base_ms,
            origin: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        match self {
            Self::System => crate::unix_ms(),
            Self::Tokio { base_ms, origin } => {
                let elapsed = i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(elapsed)
            }
        }
    }
}

/// Moves tokio's clock forward by `by`, for tests of rules on a [`Clock::Tokio`]. The store's
/// I/O runs in real time (its pool timeouts would fire under paused time's auto-advance), so
/// the clock is paused only to jump.
#[cfg(test)]
pub(crate) async fn jump(by: std::time::Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms() - start, 1_500);
    }
}
