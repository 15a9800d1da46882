//! The prepare queue: backed-up instances waiting for a host slot so they can be restored
//! (BatchPrepareInstances / ShowProgress).
//!
//! Strictly first come, first served *within a pool* (region + runtime): an instance is admitted
//! when some up node of its pool has a free slot, and nobody queued after it in the same pool is
//! admitted before it. Instances of other pools are not held up by a pool that is full. Time is an
//! input (the enqueue time orders the queue), so every rule is tested without a clock.

use crate::scheduling::{self, NodeSlots};

/// Where an instance may run: the region it was sold in and the runtime its SKU names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pool {
    pub region: String,
    pub runtime: String,
}

/// One queued instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub instance_id: String,
    pub pool: Pool,
    /// When it joined the queue (Unix ms); earlier goes first, ties by instance id.
    pub since_ms: i64,
}

/// A node as admission sees it: its slots plus the pool it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNode {
    /// `eligible` must already say whether the node is up.
    pub slots: NodeSlots,
    pub region: String,
    pub runtimes: Vec<String>,
}

impl PoolNode {
    fn serves(&self, pool: &Pool) -> bool {
        self.slots.eligible && self.region == pool.region && self.runtimes.contains(&pool.runtime)
    }
}

/// An admitted instance and the node it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub instance_id: String,
    pub node_id: String,
}

/// The queue, in admission order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepareQueue {
    entries: Vec<Waiting>,
}

impl PrepareQueue {
    /// Builds a queue from entries in any order (e.g. rows read back from the store).
    pub fn from_entries(mut entries: Vec<Waiting>) -> Self {
        entries.sort_by(|a, b| {
            a.since_ms
                .cmp(&b.since_ms)
                .then_with(|| a.instance_id.cmp(&b.instance_id))
        });
        entries.dedup_by(|a, b| a.instance_id == b.instance_id);
        Self { entries }
    }

    /// Adds an instance at the back. An instance already queued keeps its place (a repeated
    /// prepare must not push a client back in line); returns whether it was added.
    pub fn push(&mut self, waiting: Waiting) -> bool {
        if self.contains(&waiting.instance_id) {
            return false;
        }
        // Keep the order total even if a caller's clock went backwards.
        let position = self
            .entries
            .iter()
            .rposition(|e| {
                (e.since_ms, e.instance_id.as_str())
                    <= (waiting.since_ms, waiting.instance_id.as_str())
            })
            .map_or(0, |p| p + 1);
        self.entries.insert(position, waiting);
        true
    }

    pub fn contains(&self, instance_id: &str) -> bool {
        self.entries.iter().any(|e| e.instance_id == instance_id)
    }

    pub fn remove(&mut self, instance_id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.instance_id != instance_id);
        self.entries.len() != before
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Waiting] {
        &self.entries
    }

    /// ShowProgress' `waitingCount`: the instance's place in its pool's line, counting itself
    /// (1 = next to be admitted). `None` when it is not queued, so 0 always means "not waiting".
    pub fn waiting_count(&self, instance_id: &str) -> Option<u32> {
        let me = self.entries.iter().find(|e| e.instance_id == instance_id)?;
        let ahead = self
            .entries
            .iter()
            .take_while(|e| e.instance_id != instance_id)
            .filter(|e| e.pool == me.pool)
            .count();
        Some(u32::try_from(ahead + 1).unwrap_or(u32::MAX))
    }

    /// Admits, in queue order, every instance a node of its pool has a free slot for, placing
    /// each on the emptiest such node ([`scheduling::place`]). Admitted instances leave the
    /// queue; once a pool is full, later instances of that pool stay, so the line holds.
    pub fn admit(&mut self, nodes: &[PoolNode]) -> Vec<Admission> {
        let mut nodes: Vec<PoolNode> = nodes.to_vec();
        let mut admitted = Vec::new();
        let mut full: Vec<Pool> = Vec::new();
        self.entries.retain(|waiting| {
            if full.contains(&waiting.pool) {
                return true;
            }
            let candidates: Vec<NodeSlots> = nodes
                .iter()
                .map(|n| NodeSlots {
                    eligible: n.serves(&waiting.pool),
                    ..n.slots.clone()
                })
                .collect();
            // No per-node tenant cap here: a queued instance was counted against it when it
            // was ordered, and the queue holds the line by pool, not by tenant.
            let Some(node_id) = scheduling::place(&candidates, 1, None)
                .ok()
                .and_then(|mut placed| placed.pop())
            else {
                full.push(waiting.pool.clone());
                return true;
            };
            if let Some(node) = nodes.iter_mut().find(|n| n.slots.node_id == node_id) {
                node.slots.used += 1;
            }
            admitted.push(Admission {
                instance_id: waiting.instance_id.clone(),
                node_id,
            });
            false
        });
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(runtime: &str) -> Pool {
        Pool {
            region: "r1".into(),
            runtime: runtime.into(),
        }
    }

    fn waiting(id: &str, runtime: &str, since_ms: i64) -> Waiting {
        Waiting {
            instance_id: id.into(),
            pool: pool(runtime),
            since_ms,
        }
    }

    /// A queue of (instance id, runtime, since) entries, all in region r1.
    fn queue_of(entries: &[(&str, &str, i64)]) -> PrepareQueue {
        PrepareQueue::from_entries(
            entries
                .iter()
                .map(|&(id, runtime, since_ms)| waiting(id, runtime, since_ms))
                .collect(),
        )
    }

    /// The queue's instance ids, first in line first.
    fn order(queue: &PrepareQueue) -> Vec<&str> {
        queue
            .entries()
            .iter()
            .map(|w| w.instance_id.as_str())
            .collect()
    }

    fn node(id: &str, runtime: &str, capacity: u32, used: u32, up: bool) -> PoolNode {
        PoolNode {
            slots: NodeSlots {
                node_id: id.into(),
                capacity,
                used,
                tenant_used: 0,
                eligible: up,
            },
            region: "r1".into(),
            runtimes: vec![runtime.into()],
        }
    }

    fn ids(admissions: &[Admission]) -> Vec<(&str, &str)> {
        admissions
            .iter()
            .map(|a| (a.instance_id.as_str(), a.node_id.as_str()))
            .collect()
    }

    #[test]
    fn fifo_by_time_then_id_and_no_duplicates() {
        let mut queue = queue_of(&[
            ("c", "x11", 30),
            ("b", "x11", 10),
            ("a", "x11", 10),
            ("b", "x11", 10),
        ]);
        assert_eq!(order(&queue), ["a", "b", "c"]);
        assert!(!queue.push(waiting("a", "x11", 99)), "keeps its place");
        assert!(queue.push(waiting("d", "x11", 20)));
        assert_eq!(order(&queue), ["a", "b", "d", "c"]);
        assert_eq!(queue.len(), 4);
        assert!(queue.remove("b"));
        assert!(!queue.remove("b"));
        assert!(!queue.contains("b"));
    }

    #[test]
    fn waiting_count_is_the_place_in_line_of_the_same_pool() {
        let queue = queue_of(&[("a", "x11", 1), ("b", "android", 2), ("c", "x11", 3)]);
        assert_eq!(queue.waiting_count("a"), Some(1));
        assert_eq!(queue.waiting_count("b"), Some(1));
        assert_eq!(queue.waiting_count("c"), Some(2));
        assert_eq!(queue.waiting_count("zzz"), None);
    }

    #[test]
    fn admits_while_slots_are_free_and_keeps_the_line() {
        let mut queue = queue_of(&[("a", "x11", 1), ("b", "x11", 2), ("c", "x11", 3)]);
        let nodes = [node("n1", "x11", 4, 3, true), node("n2", "x11", 2, 1, true)];
        // Two free slots: a and b go, each to the emptiest node; c waits and is now first.
        let admitted = queue.admit(&nodes);
        assert_eq!(ids(&admitted), [("a", "n1"), ("b", "n2")]);
        assert_eq!(queue.waiting_count("c"), Some(1));
        // Nothing freed: nothing admitted.
        let full = [node("n1", "x11", 4, 4, true), node("n2", "x11", 2, 2, true)];
        assert!(queue.admit(&full).is_empty());
        assert_eq!(queue.len(), 1);
        // A slot frees (an instance was deleted): c goes.
        let freed = [node("n1", "x11", 4, 3, true), node("n2", "x11", 2, 2, true)];
        assert_eq!(ids(&queue.admit(&freed)), [("c", "n1")]);
        assert!(queue.is_empty());
    }

    #[test]
    fn down_nodes_and_other_pools_are_not_used() {
        let mut queue = queue_of(&[("a", "x11", 1), ("b", "android", 2)]);
        let nodes = [
            node("down", "x11", 4, 0, false),
            node("droid", "android", 1, 0, true),
        ];
        assert_eq!(ids(&queue.admit(&nodes)), [("b", "droid")]);
        assert_eq!(queue.waiting_count("a"), Some(1));
        let mut other_region = node("far", "x11", 4, 0, true);
        other_region.region = "r2".into();
        assert!(queue.admit(&[other_region]).is_empty());
    }

    #[test]
    fn a_full_pool_does_not_block_another() {
        let mut queue = queue_of(&[("a", "x11", 1), ("b", "android", 2), ("c", "x11", 3)]);
        let nodes = [
            node("n1", "x11", 1, 1, true),
            node("droid", "android", 1, 0, true),
        ];
        assert_eq!(ids(&queue.admit(&nodes)), [("b", "droid")]);
        assert_eq!(queue.waiting_count("a"), Some(1));
        assert_eq!(queue.waiting_count("c"), Some(2));
    }
}
