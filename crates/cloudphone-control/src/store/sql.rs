//! The SQL implementation of [`Store`], one dialect for SQLite and PostgreSQL via sqlx's Any driver.

use async_trait::async_trait;
use cloudphone_core::instance::{self as rules, ALL_STATES, ControlState};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{
    AccessKeyRecord, BackupState, DomainRecord, InstanceListing, InstanceQuery, InstanceRecord,
    JobRecord, KeyOwner, NewTenant, NewUser, NodeRecord, ProjectRecord, Store, StoreError,
    TaskRecord, TokenRecord, UsageRow, UserRecord,
};

/// How long a query on PostgreSQL waits for a pooled connection (including connecting)
/// before it fails.
/// Above what a loaded replica's queue takes (the 1,000-order storm over 3 replicas stays well
/// under it), far below a client's patience.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// sqlx's default, kept for SQLite.
const SQLITE_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A pool over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
}

impl SqlStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        }
        let options = AnyPoolOptions::new()
            // SQLite allows one writer; a small pool with a busy timeout avoids "database is locked".
            .max_connections(if is_sqlite { 4 } else { 16 })
            // While PostgreSQL is down, sqlx keeps retrying the connect until this timeout
            // (30 s by default), and every request waits that long: fail after
            // `ACQUIRE_TIMEOUT` instead, answered as the appendix's internal error
            // (docs/reliability.md, "PostgreSQL restarts"). A SQLite file does not go away;
            // its writers queue on the lock, so it keeps sqlx's default.
            .acquire_timeout(if is_sqlite {
                SQLITE_ACQUIRE_TIMEOUT
            } else {
                ACQUIRE_TIMEOUT
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(url).await?;
        Ok(Self { pool })
    }

    /// The row `sql` selects with its `$1` bound to `key`, read by `map`; `None` when there is
    /// no such row.
    pub(super) async fn optional_row<T>(
        &self,
        sql: &str,
        key: &str,
        map: RowMap<T>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(map).transpose()?)
    }

    /// Runs `sql` once per item, `bind` binding an item's parameters, all in one transaction:
    /// a write over several rows happens whole or not at all.
    pub(super) async fn execute_each<'q, T: Sync>(
        &self,
        sql: &'q str,
        items: &'q [T],
        bind: impl Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q> + Send + Sync,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for item in items {
            bind(sqlx::query(sql), item).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn unique_as_exists(error: sqlx::Error, what: String) -> StoreError {
    if is_unique_violation(&error) {
        StoreError::AlreadyExists(what)
    } else {
        error.into()
    }
}

/// A list column (comma-separated text) as its items.
fn list(row: &AnyRow, column: &str) -> Result<Vec<String>, sqlx::Error> {
    let text: String = row.try_get(column)?;
    Ok(text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// A list as a list column's text.
fn joined(items: &[String]) -> String {
    items.join(",")
}

/// A 0/1 column as a bool.
pub(super) fn flag(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A bool as a 0/1 column.
pub(super) fn int(value: &bool) -> i64 {
    i64::from(*value)
}

/// Reads one row as a `T`.
pub(super) type RowMap<T> = fn(&AnyRow) -> Result<T, sqlx::Error>;

/// A query with some of its parameters bound.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// A closure binding parameters, typed so it serves a query of any lifetime.
pub(super) fn binder<F: for<'q> Fn(AnyQuery<'q>) -> AnyQuery<'q>>(bind: F) -> F {
    bind
}

/// Reads a stored state name back into the enum; the only place one is parsed.
fn state_from_row(row: &AnyRow, column: &str) -> Result<ControlState, sqlx::Error> {
    let name: String = row.try_get(column)?;
    name.parse().map_err(|error| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(error),
    })
}

/// A state as its stored name.
fn state_name(state: &ControlState) -> &'static str {
    state.as_str()
}

/// One state as an SQL string literal. State names are fixed snake_case words, so quoting them
/// needs no escaping.
pub(super) fn lit(state: ControlState) -> String {
    format!("'{}'", state.as_str())
}

/// The states a rule of `cloudphone_core::instance` picks, as the body of an SQL `IN (…)`, so
/// no state list is written by hand in a statement.
pub(super) fn states_where(rule: impl Fn(ControlState) -> bool) -> String {
    ALL_STATES
        .into_iter()
        .filter(|state| rule(*state))
        .map(lit)
        .collect::<Vec<_>>()
        .join(", ")
}

fn instance_from_row(row: &AnyRow) -> Result<InstanceRecord, sqlx::Error> {
    from_row!(row => InstanceRecord {
        instance_id, tenant_id, project_id, name, order_id, node_id, sku_id, region, os, runtime,
        width, height, state_message, assign_user, period_type, period_num, created_at_ms,
        updated_at_ms;
        state by state_from_row
    })
}

/// A project's row, its parameters `(id, tenant_id, name, created_at_ms)`.
const INSERT_PROJECT: &str =
    "INSERT INTO projects (id, tenant_id, name, created_at_ms) VALUES ($1, $2, $3, $4)";

/// A user's row, its parameters `(id, tenant_id, name, password_hash, created_at_ms)`.
const INSERT_USER: &str = "INSERT INTO users (id, tenant_id, name, password_hash, created_at_ms) \
    VALUES ($1, $2, $3, $4, $5)";

const TOKEN_COLUMNS: &str =
    "token_sha256, user_id, tenant_id, project_id, issued_at_ms, expires_at_ms";

const USAGE_COLUMNS: &str = "record_id, session_id, tenant_id, instance_id, node_id, domain, \
    app, stream, codec, width, height, start_ms, end_ms, is_final, received_at_ms";

const INSTANCE_COLUMNS: &str = "i.id AS instance_id, i.tenant_id, i.project_id, i.name, i.order_id, i.node_id, \
    i.sku_id, i.region, i.os, i.runtime, i.width, i.height, i.state, i.state_message, \
    i.assign_user, i.period_type, i.period_num, i.created_at_ms, i.updated_at_ms";

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::migrator().await?.run(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(&self, t: &NewTenant) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let insert =
            sqlx::query("INSERT INTO tenants (id, domain_name, created_at_ms) VALUES ($1, $2, $3)");
        let inserted = bind!(insert => t { tenant_id, domain_name, created_at_ms })
            .execute(&mut *tx)
            .await;
        if let Err(error) = inserted {
            return Err(unique_as_exists(error, format!("domain {}", t.domain_name)));
        }
        bind!(sqlx::query(INSERT_PROJECT) => t {
            project_id, tenant_id, project_name, created_at_ms
        })
        .execute(&mut *tx)
        .await?;
        bind!(sqlx::query(INSERT_USER) => t {
            user_id, tenant_id, user_name, password_hash, created_at_ms
        })
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_tenant(&self, domain_name: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT id FROM tenants WHERE domain_name = $1";
        self.optional_row(sql, domain_name, |r| r.try_get("id"))
            .await
    }

    async fn create_user(&self, user: &NewUser) -> Result<(), StoreError> {
        bind!(sqlx::query(INSERT_USER) => user {
            user_id, tenant_id, name, password_hash, created_at_ms
        })
        .execute(&self.pool)
        .await
        .map_err(|e| unique_as_exists(e, format!("user {}", user.name)))?;
        Ok(())
    }

    async fn create_project(
        &self,
        project: &ProjectRecord,
        created_at_ms: i64,
    ) -> Result<(), StoreError> {
        bind!(sqlx::query(INSERT_PROJECT) => project { project_id, tenant_id, name })
            .bind(created_at_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_as_exists(e, format!("project {}", project.name)))?;
        Ok(())
    }

    async fn find_user(
        &self,
        domain_name: &str,
        user_name: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id AS user_id, u.name AS user_name, u.tenant_id, t.domain_name, \
                u.password_hash \
             FROM users u JOIN tenants t ON t.id = u.tenant_id \
             WHERE t.domain_name = $1 AND u.name = $2",
        )
        .bind(domain_name)
        .bind(user_name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn find_project(
        &self,
        tenant_id: &str,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<Option<ProjectRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id AS project_id, tenant_id, name FROM projects \
             WHERE tenant_id = $1 AND (name = $2 OR id = $3)",
        )
        .bind(tenant_id)
        .bind(name.unwrap_or(""))
        .bind(id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(project_from_row).transpose()?)
    }

    async fn list_projects(&self, tenant_id: &str) -> Result<Vec<ProjectRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id AS project_id, tenant_id, name FROM projects WHERE tenant_id = $1 \
             ORDER BY created_at_ms, name",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(project_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
        bind!(sqlx::query(&sql) => token {
            token_sha256, user_id, tenant_id, project_id, issued_at_ms, expires_at_ms
        })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_sha256 = $1");
        self.optional_row(&sql, token_sha256, token_from_row).await
    }

    async fn purge_expired_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE expires_at_ms < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn upsert_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        let upsert = sqlx::query(
            "INSERT INTO nodes (id, grpc_endpoint, signaling_base_url, region, capacity, runtimes, \
                encoders, version, status, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET grpc_endpoint = excluded.grpc_endpoint, \
                signaling_base_url = excluded.signaling_base_url, region = excluded.region, \
                capacity = excluded.capacity, runtimes = excluded.runtimes, \
                encoders = excluded.encoders, version = excluded.version, \
                status = excluded.status, last_seen_ms = excluded.last_seen_ms",
        );
        bind!(upsert => n {
            node_id, grpc_endpoint, signaling_base_url, region, capacity, runtimes by joined,
            encoders by joined, version, status, last_seen_ms
        })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_node_status(
        &self,
        node_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET status = $1, last_seen_ms = $2 WHERE id = $3")
            .bind(status)
            .bind(now_ms)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id AS node_id, grpc_endpoint, signaling_base_url, region, capacity, runtimes, \
                encoders, version, status, last_seen_ms FROM nodes ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(node_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn tenant_instance_count(&self, tenant_id: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    async fn instance_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        // Backed-up and queued instances (and failed restores, which the node removed again)
        // live in an archive, not on a node: they hold no slot.
        let rows = sqlx::query(&format!(
            "SELECT node_id, COUNT(*) AS n FROM instances \
             WHERE state NOT IN ({}) GROUP BY node_id",
            states_where(|state| !rules::holds_slot(state))
        ))
        .fetch_all(&self.pool)
        .await?;
        node_counts(&rows)
    }

    async fn tenant_instance_counts(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT node_id, COUNT(*) AS n FROM instances \
             WHERE tenant_id = $1 AND state NOT IN ({}) GROUP BY node_id",
            states_where(|state| !rules::holds_slot(state))
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        node_counts(&rows)
    }

    async fn insert_instances(&self, instances: &[InstanceRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_instances_in(&mut tx, instances).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_instance_state(
        &self,
        instance_id: &str,
        state: ControlState,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET state = $1, state_message = $2, updated_at_ms = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_reported_state(
        &self,
        node_id: &str,
        instance_id: &str,
        state: ControlState,
        message: &str,
        now_ms: i64,
        changed_at_ms: i64,
    ) -> Result<(), StoreError> {
        // Equal times pass: a node announcing again re-sends the change it reported last.
        sqlx::query(&format!(
            "UPDATE instances SET state = $1, state_message = $2, updated_at_ms = $3, \
                reported_at_ms = $6 \
             WHERE id = $4 AND node_id = $5 AND reported_at_ms <= $6 AND state NOT IN ({})",
            states_where(|state| !rules::node_may_overwrite(state))
        ))
        .bind(state.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(instance_id)
        .bind(node_id)
        .bind(changed_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.id = $1");
        self.optional_row(&sql, instance_id, instance_from_row)
            .await
    }

    async fn claim_stale_creations(
        &self,
        before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        // One statement: a report that moved the instance on meanwhile keeps it unclaimed.
        let ids: Vec<(String,)> = sqlx::query_as(&format!(
            "UPDATE instances SET updated_at_ms = $1 \
             WHERE state = {creating} AND updated_at_ms < $2 RETURNING id",
            creating = lit(ControlState::Creating),
        ))
        .bind(now_ms)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(record) = self.get_instance(&id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn insert_join_token(
        &self,
        token_sha256: &str,
        created_at_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_join_tokens (token_sha256, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3)",
        )
        .bind(token_sha256)
        .bind(created_at_ms)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn spend_join_token(
        &self,
        token_sha256: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let spent = sqlx::query(
            "UPDATE node_join_tokens SET used_at_ms = $1, used_by = $2 \
             WHERE token_sha256 = $3 AND used_at_ms = 0 AND expires_at_ms > $4",
        )
        // Never 0, which means unspent.
        .bind(now_ms.max(1))
        .bind(node_id)
        .bind(token_sha256)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(spent.rows_affected() == 1)
    }

    async fn node_identity(&self, node_id: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT cert_sha256 FROM node_identities WHERE node_id = $1";
        self.optional_row(sql, node_id, |r| r.try_get("cert_sha256"))
            .await
    }

    async fn pin_node_identity(
        &self,
        node_id: &str,
        cert_sha256: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_identities (node_id, cert_sha256, enrolled_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(node_id)
        .bind(cert_sha256)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_as_exists(e, format!("node {node_id}")))?;
        Ok(())
    }

    async fn revoke_node_identity(&self, node_id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM node_identities WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn set_assign_user(
        &self,
        instance_id: &str,
        user: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET assign_user = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(user.map(str::to_string))
            .bind(now_ms)
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_assign_users(
        &self,
        bindings: &[(String, Option<String>)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE instances SET assign_user = $1, updated_at_ms = $2 WHERE id = $3";
        self.execute_each(sql, bindings, |query, (instance_id, user)| {
            query.bind(user).bind(now_ms).bind(instance_id)
        })
        .await
    }

    async fn wipe_archives(
        &self,
        unbind: &[String],
        wipe: &[String],
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let archived = states_where(|state| !rules::holds_slot(state));
        let mut tx = self.pool.begin().await?;
        for instance_id in unbind {
            sqlx::query(
                "UPDATE instances SET assign_user = NULL, updated_at_ms = $1 WHERE id = $2",
            )
            .bind(now_ms)
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut uris = Vec::with_capacity(wipe.len());
        for instance_id in wipe {
            let row = sqlx::query(&format!(
                "SELECT backup_uri FROM instances WHERE id = $1 AND state IN ({archived})"
            ))
            .bind(instance_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let uri: String = row.try_get("backup_uri")?;
            // Conditional on what was read, so a restore claiming it in between (another
            // replica) makes this whole wipe a no-op rather than a half one.
            let done = sqlx::query(&format!(
                "UPDATE instances SET backup_uri = '', updated_at_ms = $1 \
                 WHERE id = $2 AND backup_uri = $3 AND state IN ({archived})"
            ))
            .bind(now_ms)
            .bind(instance_id)
            .bind(&uri)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
            uris.push(uri);
        }
        tx.commit().await?;
        Ok(Some(uris))
    }

    async fn set_instance_states(
        &self,
        instance_ids: &[String],
        state: ControlState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE instances SET state = $1, state_message = '', updated_at_ms = $2 \
                   WHERE id = $3";
        self.execute_each(sql, instance_ids, |query, instance_id| {
            query.bind(state.as_str()).bind(now_ms).bind(instance_id)
        })
        .await
    }

    async fn prepare_instances(
        &self,
        assign: &[(String, String)],
        queue: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (instance_id, user) in assign {
            // Only an unbound instance takes the user; a bound one keeps its binding.
            sqlx::query(
                "UPDATE instances SET assign_user = $1, updated_at_ms = $2 \
                 WHERE id = $3 AND assign_user IS NULL",
            )
            .bind(user)
            .bind(now_ms)
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        }
        for instance_id in queue {
            request_prepare_in(&mut tx, instance_id, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_instances(&self, instance_ids: &[String]) -> Result<(), StoreError> {
        let sql = "DELETE FROM instances WHERE id = $1";
        self.execute_each(sql, instance_ids, |query, instance_id| {
            query.bind(instance_id)
        })
        .await
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn video_config(&self, instance_id: &str) -> Result<String, StoreError> {
        let sql = "SELECT video_config FROM instances WHERE id = $1";
        let config = self.optional_row(sql, instance_id, |r| r.try_get("video_config"));
        Ok(config.await?.unwrap_or_default())
    }

    async fn set_video_config(
        &self,
        instance_ids: &[String],
        config_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE instances SET video_config = $1, updated_at_ms = $2 WHERE id = $3";
        self.execute_each(sql, instance_ids, |query, id| {
            query.bind(config_json).bind(now_ms).bind(id)
        })
        .await
    }

    async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let insert = sqlx::query(
            "INSERT INTO tasks (id, tenant_id, project_id, kind, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        );
        bind!(insert => task { task_id, tenant_id, project_id, kind, created_at_ms })
            .execute(&mut *tx)
            .await?;
        for job in &task.jobs {
            // A new job's own `task_id` may be unset: it takes the task's.
            let insert = sqlx::query(
                "INSERT INTO jobs (id, task_id, instance_id, node_id, node_job_id, status, error_code, \
                    error_msg, execute_msg, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&job.job_id)
            .bind(&task.task_id);
            bind!(insert => job {
                instance_id, node_id, node_job_id, status, error_code, error_msg, execute_msg,
                updated_at_ms
            })
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let Some(task) = sqlx::query(
            "SELECT id, tenant_id, project_id, kind, created_at_ms FROM tasks WHERE id = $1",
        )
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT id AS job_id, task_id, instance_id, node_id, node_job_id, status, error_code, \
                error_msg, execute_msg, updated_at_ms FROM jobs WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        let jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(TaskRecord {
            task_id: task.try_get("id")?,
            tenant_id: task.try_get("tenant_id")?,
            project_id: task.try_get("project_id")?,
            kind: task.try_get("kind")?,
            created_at_ms: task.try_get("created_at_ms")?,
            jobs,
        }))
    }

    async fn update_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE jobs SET node_job_id = $1, status = $2, error_code = $3, error_msg = $4, \
                execute_msg = $5, updated_at_ms = $6 WHERE id = $7",
        );
        bind!(update => job {
            node_job_id, status, error_code, error_msg, execute_msg, updated_at_ms, job_id
        })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_instances(
        &self,
        tenant_id: &str,
        q: &InstanceQuery,
    ) -> Result<(Vec<InstanceListing>, u64), StoreError> {
        // Absent filters bind as values that match everything, so one statement serves all.
        let filter = "i.tenant_id = $1 AND i.project_id = $2 AND ($3 = '' OR i.id = $3) \
                      AND ($4 = '' OR i.name = $4) \
                      AND i.created_at_ms >= $5 AND i.created_at_ms <= $6";
        let bind = binder(|query| {
            query
                .bind(tenant_id.to_owned())
                .bind(q.project_id.clone())
                .bind(q.instance_id.clone().unwrap_or_default())
                .bind(q.instance_name.clone().unwrap_or_default())
                .bind(q.created_from_ms.unwrap_or(i64::MIN))
                .bind(q.created_to_ms.unwrap_or(i64::MAX))
        });
        let count = format!("SELECT COUNT(*) AS n FROM instances i WHERE {filter}");
        let total: i64 = bind(sqlx::query(&count))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let select = format!(
            "SELECT {INSTANCE_COLUMNS}, n.status AS node_status, p.name AS project_name, \
                t.domain_name AS domain_name \
             FROM instances i JOIN nodes n ON n.id = i.node_id \
                JOIN projects p ON p.id = i.project_id JOIN tenants t ON t.id = i.tenant_id \
             WHERE {filter} ORDER BY i.created_at_ms DESC, i.id LIMIT $7 OFFSET $8"
        );
        let rows = bind(sqlx::query(&select))
            .bind(q.limit)
            .bind(q.offset)
            .fetch_all(&self.pool)
            .await?;
        let mut listings = Vec::with_capacity(rows.len());
        for row in &rows {
            listings.push(InstanceListing {
                instance: instance_from_row(row)?,
                node_status: row.try_get("node_status")?,
                project_name: row.try_get("project_name")?,
                domain_name: row.try_get("domain_name")?,
            });
        }
        Ok((listings, u64::try_from(total).unwrap_or(0)))
    }

    async fn begin_backup(
        &self,
        backups: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE instances SET state = {}, state_message = '', backup_status = 1, \
                backup_time_ms = $1, backup_uri = $2, updated_at_ms = $1 WHERE id = $3",
            lit(ControlState::BACKING_UP)
        );
        self.execute_each(&sql, backups, |query, (id, uri)| {
            query.bind(now_ms).bind(uri).bind(id)
        })
        .await
    }

    async fn finish_backup(
        &self,
        instance_id: &str,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let statement = match error {
            // Prepared while its backup ran: it goes straight into the queue.
            None => format!(
                "UPDATE instances SET state = CASE WHEN prepare_queued_at_ms IS NULL \
                    THEN {} ELSE {} END, state_message = $1, backup_status = 2, \
                    backup_time_ms = $2, updated_at_ms = $2 WHERE id = $3",
                lit(ControlState::BackedUp),
                lit(ControlState::Queued)
            ),
            Some(_) => format!(
                "UPDATE instances SET state = {}, state_message = $1, \
                    backup_status = 3, backup_time_ms = $2, prepare_queued_at_ms = NULL, \
                    updated_at_ms = $2 WHERE id = $3",
                lit(ControlState::BackupFailed)
            ),
        };
        let query = sqlx::query(&statement).bind(error.unwrap_or("").to_string());
        query
            .bind(now_ms)
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backup_state(&self, instance_id: &str) -> Result<Option<BackupState>, StoreError> {
        let sql = "SELECT id AS instance_id, state, backup_status, backup_time_ms, backup_uri, \
                restore_status, restore_time_ms, prepare_queued_at_ms FROM instances WHERE id = $1";
        self.optional_row(sql, instance_id, backup_from_row).await
    }

    async fn request_prepare(&self, instance_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(request_prepare_in(&mut conn, instance_id, now_ms).await? > 0)
    }

    async fn queued_instances(&self) -> Result<Vec<(InstanceRecord, i64)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS}, i.prepare_queued_at_ms FROM instances i \
             WHERE i.state = {} ORDER BY i.prepare_queued_at_ms, i.id",
            lit(ControlState::Queued)
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut queued = Vec::with_capacity(rows.len());
        for row in &rows {
            let since: Option<i64> = row.try_get("prepare_queued_at_ms")?;
            queued.push((instance_from_row(row)?, since.unwrap_or(0)));
        }
        Ok(queued)
    }

    async fn finish_restore(
        &self,
        instance_id: &str,
        state: ControlState,
        message: &str,
        restore_status: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET state = $1, state_message = $2, restore_status = $3, \
                restore_time_ms = $4, updated_at_ms = $4 WHERE id = $5",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(restore_status)
        .bind(now_ms)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn requeue(&self, instance_id: &str, since_ms: i64) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE instances SET state = {}, prepare_queued_at_ms = $1, restore_status = 0 \
             WHERE id = $2 AND state = {}",
            lit(ControlState::Queued),
            lit(ControlState::RESTORING)
        ))
        .bind(since_ms)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn store_usage(&self, rows: &[UsageRow]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut stored = 0;
        for r in rows {
            let sql = format!(
                "INSERT INTO usage_records ({USAGE_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (record_id) DO NOTHING",
            );
            let result = bind!(sqlx::query(&sql) => r {
                record_id, session_id, tenant_id, instance_id, node_id, domain, app, stream, codec,
                width, height, start_ms, end_ms, is_final by int, received_at_ms
            })
            .execute(&mut *tx)
            .await?;
            stored += result.rows_affected();
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn usage_between(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_records \
             WHERE tenant_id = $1 AND end_ms >= $2 AND start_ms < $3 ORDER BY start_ms",
        ))
        .bind(tenant_id)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                from_row!(row => UsageRow {
                    record_id, session_id, tenant_id, instance_id, node_id, domain, app, stream,
                    codec, width, height, start_ms, end_ms, received_at_ms;
                    is_final by flag
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn create_domain(&self, d: &DomainRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if d.is_default {
            sqlx::query("UPDATE streaming_domains SET is_default = 0 WHERE tenant_id = $1")
                .bind(&d.tenant_id)
                .execute(&mut *tx)
                .await?;
        }
        let insert = sqlx::query(
            "INSERT INTO streaming_domains (domain, tenant_id, is_default, created_at_ms, deleted_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        );
        bind!(insert => d { domain, tenant_id, is_default by int, created_at_ms, deleted_at_ms })
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_as_exists(e, format!("domain {}", d.domain)))?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_domains(&self, tenant_id: &str) -> Result<Vec<DomainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT domain, tenant_id, is_default, created_at_ms, deleted_at_ms \
             FROM streaming_domains WHERE tenant_id = $1 ORDER BY created_at_ms, domain",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                from_row!(row => DomainRecord {
                    domain, tenant_id, created_at_ms, deleted_at_ms;
                    is_default by flag
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn insert_access_key(&self, k: &AccessKeyRecord) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO access_keys (access_key, tenant_id, user_id, secret_sealed, description, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        );
        bind!(insert => k {
            access_key, tenant_id, user_id, secret_sealed, description, created_at_ms
        })
        .execute(&self.pool)
        .await
        .map_err(|e| unique_as_exists(e, "access key".to_string()))?;
        Ok(())
    }

    async fn find_access_key(
        &self,
        access_key: &str,
    ) -> Result<Option<AccessKeyRecord>, StoreError> {
        let sql = "SELECT access_key, tenant_id, user_id, secret_sealed, description, created_at_ms \
             FROM access_keys WHERE access_key = $1";
        self.optional_row(sql, access_key, access_key_from_row)
            .await
    }

    async fn list_access_keys(
        &self,
        owner: &KeyOwner<'_>,
    ) -> Result<Vec<AccessKeyRecord>, StoreError> {
        let sql = format!(
            "SELECT access_key, tenant_id, user_id, secret_sealed, description, created_at_ms \
             FROM access_keys WHERE tenant_id = $1{} ORDER BY created_at_ms, access_key",
            owner_clause(owner, 2)
        );
        let mut query = sqlx::query(&sql).bind(owner.tenant_id);
        if let Some(user_id) = owner.user_id {
            query = query.bind(user_id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(access_key_from_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn delete_access_key(
        &self,
        owner: &KeyOwner<'_>,
        access_key: &str,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "DELETE FROM access_keys WHERE access_key = $1 AND tenant_id = $2{}",
            owner_clause(owner, 3)
        );
        let mut query = sqlx::query(&sql).bind(access_key).bind(owner.tenant_id);
        if let Some(user_id) = owner.user_id {
            query = query.bind(user_id);
        }
        Ok(query.execute(&self.pool).await?.rows_affected() > 0)
    }

    async fn reseal_access_key(
        &self,
        access_key: &str,
        old_sealed: &str,
        new_sealed: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE access_keys SET secret_sealed = $1 WHERE access_key = $2 AND secret_sealed = $3",
        )
        .bind(new_sealed)
        .bind(access_key)
        .bind(old_sealed)
        .execute(&self.pool)
        .await?;
        // The access key is the primary key: one row at most.
        Ok(result.rows_affected() == 1)
    }
}

/// The `user_id` condition of an access-key query when the owner is one user (`$n` is its
/// placeholder); nothing when it is the whole tenant.
fn owner_clause(owner: &KeyOwner<'_>, n: usize) -> String {
    match owner.user_id {
        Some(_) => format!(" AND user_id = ${n}"),
        None => String::new(),
    }
}

/// Queues one instance for restoring (see [`Store::request_prepare`]) on a connection or inside
/// a transaction; returns the rows changed.
async fn request_prepare_in(
    conn: &mut sqlx::AnyConnection,
    instance_id: &str,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    // One still backing up keeps that state; `finish_backup` queues it when it ends.
    let done = sqlx::query(&format!(
        "UPDATE instances SET prepare_queued_at_ms = COALESCE(prepare_queued_at_ms, $1), \
                state = CASE WHEN state = {} THEN state ELSE {} END, \
                updated_at_ms = $1 \
             WHERE id = $2 AND state IN ({})",
        lit(ControlState::BACKING_UP),
        lit(ControlState::Queued),
        states_where(rules::may_prepare)
    ))
    .bind(now_ms)
    .bind(instance_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Writes instance rows on a connection or inside a transaction (an order's, or a placement's
/// under its slot locks: `store::placement`).
pub(super) async fn insert_instances_in(
    conn: &mut sqlx::AnyConnection,
    instances: &[InstanceRecord],
) -> Result<(), sqlx::Error> {
    for i in instances {
        let insert = sqlx::query(
            "INSERT INTO instances (id, tenant_id, project_id, name, order_id, node_id, sku_id, \
                    region, os, runtime, width, height, state, state_message, assign_user, \
                    period_type, period_num, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        );
        bind!(insert => i {
            instance_id, tenant_id, project_id, name, order_id, node_id, sku_id, region, os,
            runtime, width, height, state by state_name, state_message, assign_user,
            period_type, period_num, created_at_ms, updated_at_ms
        })
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `(node_id, n)` rows of a `GROUP BY node_id` count.
pub(super) fn node_counts(rows: &[AnyRow]) -> Result<Vec<(String, i64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get("node_id")?, row.try_get("n")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

fn project_from_row(row: &AnyRow) -> Result<ProjectRecord, sqlx::Error> {
    from_row!(row => ProjectRecord { project_id, tenant_id, name })
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord, sqlx::Error> {
    from_row!(row => UserRecord { user_id, user_name, tenant_id, domain_name, password_hash })
}

fn access_key_from_row(row: &AnyRow) -> Result<AccessKeyRecord, sqlx::Error> {
    from_row!(row => AccessKeyRecord {
        access_key, tenant_id, user_id, secret_sealed, description, created_at_ms
    })
}

fn node_from_row(row: &AnyRow) -> Result<NodeRecord, sqlx::Error> {
    from_row!(row => NodeRecord {
        node_id, grpc_endpoint, signaling_base_url, region, capacity, version, status, last_seen_ms;
        runtimes by list, encoders by list
    })
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, sqlx::Error> {
    from_row!(row => JobRecord {
        job_id, task_id, instance_id, node_id, node_job_id, status, error_code, error_msg,
        execute_msg, updated_at_ms
    })
}

fn backup_from_row(row: &AnyRow) -> Result<BackupState, sqlx::Error> {
    from_row!(row => BackupState {
        instance_id, backup_status, backup_time_ms, backup_uri, restore_status, restore_time_ms,
        prepare_queued_at_ms;
        state by state_from_row
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, sqlx::Error> {
    from_row!(row => TokenRecord {
        token_sha256, user_id, tenant_id, project_id, issued_at_ms, expires_at_ms
    })
}
