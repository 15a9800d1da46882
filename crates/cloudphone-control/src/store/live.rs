//! The live edge's state (seed 003, docs/live-api.md): VS tenants with their sealed key
//! secrets, groups, streams, the play keys URLs were signed with, signature nonces, what each
//! node offers for live streams, and ingest per publish session. Every query of a tenant's
//! groups or streams names the tenant, so another tenant's rows are never found.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{AnyQuery, RowMap, binder, flag, int, unique_as_exists};
use super::{SqlStore, StoreError};

/// A VS tenant's service status (GetMtsServiceStatus; 0 "not opened" is the absence of a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsStatus {
    Suspended,
    Active,
    Deleted,
}

impl VsStatus {
    /// The document's number: 1 suspended, 2 active, 3 deleted.
    pub fn code(&self) -> i64 {
        match self {
            Self::Suspended => 1,
            Self::Active => 2,
            Self::Deleted => 3,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Suspended,
            2 => Self::Active,
            _ => Self::Deleted,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsTenant {
    pub user_id: String,
    pub access_key_id: String,
    /// Sealed with the usage secrets key, bound to `access_key_id` (never stored in clear).
    pub secret_sealed: String,
    pub status: VsStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsGroup {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub description: String,
    pub region: String,
    pub app: String,
    pub in_protocol: String,
    /// Comma list, e.g. `flv,rtmp,hls`.
    pub out_protocol: String,
    pub lazy_pull: bool,
    pub callback: String,
    pub enabled: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsStream {
    pub id: String,
    pub user_id: String,
    pub group_id: String,
    pub name: String,
    /// The node it is placed on; `None` until some node offers a live edge.
    pub node_id: Option<String>,
    pub push_key: String,
    /// The key ScreenShowStreams' URLs are signed with.
    pub screen_key: String,
    /// Start/StopStream.
    pub enabled: bool,
    /// Forbid/ResumeVsStream.
    pub forbidden: bool,
    /// A publisher is sending (the node's report).
    pub is_on: bool,
    pub codec: String,
    pub width: i64,
    pub height: i64,
    pub bitrate_bps: i64,
    pub started_at_ms: Option<i64>,
    pub stopped_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

impl VsTenant {
    /// A tenant opened (or opened again) at `now_ms`: active.
    pub fn active(
        user_id: String,
        access_key_id: String,
        secret_sealed: String,
        now_ms: i64,
    ) -> Self {
        Self {
            user_id,
            access_key_id,
            secret_sealed,
            status: VsStatus::Active,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }
}

impl VsStream {
    /// A stream as it is created: enabled, not forbidden, on no node yet, no publisher.
    /// `keys` are its push key and its screen key.
    pub fn new(
        id: String,
        user_id: String,
        group_id: String,
        name: String,
        (push_key, screen_key): (String, String),
        created_at_ms: i64,
    ) -> Self {
        Self {
            id,
            user_id,
            group_id,
            name,
            node_id: None,
            push_key,
            screen_key,
            enabled: true,
            forbidden: false,
            is_on: false,
            codec: String::new(),
            width: 0,
            height: 0,
            bitrate_bps: 0,
            started_at_ms: None,
            stopped_at_ms: None,
            created_at_ms,
        }
    }
}

/// What a node offers for live streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsNode {
    pub node_id: String,
    pub region: String,
    /// Empty: the node runs no live edge.
    pub rtmp_base_url: String,
    pub http_base_url: String,
}

/// A list's order, as the store sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsOrder {
    Id,
    Name,
    CreatedTime,
}

impl VsOrder {
    fn column(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Name => "name",
            Self::CreatedTime => "created_at_ms",
        }
    }
}

/// Which page of a list, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsPage {
    pub order: VsOrder,
    pub descending: bool,
    /// Rows skipped, and at most how many follow.
    pub offset: i64,
    pub limit: i64,
}

impl VsPage {
    /// Rows `offset..offset + limit` by id.
    pub fn by_id(offset: i64, limit: i64) -> Self {
        Self {
            order: VsOrder::Id,
            descending: false,
            offset,
            limit,
        }
    }

    /// The SQL tail selecting the page, columns named with `prefix` (a table alias and dot).
    fn sql(&self, prefix: &str) -> String {
        let direction = if self.descending { "DESC" } else { "ASC" };
        // Id last, so equal names or times still page in a stable order. The bounds are
        // numbers, so they are written in rather than bound.
        format!(
            "ORDER BY {prefix}{} {direction}, {prefix}id {direction} LIMIT {} OFFSET {}",
            self.order.column(),
            self.limit,
            self.offset
        )
    }
}

/// DescribeGroups' filters (absent: every value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFilter {
    pub id: Option<String>,
    pub name: Option<String>,
    pub region: Option<String>,
    pub in_protocol: Option<String>,
    pub enabled: Option<bool>,
    pub page: VsPage,
}

impl GroupFilter {
    /// Every group, a page of them.
    pub fn all(page: VsPage) -> Self {
        Self {
            id: None,
            name: None,
            region: None,
            in_protocol: None,
            enabled: None,
            page,
        }
    }
}

/// DescribeStreams' and ScreenShowStreams' filters (absent: every value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFilter {
    pub id: Option<String>,
    pub group_id: Option<String>,
    pub app: Option<String>,
    pub name: Option<String>,
    pub on: Option<bool>,
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
    pub page: VsPage,
}

impl StreamFilter {
    /// Every stream, a page of them.
    pub fn all(page: VsPage) -> Self {
        Self {
            id: None,
            group_id: None,
            app: None,
            name: None,
            on: None,
            created_from_ms: None,
            created_to_ms: None,
            page,
        }
    }
}

/// A node's report of one publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub stream_id: String,
    pub is_on: bool,
    pub codec: String,
    pub width: i64,
    pub height: i64,
    pub bitrate_bps: i64,
    pub started_at_ms: Option<i64>,
    pub stopped_at_ms: Option<i64>,
}

/// One publish session's ingest so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsPublish {
    pub publish_id: String,
    pub stream_id: String,
    pub user_id: String,
    pub node_id: String,
    pub bytes_in: i64,
    pub frames_in: i64,
    pub started_at_ms: i64,
    pub stopped_at_ms: Option<i64>,
}

/// A stream's change by the tenant (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamChange {
    pub enabled: Option<bool>,
    pub forbidden: Option<bool>,
    pub name: Option<String>,
}

/// The live edge's part of control's state.
#[async_trait]
pub trait LiveStore: Send + Sync {
    async fn vs_tenant(&self, user_id: &str) -> Result<Option<VsTenant>, StoreError>;
    async fn vs_tenant_by_key(&self, access_key_id: &str) -> Result<Option<VsTenant>, StoreError>;
    /// Creates the tenant, or replaces a deleted one's row (new keys, active).
    async fn vs_put_tenant(&self, tenant: &VsTenant) -> Result<(), StoreError>;
    /// Sets a tenant's status; false when it has no row.
    async fn vs_set_tenant_status(
        &self,
        user_id: &str,
        status: VsStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Deletes a tenant's groups and streams (one transaction) and marks it deleted; answers
    /// the streams removed.
    async fn vs_delete_tenant(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<VsStream>, StoreError>;

    /// Records `nonce` of `access_key_id` until `expires_at_ms`; false when it was already
    /// recorded (a replay). Forgets nonces expired at `now_ms`.
    async fn vs_spend_nonce(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    async fn vs_insert_group(&self, group: &VsGroup) -> Result<(), StoreError>;
    async fn vs_group(&self, user_id: &str, id: &str) -> Result<Option<VsGroup>, StoreError>;
    /// A page of the tenant's groups and how many match in all.
    async fn vs_groups(
        &self,
        user_id: &str,
        filter: &GroupFilter,
    ) -> Result<(Vec<VsGroup>, i64), StoreError>;
    async fn vs_update_group(&self, group: &VsGroup) -> Result<bool, StoreError>;
    /// Deletes the group with its streams and their play keys (one transaction); answers the
    /// streams removed, or `None` when the tenant has no such group.
    async fn vs_delete_group(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<Vec<VsStream>>, StoreError>;

    /// Inserts streams (one transaction: all or none).
    async fn vs_insert_streams(&self, streams: &[VsStream]) -> Result<(), StoreError>;
    async fn vs_stream(&self, user_id: &str, id: &str) -> Result<Option<VsStream>, StoreError>;
    /// A stream whoever owns it: for nodes' reports only, never on a tenant's request.
    async fn vs_stream_by_id(&self, id: &str) -> Result<Option<VsStream>, StoreError>;
    async fn vs_streams(
        &self,
        user_id: &str,
        filter: &StreamFilter,
    ) -> Result<(Vec<VsStream>, i64), StoreError>;
    /// Every stream of a tenant, or of one of its groups.
    async fn vs_streams_of(
        &self,
        user_id: &str,
        group_id: Option<&str>,
    ) -> Result<Vec<VsStream>, StoreError>;
    /// Applies a tenant's change; the updated row, or `None` when it has no such stream.
    async fn vs_change_stream(
        &self,
        user_id: &str,
        id: &str,
        change: &StreamChange,
    ) -> Result<Option<VsStream>, StoreError>;
    /// Keeps `key` as a play key of the stream until at least `expires_at_ms`, and forgets
    /// the stream's keys expired at `now_ms`.
    async fn vs_add_play_key(
        &self,
        stream_id: &str,
        key: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The stream's play keys not expired at `now_ms`.
    async fn vs_play_keys(&self, stream_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError>;

    async fn vs_put_node(&self, node: &VsNode, now_ms: i64) -> Result<(), StoreError>;
    /// Nodes offering a live edge (non-empty RTMP base) with how many streams each holds.
    async fn vs_live_nodes(&self) -> Result<Vec<(VsNode, i64)>, StoreError>;
    async fn vs_node(&self, node_id: &str) -> Result<Option<VsNode>, StoreError>;
    /// Streams placed on `node_id`.
    async fn vs_node_streams(&self, node_id: &str) -> Result<Vec<VsStream>, StoreError>;
    /// Streams not placed on any node yet.
    async fn vs_unplaced_streams(&self) -> Result<Vec<VsStream>, StoreError>;
    async fn vs_place_stream(&self, id: &str, node_id: &str) -> Result<(), StoreError>;
    /// Records a node's report, only for a stream placed on that node; false otherwise.
    async fn vs_record_report(
        &self,
        node_id: &str,
        report: &StreamReport,
    ) -> Result<bool, StoreError>;
    /// Meters a publish session: one row per publish id, its figures only ever growing.
    async fn vs_meter(&self, publish: &VsPublish) -> Result<(), StoreError>;
    /// Every publish session of a tenant (part 2 serves them).
    async fn vs_publishes(&self, user_id: &str) -> Result<Vec<VsPublish>, StoreError>;
}

const STREAM_COLUMNS: &str = "id, user_id, group_id, name, node_id, push_key, screen_key, \
    enabled, forbidden, is_on, codec, width, height, bitrate_bps, started_at_ms, \
    stopped_at_ms, created_at_ms";

const GROUP_COLUMNS: &str = "id, user_id, name, description, region, app, in_protocol, \
    out_protocol, lazy_pull, callback, enabled, created_at_ms";

const TENANT_COLUMNS: &str =
    "user_id, access_key_id, secret_sealed, status, created_at_ms, updated_at_ms";

fn status(row: &AnyRow, column: &str) -> Result<VsStatus, sqlx::Error> {
    Ok(VsStatus::from_code(row.try_get(column)?))
}

fn tenant_from_row(row: &AnyRow) -> Result<VsTenant, sqlx::Error> {
    from_row!(row => VsTenant {
        user_id, access_key_id, secret_sealed, created_at_ms, updated_at_ms;
        status by status
    })
}

fn group_from_row(row: &AnyRow) -> Result<VsGroup, sqlx::Error> {
    from_row!(row => VsGroup {
        id, user_id, name, description, region, app, in_protocol, out_protocol, callback,
        created_at_ms;
        lazy_pull by flag, enabled by flag
    })
}

fn stream_from_row(row: &AnyRow) -> Result<VsStream, sqlx::Error> {
    from_row!(row => VsStream {
        id, user_id, group_id, name, node_id, push_key, screen_key, codec, width, height,
        bitrate_bps, started_at_ms, stopped_at_ms, created_at_ms;
        enabled by flag, forbidden by flag, is_on by flag
    })
}

fn node_from_row(row: &AnyRow) -> Result<VsNode, sqlx::Error> {
    from_row!(row => VsNode { node_id, region, rtmp_base_url, http_base_url })
}

fn publish_from_row(row: &AnyRow) -> Result<VsPublish, sqlx::Error> {
    from_row!(row => VsPublish {
        publish_id, stream_id, user_id, node_id, bytes_in, frames_in, started_at_ms, stopped_at_ms
    })
}

/// Every row through `map`.
fn all_rows<T>(rows: &[AnyRow], map: RowMap<T>) -> Result<Vec<T>, sqlx::Error> {
    rows.iter().map(map).collect()
}

/// The streams where `condition` holds, its `$1…` bound to `args` in order.
async fn streams_where<'c, E>(
    executor: E,
    condition: &str,
    args: &[&str],
) -> Result<Vec<VsStream>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let sql = format!("SELECT {STREAM_COLUMNS} FROM vs_streams WHERE {condition}");
    let mut query = sqlx::query(&sql);
    for arg in args {
        query = query.bind(*arg);
    }
    all_rows(&query.fetch_all(executor).await?, stream_from_row)
}

/// Deletes the streams where `condition` holds (`$1…` bound to `args`) with their play keys,
/// inside `tx`; answers them.
async fn delete_streams_where(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    condition: &str,
    args: &[&str],
) -> Result<Vec<VsStream>, sqlx::Error> {
    let streams = streams_where(&mut **tx, condition, args).await?;
    for sql in [
        format!(
            "DELETE FROM vs_play_keys WHERE stream_id IN (SELECT id FROM vs_streams WHERE {condition})"
        ),
        format!("DELETE FROM vs_streams WHERE {condition}"),
    ] {
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = query.bind(*arg);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(streams)
}

/// An optional time as a bound number: -1 when unset.
fn or_unset(time: &Option<i64>) -> i64 {
    time.unwrap_or(-1)
}

/// A tri-state filter as a bound number: -1 matches every row.
fn tri(value: Option<bool>) -> i64 {
    value.map_or(-1, i64::from)
}

impl SqlStore {
    /// A page of the rows of `from` where `condition` holds (its parameters bound by `bind`),
    /// columns named with `prefix`, and how many match in all.
    async fn vs_page<T>(
        &self,
        (from, prefix): (&str, &str),
        condition: &str,
        bind: impl for<'q> Fn(AnyQuery<'q>) -> AnyQuery<'q>,
        page: &VsPage,
        (columns, map): (&str, RowMap<T>),
    ) -> Result<(Vec<T>, i64), StoreError> {
        let count = format!("SELECT COUNT(*) AS n FROM {from} WHERE {condition}");
        let total: i64 = bind(sqlx::query(&count))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let columns = columns
            .split(", ")
            .map(|c| format!("{prefix}{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!(
            "SELECT {columns} FROM {from} WHERE {condition} {}",
            page.sql(prefix)
        );
        let rows = bind(sqlx::query(&select)).fetch_all(&self.pool).await?;
        Ok((all_rows(&rows, map)?, total))
    }

    /// The tenant whose `column` (a unique one) is `value`.
    async fn vs_tenant_where(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<VsTenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM vs_tenants WHERE {column} = $1");
        self.optional_row(&sql, value, tenant_from_row).await
    }
}

#[async_trait]
impl LiveStore for SqlStore {
    async fn vs_tenant(&self, user_id: &str) -> Result<Option<VsTenant>, StoreError> {
        self.vs_tenant_where("user_id", user_id).await
    }

    async fn vs_tenant_by_key(&self, access_key_id: &str) -> Result<Option<VsTenant>, StoreError> {
        self.vs_tenant_where("access_key_id", access_key_id).await
    }

    async fn vs_put_tenant(&self, t: &VsTenant) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Only a deleted tenant's row may be replaced.
        sqlx::query("DELETE FROM vs_tenants WHERE user_id = $1 AND status = $2")
            .bind(&t.user_id)
            .bind(VsStatus::Deleted.code())
            .execute(&mut *tx)
            .await?;
        let sql =
            format!("INSERT INTO vs_tenants ({TENANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
        bind!(sqlx::query(&sql) => t {
            user_id, access_key_id, secret_sealed, status by VsStatus::code, created_at_ms,
            updated_at_ms
        })
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_as_exists(e, format!("service of {}", t.user_id)))?;
        tx.commit().await?;
        Ok(())
    }

    async fn vs_set_tenant_status(
        &self,
        user_id: &str,
        status: VsStatus,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE vs_tenants SET status = $1, updated_at_ms = $2 WHERE user_id = $3")
                .bind(status.code())
                .bind(now_ms)
                .bind(user_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn vs_delete_tenant(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<VsStream>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let streams = delete_streams_where(&mut tx, "user_id = $1", &[user_id]).await?;
        sqlx::query("DELETE FROM vs_groups WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE vs_tenants SET status = $1, updated_at_ms = $2 WHERE user_id = $3")
            .bind(VsStatus::Deleted.code())
            .bind(now_ms)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(streams)
    }

    async fn vs_spend_nonce(
        &self,
        access_key_id: &str,
        nonce: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM vs_nonces WHERE expires_at_ms < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "INSERT INTO vs_nonces (access_key_id, nonce, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (access_key_id, nonce) DO NOTHING",
        )
        .bind(access_key_id)
        .bind(nonce)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn vs_insert_group(&self, g: &VsGroup) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO vs_groups ({GROUP_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        bind!(sqlx::query(&sql) => g {
            id, user_id, name, description, region, app, in_protocol, out_protocol,
            lazy_pull by int, callback, enabled by int, created_at_ms
        })
        .execute(&self.pool)
        .await
        .map_err(|e| unique_as_exists(e, format!("group {}", g.id)))?;
        Ok(())
    }

    async fn vs_group(&self, user_id: &str, id: &str) -> Result<Option<VsGroup>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {GROUP_COLUMNS} FROM vs_groups WHERE user_id = $1 AND id = $2"
        ))
        .bind(user_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(group_from_row).transpose()?)
    }

    async fn vs_groups(
        &self,
        user_id: &str,
        f: &GroupFilter,
    ) -> Result<(Vec<VsGroup>, i64), StoreError> {
        // Absent filters bind as values that match everything, so one statement serves all.
        let filter = "g.user_id = $1 AND ($2 = '' OR g.id = $2) AND ($3 = '' OR g.name = $3) \
                      AND ($4 = '' OR g.region = $4) AND ($5 = '' OR g.in_protocol = $5) \
                      AND ($6 < 0 OR g.enabled = $6)";
        let bind = binder(|query| {
            query
                .bind(user_id.to_owned())
                .bind(f.id.clone().unwrap_or_default())
                .bind(f.name.clone().unwrap_or_default())
                .bind(f.region.clone().unwrap_or_default())
                .bind(f.in_protocol.clone().unwrap_or_default())
                .bind(tri(f.enabled))
        });
        let from = ("vs_groups g", "g.");
        self.vs_page(from, filter, bind, &f.page, (GROUP_COLUMNS, group_from_row))
            .await
    }

    async fn vs_update_group(&self, g: &VsGroup) -> Result<bool, StoreError> {
        let update = sqlx::query(
            "UPDATE vs_groups SET name = $1, description = $2, region = $3, in_protocol = $4, \
             out_protocol = $5, lazy_pull = $6, callback = $7, enabled = $8 \
             WHERE user_id = $9 AND id = $10",
        );
        let done = bind!(update => g {
            name, description, region, in_protocol, out_protocol, lazy_pull by int, callback,
            enabled by int, user_id, id
        })
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn vs_delete_group(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<Vec<VsStream>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let streams =
            delete_streams_where(&mut tx, "user_id = $1 AND group_id = $2", &[user_id, id]).await?;
        let done = sqlx::query("DELETE FROM vs_groups WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            // Nothing was the tenant's: leave everything as it was.
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(streams))
    }

    async fn vs_insert_streams(&self, streams: &[VsStream]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for s in streams {
            let sql = format!(
                "INSERT INTO vs_streams ({STREAM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                 $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            );
            bind!(sqlx::query(&sql) => s {
                id, user_id, group_id, name, node_id, push_key, screen_key, enabled by int,
                forbidden by int, is_on by int, codec, width, height, bitrate_bps, started_at_ms,
                stopped_at_ms, created_at_ms
            })
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_exists(e, format!("stream {}", s.id)))?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn vs_stream(&self, user_id: &str, id: &str) -> Result<Option<VsStream>, StoreError> {
        let streams = streams_where(&self.pool, "user_id = $1 AND id = $2", &[user_id, id]).await?;
        Ok(streams.into_iter().next())
    }

    async fn vs_stream_by_id(&self, id: &str) -> Result<Option<VsStream>, StoreError> {
        Ok(streams_where(&self.pool, "id = $1", &[id])
            .await?
            .into_iter()
            .next())
    }

    async fn vs_streams(
        &self,
        user_id: &str,
        f: &StreamFilter,
    ) -> Result<(Vec<VsStream>, i64), StoreError> {
        // The App filter goes through the stream's group (a stream's app is its group's).
        let filter = "s.user_id = $1 AND ($2 = '' OR s.id = $2) AND ($3 = '' OR s.group_id = $3) \
                      AND ($4 = '' OR g.app = $4) AND ($5 = '' OR s.name = $5) \
                      AND ($6 < 0 OR s.is_on = $6) AND s.created_at_ms >= $7 \
                      AND s.created_at_ms <= $8";
        let bind = binder(|query| {
            query
                .bind(user_id.to_owned())
                .bind(f.id.clone().unwrap_or_default())
                .bind(f.group_id.clone().unwrap_or_default())
                .bind(f.app.clone().unwrap_or_default())
                .bind(f.name.clone().unwrap_or_default())
                .bind(tri(f.on))
                .bind(f.created_from_ms.unwrap_or(i64::MIN))
                .bind(f.created_to_ms.unwrap_or(i64::MAX))
        });
        let from = ("vs_streams s JOIN vs_groups g ON g.id = s.group_id", "s.");
        self.vs_page(
            from,
            filter,
            bind,
            &f.page,
            (STREAM_COLUMNS, stream_from_row),
        )
        .await
    }

    async fn vs_streams_of(
        &self,
        user_id: &str,
        group_id: Option<&str>,
    ) -> Result<Vec<VsStream>, StoreError> {
        let condition = "user_id = $1 AND ($2 = '' OR group_id = $2) ORDER BY id";
        let group_id = group_id.unwrap_or_default();
        Ok(streams_where(&self.pool, condition, &[user_id, group_id]).await?)
    }

    async fn vs_change_stream(
        &self,
        user_id: &str,
        id: &str,
        c: &StreamChange,
    ) -> Result<Option<VsStream>, StoreError> {
        let done = sqlx::query(
            "UPDATE vs_streams SET enabled = CASE WHEN $1 < 0 THEN enabled ELSE $1 END, \
             forbidden = CASE WHEN $2 < 0 THEN forbidden ELSE $2 END, \
             name = CASE WHEN $3 = '' THEN name ELSE $3 END \
             WHERE user_id = $4 AND id = $5",
        )
        .bind(tri(c.enabled))
        .bind(tri(c.forbidden))
        .bind(c.name.clone().unwrap_or_default())
        .bind(user_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.vs_stream(user_id, id).await
    }

    async fn vs_add_play_key(
        &self,
        stream_id: &str,
        key: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM vs_play_keys WHERE stream_id = $1 AND expires_at_ms < $2")
            .bind(stream_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO vs_play_keys (stream_id, play_key, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id, play_key) DO UPDATE SET expires_at_ms = \
             CASE WHEN vs_play_keys.expires_at_ms > excluded.expires_at_ms \
             THEN vs_play_keys.expires_at_ms ELSE excluded.expires_at_ms END",
        )
        .bind(stream_id)
        .bind(key)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn vs_play_keys(&self, stream_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT play_key FROM vs_play_keys WHERE stream_id = $1 AND expires_at_ms >= $2 \
             ORDER BY play_key",
        )
        .bind(stream_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("play_key"))
            .collect::<Result<Vec<String>, _>>()?)
    }

    async fn vs_put_node(&self, n: &VsNode, now_ms: i64) -> Result<(), StoreError> {
        let upsert = sqlx::query(
            "INSERT INTO vs_nodes (node_id, region, rtmp_base_url, http_base_url, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node_id) DO UPDATE SET \
             region = excluded.region, rtmp_base_url = excluded.rtmp_base_url, \
             http_base_url = excluded.http_base_url, updated_at_ms = excluded.updated_at_ms",
        );
        bind!(upsert => n { node_id, region, rtmp_base_url, http_base_url })
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn vs_live_nodes(&self) -> Result<Vec<(VsNode, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id AS node_id, n.region AS region, n.rtmp_base_url AS rtmp_base_url, \
             n.http_base_url AS http_base_url, \
             (SELECT COUNT(*) FROM vs_streams s WHERE s.node_id = n.node_id) AS streams \
             FROM vs_nodes n WHERE n.rtmp_base_url <> '' ORDER BY n.node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut nodes = Vec::with_capacity(rows.len());
        for row in &rows {
            nodes.push((node_from_row(row)?, row.try_get("streams")?));
        }
        Ok(nodes)
    }

    async fn vs_node(&self, node_id: &str) -> Result<Option<VsNode>, StoreError> {
        let sql = "SELECT node_id, region, rtmp_base_url, http_base_url FROM vs_nodes \
             WHERE node_id = $1";
        self.optional_row(sql, node_id, node_from_row).await
    }

    async fn vs_node_streams(&self, node_id: &str) -> Result<Vec<VsStream>, StoreError> {
        Ok(streams_where(&self.pool, "node_id = $1 ORDER BY id", &[node_id]).await?)
    }

    async fn vs_unplaced_streams(&self) -> Result<Vec<VsStream>, StoreError> {
        Ok(streams_where(&self.pool, "node_id IS NULL ORDER BY id", &[]).await?)
    }

    async fn vs_place_stream(&self, id: &str, node_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE vs_streams SET node_id = $1 WHERE id = $2")
            .bind(node_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn vs_record_report(&self, node_id: &str, r: &StreamReport) -> Result<bool, StoreError> {
        // A report that ends a publish keeps the start it had; one that begins it clears the
        // old stop.
        let update = sqlx::query(
            "UPDATE vs_streams SET is_on = $1, codec = $2, width = $3, height = $4, \
             bitrate_bps = $5, \
             started_at_ms = CASE WHEN $6 < 0 THEN started_at_ms ELSE $6 END, \
             stopped_at_ms = CASE WHEN $7 < 0 THEN NULL ELSE $7 END \
             WHERE id = $8 AND node_id = $9",
        );
        let done = bind!(update => r {
            is_on by int, codec, width, height, bitrate_bps, started_at_ms by or_unset,
            stopped_at_ms by or_unset, stream_id
        })
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn vs_meter(&self, p: &VsPublish) -> Result<(), StoreError> {
        let upsert = sqlx::query(
            "INSERT INTO vs_publishes (publish_id, stream_id, user_id, node_id, bytes_in, \
             frames_in, started_at_ms, stopped_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (publish_id) DO UPDATE SET \
             bytes_in = CASE WHEN excluded.bytes_in > vs_publishes.bytes_in \
                THEN excluded.bytes_in ELSE vs_publishes.bytes_in END, \
             frames_in = CASE WHEN excluded.frames_in > vs_publishes.frames_in \
                THEN excluded.frames_in ELSE vs_publishes.frames_in END, \
             stopped_at_ms = CASE WHEN excluded.stopped_at_ms IS NULL \
                THEN vs_publishes.stopped_at_ms ELSE excluded.stopped_at_ms END",
        );
        bind!(upsert => p {
            publish_id, stream_id, user_id, node_id, bytes_in, frames_in, started_at_ms,
            stopped_at_ms
        })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn vs_publishes(&self, user_id: &str) -> Result<Vec<VsPublish>, StoreError> {
        let rows = sqlx::query(
            "SELECT publish_id, stream_id, user_id, node_id, bytes_in, frames_in, \
             started_at_ms, stopped_at_ms FROM vs_publishes WHERE user_id = $1 \
             ORDER BY started_at_ms, publish_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(all_rows(&rows, publish_from_row)?)
    }
}
