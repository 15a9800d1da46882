//! The operator CLI: creating tenants (domain + first user + first project), and further users
//! and projects of a tenant, straight in the store.

use serde::Serialize;

use crate::config::ControlConfig;
use crate::store::{
    self, KeyOwner, NewTenant, NewUser, ProjectRecord, SqlStore, Store, StoreError,
};

/// What `tenant create` prints, as one JSON line.
#[derive(Debug, Serialize)]
pub struct TenantCreated {
    pub tenant_id: String,
    pub domain: String,
    pub user: String,
    pub user_id: String,
    pub project_id: String,
    pub project: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Iam(#[from] crate::iam::IamServiceError),
    #[error("{0}")]
    Invalid(String),
}

fn check_name(what: &str, value: &str) -> Result<(), AdminError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{what} must be 1-64 characters of [A-Za-z0-9-_.@]"
        )))
    }
}

/// Creates a tenant with its first user and project.
pub async fn create_tenant(
    config: &ControlConfig,
    domain: &str,
    user: &str,
    password: &str,
    project: &str,
) -> Result<TenantCreated, AdminError> {
    check_name("domain", domain)?;
    check_name("user", user)?;
    check_name("project", project)?;
    let hash = hash_new_password(password).await?;
    let store = open_store(config).await?;
    let tenant = NewTenant {
        tenant_id: compact(),
        domain_name: domain.into(),
        user_id: compact(),
        user_name: user.into(),
        password_hash: hash,
        project_id: compact(),
        project_name: project.into(),
        created_at_ms: crate::unix_ms(),
    };
    store.create_tenant(&tenant).await?;
    Ok(TenantCreated {
        tenant_id: tenant.tenant_id,
        domain: tenant.domain_name,
        user: tenant.user_name,
        user_id: tenant.user_id,
        project_id: tenant.project_id,
        project: tenant.project_name,
    })
}

fn compact() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn open_store(config: &ControlConfig) -> Result<SqlStore, AdminError> {
    let store = store::open(&config.store.url).await?;
    store.migrate().await?;
    Ok(store)
}

async fn hash_new_password(password: &str) -> Result<String, AdminError> {
    if password.chars().count() < 8 {
        return Err(AdminError::Invalid(
            "password must have at least 8 characters".into(),
        ));
    }
    let password = password.to_string();
    Ok(
        tokio::task::spawn_blocking(move || crate::iam::hash_password(&password))
            .await
            .map_err(crate::iam::IamServiceError::from)??,
    )
}

/// The store, and the id of the tenant whose IAM domain is `domain`.
async fn open_tenant(
    config: &ControlConfig,
    domain: &str,
) -> Result<(SqlStore, String), AdminError> {
    let store = open_store(config).await?;
    let tenant_id = store
        .find_tenant(domain)
        .await?
        .ok_or_else(|| AdminError::Invalid(format!("no tenant with domain {domain}")))?;
    Ok((store, tenant_id))
}

/// What `user create` prints.
#[derive(Debug, Serialize)]
pub struct UserCreated {
    pub tenant_id: String,
    pub domain: String,
    pub user: String,
    pub user_id: String,
}

/// Adds a user to an existing tenant.
pub async fn create_user(
    config: &ControlConfig,
    domain: &str,
    user: &str,
    password: &str,
) -> Result<UserCreated, AdminError> {
    check_name("user", user)?;
    let hash = hash_new_password(password).await?;
    let (store, tenant_id) = open_tenant(config, domain).await?;
    let record = NewUser {
        user_id: compact(),
        tenant_id: tenant_id.clone(),
        name: user.into(),
        password_hash: hash,
        created_at_ms: crate::unix_ms(),
    };
    store.create_user(&record).await?;
    Ok(UserCreated {
        tenant_id,
        domain: domain.into(),
        user: record.name,
        user_id: record.user_id,
    })
}

/// What `project create` prints.
#[derive(Debug, Serialize)]
pub struct ProjectCreated {
    pub tenant_id: String,
    pub domain: String,
    pub project: String,
    pub project_id: String,
}

/// Adds a project to an existing tenant.
pub async fn create_project(
    config: &ControlConfig,
    domain: &str,
    project: &str,
) -> Result<ProjectCreated, AdminError> {
    check_name("project", project)?;
    let (store, tenant_id) = open_tenant(config, domain).await?;
    let record = ProjectRecord {
        project_id: compact(),
        tenant_id: tenant_id.clone(),
        name: project.into(),
    };
    store.create_project(&record, crate::unix_ms()).await?;
    Ok(ProjectCreated {
        tenant_id,
        domain: domain.into(),
        project: record.name,
        project_id: record.project_id,
    })
}

/// Adds a streaming domain to a tenant (`--default` makes cloud-phone sessions bill under it).
pub async fn create_domain(
    config: &ControlConfig,
    tenant_domain: &str,
    streaming_domain: &str,
    is_default: bool,
) -> Result<serde_json::Value, AdminError> {
    let valid = !streaming_domain.is_empty()
        && streaming_domain.len() <= 253
        && streaming_domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
    if !valid {
        return Err(AdminError::Invalid(
            "a streaming domain is 1-253 characters of [A-Za-z0-9-.]".into(),
        ));
    }
    let (store, tenant_id) = open_tenant(config, tenant_domain).await?;
    store
        .create_domain(&store::DomainRecord {
            domain: streaming_domain.to_ascii_lowercase(),
            tenant_id: tenant_id.clone(),
            is_default,
            created_at_ms: crate::unix_ms(),
            deleted_at_ms: None,
        })
        .await?;
    Ok(
        serde_json::json!({"tenant_id": tenant_id, "domain": streaming_domain.to_ascii_lowercase(), "default": is_default}),
    )
}

/// A tenant's streaming domains, deleted ones included.
pub async fn list_domains(
    config: &ControlConfig,
    tenant_domain: &str,
) -> Result<serde_json::Value, AdminError> {
    let (store, tenant_id) = open_tenant(config, tenant_domain).await?;
    let domains = store.list_domains(&tenant_id).await?;
    Ok(
        serde_json::json!({"domains": domains.iter().map(|d| serde_json::json!({
        "domain": d.domain, "default": d.is_default, "deleted": d.deleted_at_ms.is_some(),
    })).collect::<Vec<_>>()}),
    )
}

/// Creates an AK/SK pair for a tenant's user; the secret is printed once.
pub async fn create_access_key(
    config: &ControlConfig,
    tenant_domain: &str,
    user: &str,
) -> Result<serde_json::Value, AdminError> {
    let store = open_store(config).await?;
    let found = store
        .find_user(tenant_domain, user)
        .await?
        .ok_or_else(|| AdminError::Invalid(format!("no user {user} in {tenant_domain}")))?;
    let sealer =
        crate::usage::secret_box(config).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let (record, secret) = crate::usage::create_access_key(
        &store,
        sealer,
        &found.tenant_id,
        &found.user_id,
        "created by the admin CLI",
        crate::unix_ms(),
    )
    .await
    .map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(
        serde_json::json!({"access": record.access_key, "secret": secret, "user_id": record.user_id}),
    )
}

/// A tenant's access keys, without secrets.
pub async fn list_access_keys(
    config: &ControlConfig,
    tenant_domain: &str,
) -> Result<serde_json::Value, AdminError> {
    let (store, tenant_id) = open_tenant(config, tenant_domain).await?;
    let keys = store
        .list_access_keys(&KeyOwner {
            tenant_id: &tenant_id,
            user_id: None,
        })
        .await?;
    Ok(
        serde_json::json!({"credentials": keys.iter().map(|k| serde_json::json!({
        "access": k.access_key, "user_id": k.user_id, "description": k.description,
    })).collect::<Vec<_>>()}),
    )
}

/// Deletes one of a tenant's access keys.
pub async fn delete_access_key(
    config: &ControlConfig,
    tenant_domain: &str,
    access_key: &str,
) -> Result<serde_json::Value, AdminError> {
    let (store, tenant_id) = open_tenant(config, tenant_domain).await?;
    let deleted = store
        .delete_access_key(
            &KeyOwner {
                tenant_id: &tenant_id,
                user_id: None,
            },
            access_key,
        )
        .await?;
    Ok(serde_json::json!({"deleted": deleted}))
}

/// Every node control knows with its last recorded status (`"up"`/`"down"`), for operators:
/// `{"nodes": [{"node_id", "status", "region", "capacity", "runtimes", "encoders", "version"}]}`.
pub async fn list_nodes(config: &ControlConfig) -> Result<serde_json::Value, AdminError> {
    let store = open_store(config).await?;
    let nodes = store.list_nodes().await?;
    Ok(
        serde_json::json!({"nodes": nodes.iter().map(|n| serde_json::json!({
        "node_id": n.node_id, "status": n.status, "region": n.region, "capacity": n.capacity,
        "runtimes": n.runtimes, "encoders": n.encoders, "version": n.version,
    })).collect::<Vec<_>>()}),
    )
}

/// The longest a join token may live: it is a credential, meant to be used within minutes.
const MAX_JOIN_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Reads a TTL such as `90s`, `30m`, `1h` or `2d`.
pub fn parse_ttl(text: &str) -> Result<std::time::Duration, AdminError> {
    let invalid = || AdminError::Invalid(format!("ttl {text:?}: expected e.g. 30m, 1h, 2d"));
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let secs = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(invalid()),
    };
    let ttl = std::time::Duration::from_secs(secs);
    if ttl.is_zero() || ttl > MAX_JOIN_TTL {
        return Err(AdminError::Invalid(format!(
            "ttl {text:?}: must be positive and at most 7d"
        )));
    }
    Ok(ttl)
}

fn load_ca(config: &ControlConfig) -> Result<crate::pki::Ca, AdminError> {
    let cwd = std::env::current_dir().map_err(|e| AdminError::Invalid(e.to_string()))?;
    crate::pki::Ca::load_or_create(&crate::pki::ca_dir(config, &cwd))
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

/// Mints a single-use join token for one node, valid for `ttl`:
/// `{"join_token": "cpj1.<secret>.<ca sha256>", "expires_at_ms": …}`. The node's config takes
/// it as `[control].join_token`; it is spent by the node's first enrollment.
pub async fn create_join_token(
    config: &ControlConfig,
    ttl: std::time::Duration,
) -> Result<serde_json::Value, AdminError> {
    let ca = load_ca(config)?;
    let store = open_store(config).await?;
    let now_ms = crate::unix_ms();
    let token = crate::node_api::mint_join_token(&store, ca.fingerprint(), now_ms, ttl).await?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Ok(serde_json::json!({
        "join_token": token.to_string(),
        "expires_at_ms": now_ms.saturating_add(ttl_ms),
    }))
}

/// Unpins a node id from its certificate, so it can enroll again (with a new join token);
/// until then the old certificate can no longer announce the id.
pub async fn revoke_node(
    config: &ControlConfig,
    node_id: &str,
) -> Result<serde_json::Value, AdminError> {
    let store = open_store(config).await?;
    let revoked = store.revoke_node_identity(node_id).await?;
    Ok(serde_json::json!({"node_id": node_id, "revoked": revoked}))
}

/// Writes a control-role client certificate and key (`control.pem`, `control.key`, 0600) and
/// the CA (`ca.pem`) into `out`, for operators' tools calling `ControlPlane.ListNodes` or a
/// node directly. Whoever holds them can act as control: keep them as safe as the CA.
pub fn issue_control_cert(
    config: &ControlConfig,
    out: &std::path::Path,
) -> Result<serde_json::Value, AdminError> {
    use std::os::unix::fs::OpenOptionsExt;
    let ca = load_ca(config)?;
    let issued = ca
        .issue_control()
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|e| AdminError::Invalid(e.to_string()))?;
    for (name, text) in [
        ("control.pem", issued.cert_pem.as_str()),
        ("control.key", issued.key_pem.as_str()),
        ("ca.pem", ca.cert_pem()),
    ] {
        let path = out.join(name);
        let _ = std::fs::remove_file(&path);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
        written.map_err(|e| AdminError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(serde_json::json!({"dir": out.display().to_string()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_durations_and_stay_short() {
        assert_eq!(parse_ttl("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_ttl("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_ttl("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_ttl("7d").unwrap().as_secs(), 7 * 86_400);
        for bad in ["", "1", "h", "0h", "8d", "1w", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
