//! Control's durable state behind one trait: tenants, IAM, nodes and instances; the live
//! edge's tenants, groups and streams (seed 003) in its part `LiveStore`.
//!
//! [`SqlStore`] implements it over SQLite (embedded, the default) and PostgreSQL (for several
//! control replicas) with one set of portable migrations and one SQL dialect (`$n` parameters,
//! TEXT/BIGINT columns, Unix-millisecond times).

/// Reads a struct from a row whose columns are named like its fields: plain fields as they
/// are, the others through `map(row, column)` (so no column name is written twice).
macro_rules! from_row {
    ($row:ident => $ty:ident { $($field:ident),* $(; $($mapped:ident by $map:expr),*)? }) => {
        Ok($ty {
            $($field: $row.try_get(stringify!($field))?,)*
            $($($mapped: $map($row, stringify!($mapped))?,)*)?
        })
    };
}

/// Binds the next parameters of `$query`, in order, to fields of `$from` (a statement's
/// parameters then read like its column list): each by reference, or through `map(&field)`
/// where the column holds another type (a flag as 0/1, a list as text).
macro_rules! bind {
    (@one $query:expr, $value:expr) => { $query.bind($value) };
    (@one $query:expr, $value:expr, $map:expr) => { $query.bind($map($value)) };
    ($query:expr => $from:ident { $($field:ident $(by $map:expr)?),* $(,)? }) => {{
        let query = $query;
        $(let query = bind!(@one query, &$from.$field $(, $map)?);)*
        query
    }};
}

mod leader;
mod limits;
mod live;
mod migrations;
mod placement;
mod sql;

pub use leader::LeaderSession;
pub use limits::LimitStore;
pub use live::{
    GroupFilter, LiveStore, StreamChange, StreamFilter, StreamReport, VsGroup, VsNode, VsOrder,
    VsPage, VsPublish, VsStatus, VsStream, VsTenant,
};
pub use placement::{PlacementStore, PlanFn, SlotCounts};
pub use sql::SqlStore;

use async_trait::async_trait;
use cloudphone_core::instance::ControlState;

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("unsupported store url {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
}

/// A tenant (Huawei "account"/domain) with its first user and project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub tenant_id: String,
    pub domain_name: String,
    pub user_id: String,
    pub user_name: String,
    /// PHC string from argon2; the password itself is never stored.
    pub password_hash: String,
    pub project_id: String,
    pub project_name: String,
    pub created_at_ms: i64,
}

/// A further user of an existing tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: String,
    pub tenant_id: String,
    pub name: String,
    /// PHC string from argon2.
    pub password_hash: String,
    pub created_at_ms: i64,
}

/// An IAM user as login needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    pub user_name: String,
    pub tenant_id: String,
    pub domain_name: String,
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub project_id: String,
    pub tenant_id: String,
    pub name: String,
}

/// An issued IAM token, keyed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_sha256: String,
    pub user_id: String,
    pub tenant_id: String,
    /// The project a project-scoped token acts in; `None` for a domain-scoped token.
    pub project_id: Option<String>,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub grpc_endpoint: String,
    pub signaling_base_url: String,
    pub region: String,
    pub capacity: i64,
    pub runtimes: Vec<String>,
    pub encoders: Vec<String>,
    pub version: String,
    /// "up" or "down" (see `cloudphone_core::liveness::NodeHealth`).
    pub status: String,
    pub last_seen_ms: i64,
}

/// One instance as control tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub order_id: String,
    pub node_id: String,
    pub sku_id: String,
    pub region: String,
    pub os: String,
    pub runtime: String,
    pub width: i64,
    pub height: i64,
    /// Last state reported by the node (`Creating` until the node confirms), or control's own
    /// (backed up, queued, …).
    pub state: ControlState,
    pub state_message: String,
    pub assign_user: Option<String>,
    pub period_type: i64,
    pub period_num: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl InstanceRecord {
    /// A freshly created (`Creating`) 720p x11 phone named `name-{instance_id}`: the one
    /// fixture the unit and store tests build theirs from.
    #[doc(hidden)]
    pub fn sample(instance_id: &str, tenant_id: &str, project_id: &str, node_id: &str) -> Self {
        Self {
            instance_id: instance_id.into(),
            tenant_id: tenant_id.into(),
            project_id: project_id.into(),
            name: format!("name-{instance_id}"),
            order_id: "o1".into(),
            node_id: node_id.into(),
            sku_id: "kp.x11.720p".into(),
            region: "cn-north-7".into(),
            os: "AOSP11".into(),
            runtime: "x11".into(),
            width: 720,
            height: 1280,
            state: ControlState::Creating,
            state_message: String::new(),
            assign_user: None,
            period_type: 2,
            period_num: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }
}

/// One per-instance job of an asynchronous task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub task_id: String,
    pub instance_id: String,
    pub node_id: String,
    /// The node's id for the job; empty when it never reached the node.
    pub node_job_id: String,
    /// 1 running, 2 succeeded, -1 failed.
    pub status: i64,
    pub error_code: String,
    pub error_msg: String,
    pub execute_msg: Option<String>,
    pub updated_at_ms: i64,
}

/// An asynchronous task with its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub task_id: String,
    pub tenant_id: String,
    /// The project whose token made the task; only that project's tokens see it ('' for tasks
    /// made before projects were enforced: their tenant's every project sees them).
    pub project_id: String,
    /// "command" or "install".
    pub kind: String,
    pub created_at_ms: i64,
    pub jobs: Vec<JobRecord>,
}

/// An instance with what ListInstances shows next to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceListing {
    pub instance: InstanceRecord,
    /// Status of the node the instance lives on; "down" makes its status unknown.
    pub node_status: String,
    pub project_name: String,
    pub domain_name: String,
}

/// The filters of ListInstances, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Only this project's instances: a token lists the project it is scoped to.
    pub project_id: String,
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
    /// Zero-based row offset and page length.
    pub offset: i64,
    pub limit: i64,
}

/// Backup and restore bookkeeping of one instance (BatchBackupInstances, BatchPrepareInstances).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupState {
    pub instance_id: String,
    /// The instance's state (backed up, queued, … or whatever its node last reported).
    pub state: ControlState,
    /// ListInstances' `backup_status`: 0 none yet, 1 running, 2 succeeded, 3 failed.
    pub backup_status: i64,
    pub backup_time_ms: Option<i64>,
    /// Where the last archive went; empty before the first backup and after the archive was
    /// wiped (UnassignInstance or BatchReset of an archived phone).
    pub backup_uri: String,
    /// ListInstances' `restore_status`, same codes.
    pub restore_status: i64,
    pub restore_time_ms: Option<i64>,
    /// Set while the instance waits in the prepare queue.
    pub prepare_queued_at_ms: Option<i64>,
}

/// Control's state. Every multi-row write is one transaction: all of it lands or none.
#[async_trait]
pub trait Store: LiveStore + PlacementStore + LimitStore + Send + Sync + 'static {
    /// Brings the schema up to date.
    async fn migrate(&self) -> Result<(), StoreError>;

    async fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError>;
    /// Tenant id of an IAM domain.
    async fn find_tenant(&self, domain_name: &str) -> Result<Option<String>, StoreError>;
    /// Adds a user to an existing tenant; the name is unique within the tenant.
    async fn create_user(&self, user: &NewUser) -> Result<(), StoreError>;
    /// Adds a project to an existing tenant; the name is unique within the tenant.
    async fn create_project(
        &self,
        project: &ProjectRecord,
        created_at_ms: i64,
    ) -> Result<(), StoreError>;
    async fn find_user(
        &self,
        domain_name: &str,
        user_name: &str,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Finds a tenant's project by name or id.
    async fn find_project(
        &self,
        tenant_id: &str,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<Option<ProjectRecord>, StoreError>;
    /// A tenant's projects, oldest first.
    async fn list_projects(&self, tenant_id: &str) -> Result<Vec<ProjectRecord>, StoreError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Removes tokens that expired before `now_ms`; returns how many.
    async fn purge_expired_tokens(&self, now_ms: i64) -> Result<u64, StoreError>;

    async fn upsert_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    async fn set_node_status(
        &self,
        node_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Instances placed on each node, for scheduling.
    async fn instance_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Instances a tenant holds (any state), for its quota.
    async fn tenant_instance_count(&self, tenant_id: &str) -> Result<i64, StoreError>;
    /// The tenant's instances placed on each node (counted like [`Store::instance_counts`]),
    /// for its per-node quota.
    async fn tenant_instance_counts(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError>;

    async fn insert_instances(&self, instances: &[InstanceRecord]) -> Result<(), StoreError>;
    async fn set_instance_state(
        &self,
        instance_id: &str,
        state: ControlState,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Records a state a node reported, unless control owns the instance's state now
    /// (`cloudphone_core::instance::node_may_overwrite`): an instance that is backed up, queued
    /// for restore or failed to restore is on no node, so a late report must not bring it back.
    /// Only an instance placed on `node_id` takes that node's report (a node cannot write the
    /// state of another node's instances). `changed_at_ms` is the node's time of the change:
    /// a report older than the one stored is dropped (replicas write reports in no set order).
    async fn set_reported_state(
        &self,
        node_id: &str,
        instance_id: &str,
        state: ControlState,
        message: &str,
        now_ms: i64,
        changed_at_ms: i64,
    ) -> Result<(), StoreError>;
    async fn get_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError>;
    /// Claims the instances still `creating` and untouched since before `before_ms` (the
    /// replica that took their order died before it asked their node): stamps them `now_ms`,
    /// so one claimer has each per period, and returns them.
    async fn claim_stale_creations(
        &self,
        before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<InstanceRecord>, StoreError>;
    /// Stores a new join token by its SHA-256 (hex).
    async fn insert_join_token(
        &self,
        token_sha256: &str,
        created_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Spends a join token for `node_id`: true when it exists, was never spent and has not
    /// expired at `now_ms`. Atomic: of two concurrent spends at most one succeeds.
    async fn spend_join_token(
        &self,
        token_sha256: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The certificate fingerprint `node_id` is pinned to, if it is enrolled and not revoked.
    async fn node_identity(&self, node_id: &str) -> Result<Option<String>, StoreError>;
    /// Pins `node_id` to a certificate; `AlreadyExists` when the id is pinned already.
    async fn pin_node_identity(
        &self,
        node_id: &str,
        cert_sha256: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Unpins `node_id` (the operator's `node revoke`); false when it was not pinned.
    async fn revoke_node_identity(&self, node_id: &str) -> Result<bool, StoreError>;
    /// Binds an instance to a tenant's end user, or unbinds it (`None`).
    async fn set_assign_user(
        &self,
        instance_id: &str,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Binds (`Some`) or unbinds (`None`) several instances in one transaction, all or none.
    async fn set_assign_users(
        &self,
        bindings: &[(String, Option<String>)],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// UnassignInstance / BatchReset of archived phones, in one transaction: unbinds every
    /// instance of `unbind` and wipes the archive of every instance of `wipe` (its
    /// `backup_uri` emptied: a restore then starts a fresh phone). Answers the wiped archives'
    /// old URIs, for the caller to delete; `None`, with nothing written, if an instance of
    /// `wipe` is no longer archived (a restore claimed it meanwhile).
    async fn wipe_archives(
        &self,
        unbind: &[String],
        wipe: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError>;
    /// Sets the same state on several instances in one transaction, all or none.
    async fn set_instance_states(
        &self,
        instance_ids: &[String],
        state: ControlState,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// BatchPrepareInstances' writes in one transaction: binds each unbound instance of
    /// `assign` to its user, then queues each of `queue` as [`Store::request_prepare`] does.
    async fn prepare_instances(
        &self,
        assign: &[(String, String)],
        queue: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Removes several instances' rows in one transaction, all or none.
    async fn delete_instances(&self, instance_ids: &[String]) -> Result<(), StoreError>;
    /// Removes an instance's row; returns whether it existed.
    async fn delete_instance(&self, instance_id: &str) -> Result<bool, StoreError>;
    /// The instance's SetVideoConfig matrix as stored JSON; empty when never set.
    async fn video_config(&self, instance_id: &str) -> Result<String, StoreError>;
    /// Stores one SetVideoConfig matrix for several instances, all or none.
    async fn set_video_config(
        &self,
        instance_ids: &[String],
        config_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Stores a task and its jobs in one transaction.
    async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError>;
    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;
    async fn update_job(&self, job: &JobRecord) -> Result<(), StoreError>;
    /// One page of a tenant's instances, newest first, and the total matching the filters.
    async fn list_instances(
        &self,
        tenant_id: &str,
        query: &InstanceQuery,
    ) -> Result<(Vec<InstanceListing>, u64), StoreError>;

    /// Marks instances backing up (backup_status 1) with the archive each goes to, all or none.
    async fn begin_backup(
        &self,
        backups: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Records a finished backup. Success: backed up (backup_status 2), or queued when it was
    /// prepared meanwhile. Failure: backup failed (backup_status 3) with the reason.
    async fn finish_backup(
        &self,
        instance_id: &str,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The instance's backup/restore bookkeeping; `None` if it does not exist.
    async fn backup_state(&self, instance_id: &str) -> Result<Option<BackupState>, StoreError>;
    /// Puts a backed-up (or failed-to-restore) instance in the prepare queue, keeping its place
    /// if it is already there; one still backing up is queued for when its backup ends. Returns
    /// whether the instance is now waiting.
    async fn request_prepare(&self, instance_id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Instances in the prepare queue with their enqueue times, first come first.
    async fn queued_instances(&self) -> Result<Vec<(InstanceRecord, i64)>, StoreError>;
    /// Records how a restore ended: the instance's state and restore_status (2 or 3).
    async fn finish_restore(
        &self,
        instance_id: &str,
        state: ControlState,
        message: &str,
        restore_status: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Puts a claimed instance back in the queue at its old place (its node had no room).
    async fn requeue(&self, instance_id: &str, since_ms: i64) -> Result<(), StoreError>;

    /// Stores usage records in one transaction, each `record_id` once (a repeat is a no-op);
    /// returns how many were new.
    async fn store_usage(&self, rows: &[UsageRow]) -> Result<u64, StoreError>;
    /// A tenant's usage records that end at or after `from_ms` and start before `to_ms`.
    async fn usage_between(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError>;
    /// Adds a streaming domain; a new default replaces the tenant's old one, in one transaction.
    async fn create_domain(&self, domain: &DomainRecord) -> Result<(), StoreError>;
    /// A tenant's streaming domains, deleted ones included, oldest first.
    async fn list_domains(&self, tenant_id: &str) -> Result<Vec<DomainRecord>, StoreError>;
    async fn insert_access_key(&self, key: &AccessKeyRecord) -> Result<(), StoreError>;
    async fn find_access_key(
        &self,
        access_key: &str,
    ) -> Result<Option<AccessKeyRecord>, StoreError>;
    /// The keys `owner` holds, oldest first.
    async fn list_access_keys(
        &self,
        owner: &KeyOwner<'_>,
    ) -> Result<Vec<AccessKeyRecord>, StoreError>;
    /// Deletes one of `owner`'s keys; false when it holds no such key.
    async fn delete_access_key(
        &self,
        owner: &KeyOwner<'_>,
        access_key: &str,
    ) -> Result<bool, StoreError>;
    /// Replaces a key's sealed secret if it is still `old_sealed` (a re-seal racing another
    /// replica's changes nothing); true when this call replaced it.
    async fn reseal_access_key(
        &self,
        access_key: &str,
        old_sealed: &str,
        new_sealed: &str,
    ) -> Result<bool, StoreError>;
    /// The cheapest round trip to the database (`/healthz`): proves a connection can be had
    /// and answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Whose access keys a query sees: one user's (what a tenant's user may list and delete through
/// IAM), or, for the operator's CLI only, every key of the tenant.
#[derive(Debug, Clone, Copy)]
pub struct KeyOwner<'a> {
    pub tenant_id: &'a str,
    /// `None`: every user of the tenant (operator only).
    pub user_id: Option<&'a str>,
}

/// Opens the store a URL names: `sqlite://path?mode=rwc` or `postgres://…`.
pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
    SqlStore::connect(url).await
}

/// The URL of a unit test's SQLite store in `dir`.
#[cfg(test)]
pub(crate) fn test_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}/c.db?mode=rwc", dir.display())
}

/// A unit test's store: SQLite at [`test_url`] of a fresh directory, migrated; it lives as
/// long as the directory returned.
#[cfg(test)]
pub(crate) async fn test_store() -> (std::sync::Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&test_url(dir.path())).await.unwrap();
    store.migrate().await.unwrap();
    (std::sync::Arc::new(store), dir)
}

/// One stored usage record (see `cloudphone_usage::meter::Record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub record_id: String,
    pub session_id: String,
    pub tenant_id: String,
    pub instance_id: String,
    pub node_id: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub codec: String,
    pub width: i64,
    pub height: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub is_final: bool,
    pub received_at_ms: i64,
}

/// A tenant's streaming domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    pub domain: String,
    pub tenant_id: String,
    pub is_default: bool,
    pub created_at_ms: i64,
    pub deleted_at_ms: Option<i64>,
}

/// An AK/SK pair; the secret only sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyRecord {
    pub access_key: String,
    pub tenant_id: String,
    pub user_id: String,
    pub secret_sealed: String,
    pub description: String,
    pub created_at_ms: i64,
}
