//! Placement of new instances onto nodes: most room first, ties by node id, with an optional
//! cap on how many of one tenant's instances a node may hold (so one tenant cannot take every
//! encoder of a host).

/// What the scheduler needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSlots {
    pub node_id: String,
    /// Instances the node can hold in total.
    pub capacity: u32,
    /// Instances already placed on it.
    pub used: u32,
    /// Of `used`, the ordering tenant's: what the per-node cap of [`place`] counts. 0 where
    /// no cap applies.
    pub tenant_used: u32,
    /// Only nodes that are up and offer the runtime are candidates.
    pub eligible: bool,
}

impl NodeSlots {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }

    /// Free slots the ordering tenant may take here: the node's, under `tenant_max` of the
    /// tenant's own.
    fn room(&self, tenant_max: Option<u32>) -> u32 {
        tenant_max.map_or(self.free(), |max| {
            self.free().min(max.saturating_sub(self.tenant_used))
        })
    }
}

/// Why a placement could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the fleet has {free} free slots, {wanted} requested")]
    NoCapacity { wanted: u32, free: u32 },
    /// The fleet has the slots, but not on nodes where the tenant is under its per-node cap.
    #[error(
        "the tenant's quota is {max_per_node} instances per node; the nodes have room for \
         {room} more of its instances, {wanted} requested"
    )]
    TenantPerNodeQuota {
        wanted: u32,
        room: u32,
        max_per_node: u32,
    },
}

/// Places `count` instances of one tenant, spreading them so the node with the most room
/// fills first. With `tenant_max_per_node`, no node ends up holding more than that many of
/// the tenant's instances (counting [`NodeSlots::tenant_used`]). Either every instance gets a
/// node or none does, so an order never half-succeeds.
pub fn place(
    nodes: &[NodeSlots],
    count: u32,
    tenant_max_per_node: Option<u32>,
) -> Result<Vec<String>, PlacementError> {
    let mut candidates: Vec<NodeSlots> = nodes.iter().filter(|n| n.eligible).cloned().collect();
    let free: u32 = candidates.iter().map(NodeSlots::free).sum();
    if free < count {
        return Err(PlacementError::NoCapacity {
            wanted: count,
            free,
        });
    }
    let room: u32 = candidates.iter().map(|n| n.room(tenant_max_per_node)).sum();
    if room < count {
        // `room < free` only when the cap is set.
        return Err(PlacementError::TenantPerNodeQuota {
            wanted: count,
            room,
            max_per_node: tenant_max_per_node.unwrap_or(0),
        });
    }
    let mut placements = Vec::with_capacity(count as usize);
    for _ in 0..count {
        // `room >= count` guarantees a node with room exists on every round.
        let Some(best) = candidates
            .iter_mut()
            .filter(|n| n.room(tenant_max_per_node) > 0)
            .max_by(|a, b| {
                a.room(tenant_max_per_node)
                    .cmp(&b.room(tenant_max_per_node))
                    .then_with(|| a.free().cmp(&b.free()))
                    .then_with(|| b.node_id.cmp(&a.node_id))
            })
        else {
            return Err(PlacementError::NoCapacity {
                wanted: count,
                free,
            });
        };
        best.used += 1;
        best.tenant_used += 1;
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
            tenant_used: 0,
            eligible,
        }
    }

    /// `node` with `tenant_used` of its `used` slots held by the ordering tenant.
    fn held(id: &str, capacity: u32, used: u32, tenant_used: u32) -> NodeSlots {
        NodeSlots {
            tenant_used,
            ..node(id, capacity, used, true)
        }
    }

    #[test]
    fn spreads_across_nodes_emptiest_first() {
        let nodes = [node("a", 4, 2, true), node("b", 4, 0, true)];
        assert_eq!(place(&nodes, 3, None).unwrap(), ["b", "b", "a"]);
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        let nodes = [node("b", 2, 0, true), node("a", 2, 0, true)];
        assert_eq!(place(&nodes, 2, None).unwrap(), ["a", "b"]);
    }

    #[test]
    fn ineligible_nodes_are_never_used() {
        let nodes = [node("down", 10, 0, false), node("up", 1, 0, true)];
        assert_eq!(place(&nodes, 1, None).unwrap(), ["up"]);
        assert_eq!(
            place(&nodes, 2, None),
            Err(PlacementError::NoCapacity { wanted: 2, free: 1 })
        );
    }

    #[test]
    fn all_or_nothing_when_short() {
        let nodes = [node("a", 1, 1, true)];
        assert_eq!(
            place(&nodes, 1, None),
            Err(PlacementError::NoCapacity { wanted: 1, free: 0 })
        );
    }

    /// The per-node cap: (nodes, order size, cap) → placements or the error.
    fn check(nodes: &[NodeSlots], count: u32, cap: u32, expect: Result<&[&str], PlacementError>) {
        let expect = expect.map(|ids| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>());
        assert_eq!(
            place(nodes, count, Some(cap)),
            expect,
            "{nodes:?} ×{count} cap {cap}"
        );
    }

    #[test]
    fn a_tenant_holds_at_most_its_cap_on_any_node() {
        let quota = |wanted, room| PlacementError::TenantPerNodeQuota {
            wanted,
            room,
            max_per_node: 1,
        };
        let two = [held("a", 4, 0, 0), held("b", 4, 0, 0)];
        check(&two, 2, 1, Ok(&["a", "b"]));
        // Room on both nodes, but not for this tenant: refused whole, not placed in part.
        check(&two, 3, 1, Err(quota(3, 2)));
        check(&[held("a", 4, 1, 1), held("b", 4, 0, 0)], 1, 1, Ok(&["b"]));
        check(
            &[held("a", 4, 1, 1), held("b", 4, 1, 1)],
            1,
            1,
            Err(quota(1, 0)),
        );
        // Other tenants' instances take node slots, not this tenant's cap.
        check(&[held("a", 4, 3, 0)], 1, 1, Ok(&["a"]));
        // The node's own capacity still binds under a larger cap.
        check(
            &[held("a", 1, 1, 0)],
            1,
            3,
            Err(PlacementError::NoCapacity { wanted: 1, free: 0 }),
        );
        // The most room *for the tenant* fills first: b is emptier, a has more of its cap left.
        check(
            &[held("a", 8, 4, 0), held("b", 8, 0, 2)],
            3,
            3,
            Ok(&["a", "a", "b"]),
        );
    }
}
