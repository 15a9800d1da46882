//! Ordering and listing instances: CreateInstance (placement, one transaction for the order,
//! then creation on the nodes in the background), ListInstances and what BatchShowSku offers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cloudphone_api::error::ApiError;
use cloudphone_api::instances::{
    self as wire, CreateOrder, CreatedInstance, ListInstancesFilter, PoolSceneTag,
};
use cloudphone_api::timefmt;
use cloudphone_core::instance::ControlState;
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::scheduling::{self, NodeSlots};
use rand::Rng;

use super::ServiceError;
use crate::AppState;
use crate::iam::Principal;
use crate::store::{InstanceListing, InstanceQuery, InstanceRecord, NodeRecord, SlotCounts};

/// What CreateInstance answers: the order and the instances in it.
pub(crate) struct Ordered {
    pub(crate) order_id: String,
    pub(crate) instances: Vec<CreatedInstance>,
}

/// Instance ids look like the seeds' (`11J6QVu5`): 8 random alphanumerics, which the
/// `cloudphone_core::instance::InstanceId` rule accepts.
fn new_instance_id() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}

/// Order ids look like the seeds' (`CS2412261442DBN4E`).
fn new_order_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(5)
        .map(|c| char::from(c).to_ascii_uppercase())
        .collect();
    let digits = timefmt::format_unix_ms(crate::unix_ms()).replace(['-', ' ', ':'], "");
    // yyMMddHHmm, as in the seeds' `CS2412261442DBN4E`.
    format!("CS{}{suffix}", digits.get(2..12).unwrap_or("0000000000"))
}

/// ListInstances: one page of the instances of the token's project and how many match. Every instance
/// cloudphone runs is a cloud phone, so a CLOUD_APP filter matches none.
pub(crate) async fn list(
    state: &AppState,
    principal: &Principal,
    filter: &ListInstancesFilter,
) -> Result<(Vec<InstanceListing>, u64), ServiceError> {
    if filter.pool_scene_tag == Some(PoolSceneTag::CloudApp) {
        return Ok((Vec::new(), 0));
    }
    let query = InstanceQuery {
        project_id: principal.project_id.clone(),
        instance_id: filter.instance_id.clone(),
        instance_name: filter.instance_name.clone(),
        created_from_ms: filter.created_from_ms,
        created_to_ms: filter.created_to_ms,
        offset: i64::from(filter.page_no - 1) * i64::from(filter.page_size),
        limit: i64::from(filter.page_size),
    };
    Ok(state
        .store
        .list_instances(&principal.tenant_id, &query)
        .await?)
}

/// What `node` sells: a runtime it announced, in the region it announced, while it is up. The
/// one rule for both sides of an order: BatchShowSku lists what some node sells, and
/// CreateInstance accepts a region and SKU only if some node sells it, and places only on such
/// nodes. A node announcing another region than control's own sells in that region.
fn sells(node: &NodeRecord, health: NodeHealth, region: &str, runtime: &str) -> bool {
    health == NodeHealth::Up && node.region == region && node.runtimes.iter().any(|r| r == runtime)
}

/// The runtimes the healthy nodes offer, per region, each list sorted, regions sorted.
pub(crate) async fn offered_runtimes(
    state: &AppState,
) -> Result<Vec<(String, Vec<String>)>, ServiceError> {
    let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in state.store.list_nodes().await? {
        let health = state.registry.health(&node.node_id);
        for runtime in &node.runtimes {
            if sells(&node, health, &node.region, runtime) {
                offered
                    .entry(node.region.clone())
                    .or_default()
                    .insert(runtime.clone());
            }
        }
    }
    Ok(offered
        .into_iter()
        .map(|(region, runtimes)| (region, runtimes.into_iter().collect()))
        .collect())
}

/// CreateInstance: checks the SKU and region against what the nodes sell ([`sells`]; else 3002)
/// and the tenant's instance quota, places the instances on nodes by free capacity (40010 when
/// short or over quota), records the order in one transaction, and creates the instances on
/// their nodes in the background.
pub(crate) async fn create(
    state: &Arc<AppState>,
    principal: &Principal,
    order: CreateOrder,
) -> Result<Ordered, ServiceError> {
    let shape = wire::parse_sku_id(&order.instance_sku_id)
        .ok_or_else(|| ApiError::NoSuchSkuOrRegion(order.instance_sku_id.clone()))?;
    if order.band_sku_id != wire::BAND_SKU_ID {
        return Err(ApiError::SkuMismatch(order.band_sku_id.clone()).into());
    }

    // The nodes that sell the SKU here; the claim locks only these (and the tenant's row).
    let nodes = state.store.list_nodes().await?;
    let candidates: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let health = state.registry.health(&n.node_id);
            sells(n, health, &order.region_id, shape.runtime)
        })
        .map(|n| n.node_id.clone())
        .collect();
    // Not sold by any node: not what BatchShowSku offers (a shortage among nodes that do sell
    // it is 40010, below).
    if candidates.is_empty() {
        return Err(ApiError::NoSuchSkuOrRegion(format!(
            "{} in {}",
            order.instance_sku_id, order.region_id
        ))
        .into());
    }
    let order_id = new_order_id();
    let plan = |counts: &SlotCounts| plan_order(state, principal, &order, shape, &order_id, counts);
    // Waiting here holds no database connection (see `AppState::placement_permits`); the
    // semaphore is never closed, so there is always a permit to wait for.
    let _permit = state.placement_permits.acquire().await.ok();
    // A snapshot first, without locks: a fleet that was full when the permit was granted is
    // refused then, so a storm of orders past the last slot does not queue on the locks.
    let snapshot = state
        .store
        .slot_counts(&principal.tenant_id, &candidates)
        .await?;
    if let Err(reason) = plan(&snapshot) {
        return Err(ApiError::InsufficientInventory(reason).into());
    }
    // The claim: counted again under the tenant's and the nodes' row locks and written in the
    // same transaction, so replicas on one database never take the same slot
    // (`store::placement`).
    let records = state
        .store
        .place_instances(&principal.tenant_id, &candidates, &plan)
        .await?
        .map_err(ApiError::InsufficientInventory)?;
    tracing::info!(order_id, count = records.len(), "instances ordered");

    let instances = records
        .iter()
        .map(|r| CreatedInstance {
            instance_id: r.instance_id.clone(),
            instance_name: r.name.clone(),
        })
        .collect();
    tokio::spawn(create_on_nodes(Arc::clone(state), records));
    Ok(Ordered {
        order_id,
        instances,
    })
}

/// The instances of `order`, placed by free capacity on the nodes `counts` has (the
/// candidates), or why not (40010): the tenant's quota, `[quotas]
/// instances_per_node_per_tenant`, or no room.
fn plan_order(
    state: &AppState,
    principal: &Principal,
    order: &CreateOrder,
    shape: wire::SkuShape,
    order_id: &str,
    counts: &SlotCounts,
) -> Result<Vec<InstanceRecord>, String> {
    // The tenant's quota: its instances after this order. Refused like a shortage (40010),
    // which is what it is from the tenant's side (docs/api-notes.md).
    let quota = i64::from(state.config.quotas.instances_per_tenant);
    let held = counts.tenant_total;
    if held + i64::from(order.count) > quota {
        return Err(format!(
            "the tenant's instance quota is {quota}; it holds {held}"
        ));
    }
    // `[quotas] instances_per_node_per_tenant` (0: off): the tenant's instances already on
    // each node, against which the placement caps it.
    let per_node = state.config.quotas.instances_per_node_per_tenant;
    let tenant_max_per_node = (per_node > 0).then_some(per_node);
    let count_of = |map: &HashMap<String, i64>, node_id: &str| {
        u32::try_from(map.get(node_id).copied().unwrap_or(0)).unwrap_or(u32::MAX)
    };
    let mut slots: Vec<NodeSlots> = counts
        .capacity
        .iter()
        .map(|(node_id, capacity)| NodeSlots {
            node_id: node_id.clone(),
            capacity: u32::try_from(*capacity).unwrap_or(0),
            used: count_of(&counts.used, node_id),
            tenant_used: match tenant_max_per_node {
                Some(_) => count_of(&counts.tenant_used, node_id),
                None => 0,
            },
            eligible: true,
        })
        .collect();
    // The scheduler breaks ties in list order: keep it the nodes' id order, not a map's.
    slots.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let placements =
        scheduling::place(&slots, order.count, tenant_max_per_node).map_err(|e| e.to_string())?;
    let now = crate::unix_ms();
    Ok(placements
        .into_iter()
        .enumerate()
        .map(|(n, node_id)| InstanceRecord {
            instance_id: new_instance_id(),
            tenant_id: principal.tenant_id.clone(),
            project_id: principal.project_id.clone(),
            name: wire::instance_name(&order.name_prefix, n as u32 + 1),
            order_id: order_id.to_string(),
            node_id,
            sku_id: order.instance_sku_id.clone(),
            region: order.region_id.clone(),
            os: order.os.clone(),
            runtime: shape.runtime.into(),
            width: i64::from(shape.width),
            height: i64::from(shape.height),
            state: ControlState::Creating,
            state_message: String::new(),
            assign_user: None,
            period_type: match order.period_type {
                wire::PeriodType::Month => 2,
                wire::PeriodType::Year => 3,
            },
            period_num: i64::from(order.period_num),
            created_at_ms: now,
            updated_at_ms: now,
        })
        .collect())
}

/// How long an instance may stay `creating` before the leader asks its node again: longer
/// than a live replica takes to send its order's creations (milliseconds), short enough that
/// a killed replica's orders run soon.
const CREATION_GRACE_MS: i64 = 10_000;
/// How often the leader looks for such instances.
const RESEND_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The leader's job: a replica killed between committing an order and asking the nodes leaves
/// its instances `creating` with no process to send them; this sends them again. The node's
/// CreateInstance is idempotent for the same spec, so one already on its way is harmless.
/// Instances whose node this replica has no connection to wait for the next round (not failed:
/// the node may only be joining this replica).
pub(crate) async fn resend_stale_creations(
    state: Arc<AppState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut leader = state.leader.subscribe();
    loop {
        if !crate::leader::until_leading(&mut leader, &mut shutdown).await {
            return;
        }
        let now = state.clock.now_ms();
        match state
            .store
            .claim_stale_creations(now - CREATION_GRACE_MS, now)
            .await
        {
            Ok(records) => {
                let (reachable, waiting): (Vec<_>, Vec<_>) = records
                    .into_iter()
                    .partition(|r| state.registry.client(&r.node_id).is_some());
                if !reachable.is_empty() || !waiting.is_empty() {
                    tracing::warn!(
                        resent = reachable.len(),
                        node_unreachable = waiting.len(),
                        "instances left creating by a replica that stopped; asking their nodes again"
                    );
                }
                create_on_nodes(Arc::clone(&state), reachable).await;
            }
            Err(error) => tracing::warn!(%error, "looking for stale creations failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(RESEND_PERIOD) => {}
        }
    }
}

/// Asks each instance's node to create it; the outcome lands in the instance's state.
async fn create_on_nodes(state: Arc<AppState>, records: Vec<InstanceRecord>) {
    let creations = records.into_iter().map(|record| {
        let state = Arc::clone(&state);
        async move {
            let request = super::create_request(&record);
            let outcome = match state.registry.client(&record.node_id) {
                Some(mut client) => client.create_instance(request).await.map(|r| r.into_inner()),
                None => Err(tonic::Status::unavailable("node not connected")),
            };
            // The node's answer is one of its reports, ordered with those its report streams
            // bring to every replica by the node's time of the change (a late answer must not
            // undo a newer report).
            let written = match outcome {
                Ok(status) => {
                    state
                        .store
                        .set_reported_state(
                            &record.node_id,
                            &record.instance_id,
                            crate::nodes::reported_state(status.state),
                            &status.message,
                            crate::unix_ms(),
                            status.changed_at_unix_ms,
                        )
                        .await
                }
                Err(status) => {
                    tracing::warn!(instance_id = %record.instance_id, %status, "node could not create instance");
                    let message = status.message().to_string();
                    state
                        .store
                        .set_instance_state(
                            &record.instance_id,
                            ControlState::FAILED,
                            &message,
                            crate::unix_ms(),
                        )
                        .await
                }
            };
            if let Err(error) = written {
                tracing::error!(instance_id = %record.instance_id, %error, "could not record instance state");
            }
        }
    });
    futures::future::join_all(creations).await;
}
