//! Placement of new instances onto nodes: most free capacity first, ties by node id.

/// What the scheduler needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSlots {
    pub node_id: String,
    /// Instances the node can hold in total.
    pub capacity: u32,
    /// Instances already placed on it.
    pub used: u32,
    /// Only nodes that are up and offer the runtime are candidates.
    pub eligible: bool,
}

impl NodeSlots {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }
}

/// Why a placement could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the fleet has {free} free slots, {wanted} requested")]
    NoCapacity { wanted: u32, free: u32 },
}

/// Places `count` instances, spreading them so the emptiest node fills first. Either every
/// instance gets a node or none does, so an order never half-succeeds.
pub fn place(nodes: &[NodeSlots], count: u32) -> Result<Vec<String>, PlacementError> {
    let mut candidates: Vec<NodeSlots> = nodes.iter().filter(|n| n.eligible).cloned().collect();
    let free: u32 = candidates.iter().map(NodeSlots::free).sum();
    if free < count {
        return Err(PlacementError::NoCapacity {
            wanted: count,
            free,
        });
    }
    let mut placements = Vec::with_capacity(count as usize);
    for _ in 0..count {
        // `free >= count` guarantees a node with a free slot exists on every round.
        let Some(best) = candidates
            .iter_mut()
            .filter(|n| n.free() > 0)
            .max_by(|a, b| {
                a.free()
                    .cmp(&b.free())
                    .then_with(|| b.node_id.cmp(&a.node_id))
            })
        else {
            return Err(PlacementError::NoCapacity {
                wanted: count,
                free,
            });
        };
        best.used += 1;
        placements.push(best.node_id.clone());
    }
    Ok(placements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, capacity: u32, used: u32, eligible: bool) -> NodeSlots {
        NodeSlots {
            node_id: id.into(),
            capacity,
            used,
            eligible,
        }
    }

    #[test]
    fn spreads_across_nodes_emptiest_first() {
        let nodes = [node("a", 4, 2, true), node("b", 4, 0, true)];
        assert_eq!(place(&nodes, 3).unwrap(), ["b", "b", "a"]);
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        let nodes = [node("b", 2, 0, true), node("a", 2, 0, true)];
        assert_eq!(place(&nodes, 2).unwrap(), ["a", "b"]);
    }

    #[test]
    fn ineligible_nodes_are_never_used() {
        let nodes = [node("down", 10, 0, false), node("up", 1, 0, true)];
        assert_eq!(place(&nodes, 1).unwrap(), ["up"]);
        assert_eq!(
            place(&nodes, 2),
            Err(PlacementError::NoCapacity { wanted: 2, free: 1 })
        );
    }

    #[test]
    fn all_or_nothing_when_short() {
        let nodes = [node("a", 1, 1, true)];
        assert_eq!(
            place(&nodes, 1),
            Err(PlacementError::NoCapacity { wanted: 1, free: 0 })
        );
    }
}
