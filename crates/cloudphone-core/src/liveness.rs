//! Node liveness: when a node that stopped sending heartbeats counts as down.
//!
//! Time is an input (milliseconds on any monotonic scale), so the rule is tested without sleeping.

/// Whether control currently trusts a node to run instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeHealth {
    /// Heard from within the timeout.
    Up,
    /// Silent for longer than the timeout, or its report stream broke.
    Down,
}

impl NodeHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Up => "up",
            NodeHealth::Down => "down",
        }
    }
}

/// Tracks one node's heartbeats against a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    /// How long a node may stay silent before it is down.
    timeout_ms: u64,
    /// When the node was last heard from; `None` until the first beat.
    last_beat_ms: Option<u64>,
    /// Set when the transport says the node is gone, before the timeout would.
    disconnected: bool,
}

impl Liveness {
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            last_beat_ms: None,
            disconnected: false,
        }
    }

    /// Records a heartbeat (or any other report) received at `now_ms`.
    pub fn beat(&mut self, now_ms: u64) {
        self.last_beat_ms = Some(self.last_beat_ms.map_or(now_ms, |last| last.max(now_ms)));
        self.disconnected = false;
    }

    /// Records that the node's report stream broke at `now_ms`.
    pub fn disconnect(&mut self) {
        self.disconnected = true;
    }

    /// The node's health at `now_ms`.
    pub fn health(&self, now_ms: u64) -> NodeHealth {
        match self.last_beat_ms {
            Some(last) if !self.disconnected && now_ms.saturating_sub(last) <= self.timeout_ms => {
                NodeHealth::Up
            }
            _ => NodeHealth::Down,
        }
    }

    /// The latest instant at which the node, if it stays silent, is still up. A monitor
    /// that checks at least every `timeout_ms / 2` marks a dead node down within 1.5 × timeout.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.last_beat_ms.map(|last| last + self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(events: &[(&str, u64)], at: u64, expected: NodeHealth) {
        let mut liveness = Liveness::new(1_000);
        for (event, t) in events {
            match *event {
                "beat" => liveness.beat(*t),
                "disconnect" => liveness.disconnect(),
                other => panic!("unknown event {other}"),
            }
        }
        assert_eq!(liveness.health(at), expected, "events {events:?} at {at}");
    }

    #[test]
    fn never_heard_is_down() {
        check(&[], 0, NodeHealth::Down);
    }

    #[test]
    fn up_until_timeout_then_down() {
        check(&[("beat", 10)], 10, NodeHealth::Up);
        check(&[("beat", 10)], 1_010, NodeHealth::Up);
        check(&[("beat", 10)], 1_011, NodeHealth::Down);
    }

    #[test]
    fn disconnect_is_down_at_once_and_a_beat_revives() {
        check(&[("beat", 10), ("disconnect", 20)], 20, NodeHealth::Down);
        check(
            &[("beat", 10), ("disconnect", 20), ("beat", 30)],
            30,
            NodeHealth::Up,
        );
    }

    #[test]
    fn out_of_order_beats_never_move_time_back() {
        check(&[("beat", 2_000), ("beat", 10)], 2_900, NodeHealth::Up);
    }

    #[test]
    fn deadline_follows_last_beat() {
        let mut liveness = Liveness::new(500);
        assert_eq!(liveness.deadline_ms(), None);
        liveness.beat(100);
        assert_eq!(liveness.deadline_ms(), Some(600));
    }
}
