//! Slot claims in the database, so any number of control replicas on one PostgreSQL place
//! instances (CreateInstance, the prepare queue) without overbooking a node.
//!
//! A node's used slots are not a counter: they are its instances in a slot-holding state
//! (`cloudphone_core::instance::holds_slot`), counted. A claim takes the rows it depends on
//! with a no-op `UPDATE` (the ordering tenant's row, then the candidate nodes' in id order),
//! counts again under those locks, and writes the instance rows in the same transaction. Two
//! claims on a shared node therefore run one after the other, and the second counts the
//! first's rows. A release (delete, failure, archive) is the state change itself: there is no
//! second number to keep in step with it.
//!
//! The no-op `UPDATE` is the one locking statement both backends take: on PostgreSQL it is a
//! row lock until commit (what `SELECT … FOR UPDATE` takes), on SQLite the first write of a
//! transaction takes the database's write lock, which is all SQLite has and enough for its
//! single process. Every lock is taken in the same order (tenant, then nodes by id), so two
//! claims cannot deadlock.

use std::collections::HashMap;

use async_trait::async_trait;
use cloudphone_core::instance::{self as rules, ControlState};
use sqlx::{AnyConnection, Row};

use super::sql::{insert_instances_in, lit, node_counts, states_where};
use super::{InstanceRecord, SqlStore, StoreError};

/// What a placement counts: per candidate node its capacity and the instances holding a slot
/// on it (all of them, and the ordering tenant's), and the tenant's instances in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Capacity of each candidate node that is (still) registered.
    pub capacity: HashMap<String, i64>,
    pub used: HashMap<String, i64>,
    pub tenant_used: HashMap<String, i64>,
    /// Every instance of the tenant, slot-holding or not (the tenant quota counts them all).
    pub tenant_total: i64,
}

/// Turns counts into the rows to write, or refuses with a reason (`KOOPHONE.API.40010`: no
/// room, or over the tenant's quota).
pub type PlanFn<'a> =
    &'a (dyn Fn(&SlotCounts) -> Result<Vec<InstanceRecord>, String> + Send + Sync);

/// The slot claims of [`super::Store`].
#[async_trait]
pub trait PlacementStore {
    /// The counts a placement would read, without locks: a snapshot, good for refusing early
    /// (a fleet full at some instant was full for a request made then) but not for a claim.
    async fn slot_counts(
        &self,
        tenant_id: &str,
        node_ids: &[String],
    ) -> Result<SlotCounts, StoreError>;

    /// Places an order: locks the tenant and `node_ids`, counts under the locks, lets `plan`
    /// choose, and writes its rows in the same transaction. `Ok(Err(reason))` when `plan`
    /// refused (nothing written).
    async fn place_instances(
        &self,
        tenant_id: &str,
        node_ids: &[String],
        plan: PlanFn<'_>,
    ) -> Result<Result<Vec<InstanceRecord>, String>, StoreError>;

    /// Takes a queued instance out of the prepare queue and onto `node_id` as restoring, if
    /// it is still queued and the node has a free slot, counted under the node's lock.
    async fn claim_restore_slot(
        &self,
        instance_id: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}

/// `$first, $first+1, …` for `n` parameters of an `IN (…)`.
fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Holds `node_ids`' rows (sorted first, the one lock order) until the transaction ends.
async fn lock_nodes(conn: &mut AnyConnection, node_ids: &[String]) -> Result<(), sqlx::Error> {
    let mut sorted: Vec<&String> = node_ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    for node_id in sorted {
        sqlx::query("UPDATE nodes SET capacity = capacity WHERE id = $1")
            .bind(node_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The counts of [`SlotCounts`] on `conn` (inside a claim's transaction: under its locks).
async fn read_counts(
    conn: &mut AnyConnection,
    tenant_id: &str,
    node_ids: &[String],
) -> Result<SlotCounts, StoreError> {
    if node_ids.is_empty() {
        return Ok(SlotCounts::default());
    }
    let not_holding = states_where(|state| !rules::holds_slot(state));
    let in_nodes = params(1, node_ids.len());
    let capacity_sql =
        format!("SELECT id AS node_id, capacity AS n FROM nodes WHERE id IN ({in_nodes})");
    let mut capacity = sqlx::query(&capacity_sql);
    for id in node_ids {
        capacity = capacity.bind(id);
    }
    let capacity = node_counts(&capacity.fetch_all(&mut *conn).await?)?;
    let used_sql = format!(
        "SELECT node_id, COUNT(*) AS n FROM instances \
         WHERE state NOT IN ({not_holding}) AND node_id IN ({in_nodes}) GROUP BY node_id"
    );
    let mut used = sqlx::query(&used_sql);
    for id in node_ids {
        used = used.bind(id);
    }
    let used = node_counts(&used.fetch_all(&mut *conn).await?)?;
    let tenant_used = sqlx::query(&format!(
        "SELECT node_id, COUNT(*) AS n FROM instances \
         WHERE tenant_id = $1 AND state NOT IN ({not_holding}) GROUP BY node_id"
    ))
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    let tenant_total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    Ok(SlotCounts {
        capacity: capacity.into_iter().collect(),
        used: used.into_iter().collect(),
        tenant_used: node_counts(&tenant_used)?.into_iter().collect(),
        tenant_total,
    })
}

#[async_trait]
impl PlacementStore for SqlStore {
    async fn slot_counts(
        &self,
        tenant_id: &str,
        node_ids: &[String],
    ) -> Result<SlotCounts, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_counts(&mut conn, tenant_id, node_ids).await
    }

    async fn place_instances(
        &self,
        tenant_id: &str,
        node_ids: &[String],
        plan: PlanFn<'_>,
    ) -> Result<Result<Vec<InstanceRecord>, String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The tenant first: its quota counts instances on every node, not only these.
        sqlx::query("UPDATE tenants SET domain_name = domain_name WHERE id = $1")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        lock_nodes(&mut tx, node_ids).await?;
        let counts = read_counts(&mut tx, tenant_id, node_ids).await?;
        let records = match plan(&counts) {
            Ok(records) => records,
            // Dropping the transaction rolls it back (it wrote nothing but no-op updates).
            Err(reason) => return Ok(Err(reason)),
        };
        insert_instances_in(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(Ok(records))
    }

    async fn claim_restore_slot(
        &self,
        instance_id: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_nodes(&mut tx, &[node_id.to_string()]).await?;
        // One statement: still queued, and the node (locked) has fewer slot-holding
        // instances than its capacity.
        let done = sqlx::query(&format!(
            "UPDATE instances SET state = {restoring}, state_message = '', node_id = $1, \
                prepare_queued_at_ms = NULL, restore_status = 1, restore_time_ms = $2, \
                updated_at_ms = $2, reported_at_ms = 0 \
             WHERE id = $3 AND state = {queued} \
               AND (SELECT COUNT(*) FROM instances \
                    WHERE node_id = $1 AND state NOT IN ({not_holding})) \
                 < (SELECT capacity FROM nodes WHERE id = $1)",
            restoring = lit(ControlState::RESTORING),
            queued = lit(ControlState::Queued),
            not_holding = states_where(|state| !rules::holds_slot(state)),
        ))
        .bind(node_id)
        .bind(now_ms)
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
