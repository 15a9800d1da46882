//! The node's clock for what it bills: wall-clock milliseconds read through one value, so the
//! usage code can run under `tokio::time::pause()` in tests.

/// Where usage times come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The system clock: what a running node uses.
    System,
    /// Tokio's clock from a fixed start: under `tokio::time::pause()` it moves only as the
    /// test advances time. Only tests run the node on it.
    #[cfg_attr(not(test), allow(dead_code))]
    Tokio {
        start_unix_ms: i64,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that reads `start_unix_ms` now and follows tokio's time from here.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn tokio(start_unix_ms: i64) -> Self {
        Self::Tokio {
            start_unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn unix_ms(&self) -> i64 {
        match self {
            Self::System => crate::unix_ms(),
            Self::Tokio {
                start_unix_ms,
                start,
            } => start_unix_ms
                .saturating_add(i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}
