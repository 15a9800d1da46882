//! A sliding-window request budget per user (Volcengine: 100 requests per minute).

use std::collections::{HashMap, VecDeque};

/// Counts each key's requests of the last `window_ms`; time is an argument.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window_ms: i64,
    hits: HashMap<String, VecDeque<i64>>,
}

impl RateLimiter {
    pub fn new(limit: usize, window_ms: i64) -> Self {
        Self {
            limit,
            window_ms,
            hits: HashMap::new(),
        }
    }

    /// Volcengine's budget: 100 per minute per user.
    pub fn volcengine() -> Self {
        Self::new(100, 60_000)
    }

    /// Records a request by `key` at `now_ms`; false (and not recorded) when over budget.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> bool {
        if self.hits.len() > 10_000 {
            let window = self.window_ms;
            self.hits
                .retain(|_, q| q.back().is_some_and(|&t| t > now_ms - window));
        }
        let queue = self.hits.entry(key.to_string()).or_default();
        while queue.front().is_some_and(|&t| t <= now_ms - self.window_ms) {
            queue.pop_front();
        }
        if queue.len() >= self.limit {
            return false;
        }
        queue.push_back(now_ms);
        true
    }
}
