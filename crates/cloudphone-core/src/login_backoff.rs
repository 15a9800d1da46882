//! Login backoff: after a few wrong passwords for one key (a user, or a client address), each
//! further failure locks that key out for twice as long as the last, up to a ceiling. While a
//! key is locked every attempt is refused without checking the password, so a guesser gets no
//! answer to learn from; refused attempts do not lengthen the lock, so a locked-out user waits
//! at most the ceiling. A key's failures are forgotten `forget_ms` after its last one.
//!
//! Pure: time is an argument, nothing reads a clock.

use std::collections::HashMap;

/// How backoff grows; `DEFAULT` is what a deployment gets unless its config says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffRules {
    /// Failures allowed before the first lock (a user mistyping a few times is not locked).
    pub free_failures: u32,
    /// The first lock's length; each later failure doubles it.
    pub base_ms: i64,
    /// The longest lock.
    pub max_ms: i64,
    /// A key with no failure for this long starts again from zero.
    pub forget_ms: i64,
    /// Keys tracked at most (memory bound against made-up user names); past it the key idle the
    /// longest is dropped.
    pub max_keys: usize,
}

impl BackoffRules {
    pub const DEFAULT: BackoffRules = BackoffRules {
        free_failures: 5,
        base_ms: 1_000,
        max_ms: 15 * 60_000,
        forget_ms: 60 * 60_000,
        max_keys: 100_000,
    };

    /// A key's failures in a row and the time its lock ends after one more failure at
    /// `now_ms`, from its earlier failures and the last one's time (`None`: none on record).
    /// The one rule for a record kept here or elsewhere (control replicas keep theirs in their
    /// shared database).
    pub fn after_failure(&self, earlier: Option<(u32, i64)>, now_ms: i64) -> (u32, i64) {
        let failures = match earlier {
            Some((failures, last_ms)) if now_ms - last_ms < self.forget_ms => failures,
            _ => 0,
        }
        .saturating_add(1);
        (failures, now_ms.saturating_add(self.lock_after(failures)))
    }

    /// The lock after the `failures`th failure in a row: none while within the free ones, then
    /// `base_ms`, doubling, capped at `max_ms`.
    pub fn lock_after(&self, failures: u32) -> i64 {
        match failures.checked_sub(self.free_failures) {
            None | Some(0) => 0,
            Some(over) => {
                let doublings = (over - 1).min(62);
                self.base_ms
                    .saturating_mul(1_i64 << doublings)
                    .min(self.max_ms)
            }
        }
    }
}

impl Default for BackoffRules {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One key's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    failures: u32,
    last_failure_ms: i64,
    locked_until_ms: i64,
}

/// Failures and locks per key.
#[derive(Debug)]
pub struct LoginBackoff {
    rules: BackoffRules,
    keys: HashMap<String, Record>,
}

impl LoginBackoff {
    pub fn new(rules: BackoffRules) -> Self {
        Self {
            rules,
            keys: HashMap::new(),
        }
    }

    /// How long every key in `keys` must still wait at `now_ms`: `None` when an attempt may go
    /// ahead, else the longest remaining lock in milliseconds (always > 0).
    pub fn check<'a>(&self, keys: impl IntoIterator<Item = &'a str>, now_ms: i64) -> Option<i64> {
        keys.into_iter()
            .filter_map(|key| self.keys.get(key))
            .map(|r| r.locked_until_ms - now_ms)
            .filter(|&wait| wait > 0)
            .max()
    }

    /// Records a wrong password against each key at `now_ms`.
    pub fn failed<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>, now_ms: i64) {
        for key in keys {
            if !self.keys.contains_key(key) {
                self.make_room(now_ms);
            }
            let rules = self.rules;
            let record = self.keys.entry(key.to_string()).or_insert(Record {
                failures: 0,
                last_failure_ms: now_ms,
                locked_until_ms: 0,
            });
            (record.failures, record.locked_until_ms) =
                rules.after_failure(Some((record.failures, record.last_failure_ms)), now_ms);
            record.last_failure_ms = now_ms;
        }
    }

    /// A right password: the key (the user's) starts again from zero.
    pub fn succeeded(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Keys tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Before a new key goes in at the bound: drop forgotten keys, then, if still full, the key
    /// idle the longest.
    fn make_room(&mut self, now_ms: i64) {
        if self.keys.len() < self.rules.max_keys {
            return;
        }
        let forget = self.rules.forget_ms;
        self.keys
            .retain(|_, r| now_ms - r.last_failure_ms < forget || r.locked_until_ms > now_ms);
        while self.keys.len() >= self.rules.max_keys.max(1) {
            let oldest = self
                .keys
                .iter()
                .min_by_key(|(_, r)| r.last_failure_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => self.keys.remove(&key),
                None => break,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BackoffRules = BackoffRules {
        free_failures: 3,
        base_ms: 100,
        max_ms: 1_000,
        forget_ms: 10_000,
        max_keys: 3,
    };

    #[test]
    fn locks_grow_from_the_first_failure_past_the_free_ones_to_the_ceiling() {
        let expected = [0, 0, 0, 100, 200, 400, 800, 1_000, 1_000];
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(RULES.lock_after(n as u32 + 1), *want, "failure {}", n + 1);
        }
        assert_eq!(RULES.lock_after(u32::MAX), 1_000);
        assert_eq!(BackoffRules::DEFAULT.lock_after(40), 15 * 60_000);
    }

    #[test]
    fn a_locked_key_waits_then_may_try_again() {
        let mut b = LoginBackoff::new(RULES);
        for t in 0..3 {
            assert_eq!(b.check(["u"], t), None);
            b.failed(["u"], t);
        }
        assert_eq!(b.check(["u"], 3), None, "three free failures");
        b.failed(["u"], 3);
        assert_eq!(b.check(["u"], 3), Some(100));
        assert_eq!(b.check(["u"], 102), Some(1));
        assert_eq!(b.check(["u"], 103), None, "the lock is over");
        b.failed(["u"], 103);
        assert_eq!(b.check(["u"], 103), Some(200), "doubled");
        // Another key is untouched; the longest of several keys' locks counts.
        assert_eq!(b.check(["v"], 103), None);
        b.failed(["v"], 103);
        assert_eq!(b.check(["v", "u"], 150), Some(153));
    }

    #[test]
    fn success_resets_and_silence_forgets() {
        let mut b = LoginBackoff::new(RULES);
        for t in 0..4 {
            b.failed(["u", "addr"], t);
        }
        assert!(b.check(["u"], 4).is_some());
        b.succeeded("u");
        assert_eq!(b.check(["u"], 4), None);
        assert!(
            b.check(["addr"], 4).is_some(),
            "the address keeps its count"
        );
        // 10 s after its last failure the address starts again: one failure is free.
        b.failed(["addr"], 3 + 10_000);
        assert_eq!(b.check(["addr"], 3 + 10_000), None);
    }

    #[test]
    fn keys_are_bounded() {
        let mut b = LoginBackoff::new(RULES);
        for (t, key) in ["a", "b", "c", "d"].iter().enumerate() {
            b.failed([*key], t as i64);
        }
        assert_eq!(b.len(), 3);
        // The key idle the longest ("a") went; next "b" goes, the locked, recent "d" stays.
        for t in 10..14 {
            b.failed(["d"], t);
        }
        b.failed(["e"], 20);
        assert_eq!(b.len(), 3);
        assert!(b.check(["d"], 20).is_some(), "the locked key stays");
    }
}
