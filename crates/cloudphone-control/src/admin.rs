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
    if password.chars().count() < 8 {
        return Err(AdminError::Invalid(
            "password must have at least 8 characters".into(),
        ));
    }
    let store = store::open(&config.store.url).await?;
    store.migrate().await?;
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || crate::iam::hash_password(&password))
        .await
        .map_err(crate::iam::IamServiceError::from)??;
    let compact = || uuid::Uuid::new_v4().simple().to_string();
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

async fn tenant_of(store: &SqlStore, domain: &str) -> Result<String, AdminError> {
    store
        .find_tenant(domain)
        .await?
        .ok_or_else(|| AdminError::Invalid(format!("no tenant with domain {domain}")))
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, domain).await?;
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, domain).await?;
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, tenant_domain).await?;
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, tenant_domain).await?;
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, tenant_domain).await?;
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
    let store = open_store(config).await?;
    let tenant_id = tenant_of(&store, tenant_domain).await?;
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
