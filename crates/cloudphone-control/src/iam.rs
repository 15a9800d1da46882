//! IAM: password logins that issue project- or domain-scoped tokens, and who every API call is
//! from: an `X-Auth-Token`, or an AK/SK `SDK-HMAC-SHA256` signature (the one verifier the
//! CloudDevice, IAM and Huawei Live routes share: [`identify_token`], [`identify_signed`]).
//!
//! Passwords are kept as argon2 hashes and tokens as SHA-256 digests, so the database holds
//! nothing that logs in. Neither a password, a token nor a secret key is ever logged.
//!
//! Logins are guarded ([`LoginGuard`]): at most `[iam] argon2_concurrency` password checks run
//! at once (the rest wait `login_queue_timeout_ms`, then get 429), and wrong passwords lock the
//! user and the client address out for a growing time (`cloudphone_core::login_backoff`).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cloudphone_api::iam::{
    IdName, LoginScope, PasswordLogin, TokenBody, TokenProject, TokenResponse, TokenUser,
};
use cloudphone_api::timefmt;
use cloudphone_usage::sign::{self, RequestParts};
use rand::RngCore;
use sha2::{Digest, Sha256};

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use cloudphone_core::login_backoff::LoginBackoff;

use crate::AppState;
use crate::clock::Clock;
use crate::config::IamConfig;
use crate::store::{AccessKeyRecord, ProjectRecord, Store, StoreError, TokenRecord};

/// What stands between a password guesser and argon2: a bounded pool of password checks and
/// the per-user and per-address backoff. One per control process; replicas on PostgreSQL count
/// the backoff together in the database.
#[derive(Debug)]
pub(crate) struct LoginGuard {
    /// One permit per password check allowed to run at once; the check's blocking task holds
    /// it, so a caller that goes away mid-check does not free its slot early.
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
    /// How long a login may wait for a permit.
    queue_timeout: Duration,
    /// Wrong passwords per key, and the locks they earned.
    backoff: Mutex<LoginBackoff>,
    /// Set for replicas on PostgreSQL: the failures are counted in the database
    /// (`store::LimitStore`) by these rules, so every replica sees every failure.
    shared: Option<cloudphone_core::login_backoff::BackoffRules>,
}

impl LoginGuard {
    pub(crate) fn new(config: &IamConfig) -> Self {
        let permits = match config.argon2_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)),
            queue_timeout: Duration::from_millis(config.login_queue_timeout_ms),
            backoff: Mutex::new(LoginBackoff::new(config.backoff_rules())),
            shared: None,
        }
    }

    /// The same guard with its backoff counted in the database (`shared`: control replicas on
    /// PostgreSQL) rather than in this process.
    pub(crate) fn shared_in_database(mut self, config: &IamConfig, shared: bool) -> Self {
        self.shared = shared.then(|| config.backoff_rules());
        self
    }

    /// How long the longest lock among `keys` still runs at `now_ms`.
    async fn locked_for(
        &self,
        store: &dyn Store,
        keys: &[String],
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        match self.shared {
            Some(_) => store.login_locked(keys, now_ms).await,
            None => Ok(self
                .backoff()
                .check(keys.iter().map(String::as_str), now_ms)),
        }
    }

    /// Records a wrong password against `keys`.
    async fn failed(
        &self,
        store: &dyn Store,
        keys: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.shared {
            Some(rules) => store.login_failed(keys, rules, now_ms).await,
            None => {
                self.backoff()
                    .failed(keys.iter().map(String::as_str), now_ms);
                Ok(())
            }
        }
    }

    /// A right password: the user's key starts again from zero.
    async fn succeeded(&self, store: &dyn Store, key: &str) -> Result<(), StoreError> {
        match self.shared {
            Some(_) => store.login_succeeded(key).await,
            None => {
                self.backoff().succeeded(key);
                Ok(())
            }
        }
    }

    /// Holds one password-check slot, as a running check does (tests fill the pool with it).
    #[cfg(test)]
    pub(crate) async fn take_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        std::sync::Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .expect("the pool is never closed")
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, LoginBackoff> {
        // The backoff's state stays consistent even if a holder panicked: take it back.
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The backoff keys of a login: its user (domain and name as given, case-folded so `Dev`
/// and `dev` share one count) and, when known, the client's address.
fn backoff_keys(login: &PasswordLogin, peer: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!(
        "user:{}\u{0}{}",
        login.domain.to_lowercase(),
        login.user.to_lowercase()
    )];
    if let Some(ip) = peer {
        keys.push(format!("addr:{ip}"));
    }
    keys
}

/// Who a project-level call (every CloudDevice operation) acts for: a user of a tenant, in
/// one of the tenant's projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub tenant_id: String,
    pub user_id: String,
    pub project_id: String,
}

/// What an authenticated call may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One project of the caller's tenant (checked to be the tenant's).
    Project(String),
    /// The tenant as a whole: a domain-scoped token, or a signed call naming no project.
    /// Enough for IAM calls (listing projects, the caller's keys), never for a project's
    /// resources.
    Domain,
}

/// Who an API call is from, by token or by signature, and what it is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub tenant_id: String,
    pub user_id: String,
    pub scope: Scope,
}

impl Identity {
    /// The caller as a project-level principal; `None` when it is domain-scoped.
    pub(crate) fn in_project(self) -> Option<Principal> {
        match self.scope {
            Scope::Project(project_id) => Some(Principal {
                tenant_id: self.tenant_id,
                user_id: self.user_id,
                project_id,
            }),
            Scope::Domain => None,
        }
    }
}

/// Why a call's caller could not be established. Each API answers these with its own codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallerError {
    /// No token and no signature; an unknown or expired token; a malformed, stale or wrong
    /// signature, or one by an unknown key. The reason is for the log and the message; it
    /// never holds a secret.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the project (or domain) the call names is not the caller's.
    #[error("the project or domain named is not the caller's")]
    NotPermitted,
    /// Control's own failure (store, sealed secrets); details are logged where it happened.
    #[error("internal error")]
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum IamServiceError {
    #[error("wrong domain, user, password or project")]
    WrongCredentials,
    #[error("token missing, unknown or expired")]
    InvalidToken,
    /// Too many wrong passwords for this user or address, or every password check is busy:
    /// try again in `retry_after_ms`.
    #[error("too many login attempts; retry in {retry_after_ms} ms")]
    TooManyAttempts { retry_after_ms: i64 },
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Hashes a password with argon2id and a random salt.
pub(crate) fn hash_password(password: &str) -> Result<String, IamServiceError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IamServiceError::Hash(e.to_string()))
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new random token: 32 bytes from the OS, hex, with a recognisable prefix.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("CPT1{}", hex::encode(bytes))
}

/// The digest tokens are stored and looked up by.
pub(crate) fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Logs a user in from `peer` and issues a token valid for `ttl_ms`. Returns the token and the
/// body. Refused without a password check while the user or the address is locked out.
pub(crate) async fn login(
    store: &dyn Store,
    guard: &LoginGuard,
    clock: &Clock,
    login: PasswordLogin,
    peer: Option<IpAddr>,
    ttl_ms: i64,
) -> Result<(String, TokenResponse), IamServiceError> {
    let keys = backoff_keys(&login, peer);
    let locked = |found: Option<i64>| {
        found.map_or(Ok(()), |retry_after_ms| {
            Err(IamServiceError::TooManyAttempts { retry_after_ms })
        })
    };
    locked(guard.locked_for(store, &keys, clock.now_ms()).await?)?;
    let acquire = std::sync::Arc::clone(&guard.hashing).acquire_owned();
    let permit = match tokio::time::timeout(guard.queue_timeout, acquire).await {
        Ok(Ok(permit)) => permit,
        // Every check stayed busy (or the pool is closed): the client retries shortly.
        _ => {
            return Err(IamServiceError::TooManyAttempts {
                retry_after_ms: 1_000,
            });
        }
    };
    // Checked again with the permit: attempts that queued together must not all get through
    // on a count taken before the first of them failed.
    locked(guard.locked_for(store, &keys, clock.now_ms()).await?)?;
    let user = store.find_user(&login.domain, &login.user).await?;
    // Verify even for unknown users, against a fixed hash, so timing does not reveal which users exist.
    let (hash, user) = match user {
        Some(user) => (user.password_hash.clone(), Some(user)),
        None => (DUMMY_HASH.to_string(), None),
    };
    let password = login.password.clone();
    let matches = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verify_password(&password, &hash)
    })
    .await?;
    let user = match (matches, user) {
        (true, Some(user)) => user,
        _ => {
            guard.failed(store, &keys, clock.now_ms()).await?;
            return Err(IamServiceError::WrongCredentials);
        }
    };
    if let Some(user_key) = keys.first() {
        guard.succeeded(store, user_key).await?;
    }
    let now_ms = clock.now_ms();
    // A project scope names one of the user's tenant's projects; a domain scope the user's own
    // domain (no other is reachable: the seeds grant no cross-account access).
    let project = match &login.scope {
        LoginScope::Project { name, id } => Some(
            store
                .find_project(&user.tenant_id, name.as_deref(), id.as_deref())
                .await?
                .ok_or(IamServiceError::WrongCredentials)?,
        ),
        LoginScope::Domain { name, id } => {
            let own = name.as_deref() == Some(user.domain_name.as_str())
                || id.as_deref() == Some(user.tenant_id.as_str());
            if !own {
                return Err(IamServiceError::WrongCredentials);
            }
            None
        }
    };
    let token = new_token();
    let expires_at_ms = now_ms + ttl_ms;
    store
        .insert_token(&TokenRecord {
            token_sha256: token_digest(&token),
            user_id: user.user_id.clone(),
            tenant_id: user.tenant_id.clone(),
            project_id: project.as_ref().map(|p| p.project_id.clone()),
            issued_at_ms: now_ms,
            expires_at_ms,
        })
        .await?;
    let domain = IdName {
        id: user.tenant_id.clone(),
        name: user.domain_name.clone(),
    };
    let body = TokenResponse {
        token: TokenBody {
            expires_at: timefmt::format_iam(expires_at_ms),
            issued_at: timefmt::format_iam(now_ms),
            methods: vec!["password".into()],
            user: TokenUser {
                id: user.user_id,
                name: user.user_name,
                domain: domain.clone(),
            },
            domain: project.is_none().then(|| domain.clone()),
            project: project.map(|project| TokenProject {
                id: project.project_id,
                name: project.name,
                domain,
            }),
            catalog: Vec::new(),
        },
    };
    Ok((token, body))
}

/// Resolves a presented token to who it is for, refusing unknown and expired ones.
pub(crate) async fn authenticate(
    store: &dyn Store,
    token: &str,
    now_ms: i64,
) -> Result<Identity, IamServiceError> {
    if token.is_empty() || token.len() > 512 {
        return Err(IamServiceError::InvalidToken);
    }
    match store.find_token(&token_digest(token)).await? {
        Some(record) if record.expires_at_ms > now_ms => Ok(Identity {
            tenant_id: record.tenant_id,
            user_id: record.user_id,
            scope: record.project_id.map_or(Scope::Domain, Scope::Project),
        }),
        _ => Err(IamServiceError::InvalidToken),
    }
}

/// The caller behind an `X-Auth-Token`, on the state's clock.
pub(crate) async fn identify_token(state: &AppState, token: &str) -> Result<Identity, CallerError> {
    match authenticate(state.store.as_ref(), token, state.clock.now_ms()).await {
        Ok(identity) => Ok(identity),
        Err(IamServiceError::InvalidToken | IamServiceError::WrongCredentials) => Err(
            CallerError::Unauthenticated("token missing, unknown or expired".into()),
        ),
        Err(error) => {
            tracing::error!(%error, "token check failed");
            Err(CallerError::Internal)
        }
    }
}

/// An AK's record and its unsealed secret; `None` when the AK is unknown. A store or
/// sealing-key failure is logged and answered `Err(())`: the fault is control's, not the
/// caller's.
pub(crate) async fn access_key(
    state: &AppState,
    ak: &str,
) -> Result<Option<(AccessKeyRecord, String)>, ()> {
    let record = match state.store.find_access_key(ak).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(error) => {
            tracing::error!(%error, "access key lookup failed");
            return Err(());
        }
    };
    let sealer = crate::usage::secret_box(&state.config).map_err(|error| {
        tracing::error!(%error, "secrets key unavailable");
    })?;
    match crate::usage::open_access_key(state.store.as_ref(), sealer, &record).await {
        Ok(secret) => Ok(Some((record, secret))),
        Err(error) => {
            tracing::error!(%error, "access key secret could not be unsealed");
            Err(())
        }
    }
}

/// A header's value, when present and not blank, which must then be among the signed headers:
/// a scope taken from an unsigned header could be changed by anyone replaying the request.
fn signed_header<'a>(
    request: &'a RequestParts<'_>,
    auth: &sign::huawei::Authorization,
    name: &'static str,
) -> Result<Option<&'a str>, CallerError> {
    let Some(value) = request
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if !auth.signed_headers.iter().any(|h| h == name) {
        return Err(CallerError::Unauthenticated(format!(
            "header {name} must be signed"
        )));
    }
    Ok(Some(value))
}

/// The caller behind a Huawei AK/SK signature (`Authorization: SDK-HMAC-SHA256 …` with
/// `X-Sdk-Date`, as huaweicloudsdkcore's `Signer` makes it), verified over the request exactly
/// as received, within 15 minutes of the state's clock.
///
/// An AK belongs to a user of a tenant, not to a project: the project the call acts in is the
/// one its route names (`path_project`, e.g. Huawei Live's `/v2/{project_id}/…`), else its
/// signed `X-Project-Id` (what `BasicCredentials` sends); both given must agree. The project
/// must be the key's tenant's, else [`CallerError::NotPermitted`], exactly as for one that
/// exists nowhere. A call naming no project is domain-scoped (a signed `X-Domain-Id`, what
/// `GlobalCredentials` sends, must then be the key's tenant).
pub(crate) async fn identify_signed(
    state: &AppState,
    request: &RequestParts<'_>,
    path_project: Option<&str>,
) -> Result<Identity, CallerError> {
    if !sign::names_algorithm(request, sign::huawei::ALGORITHM) {
        return Err(CallerError::Unauthenticated(
            "neither X-Auth-Token nor an SDK-HMAC-SHA256 signature".into(),
        ));
    }
    let unauthenticated = |e: sign::SignError| CallerError::Unauthenticated(e.to_string());
    let auth = sign::huawei::parse(request).map_err(unauthenticated)?;
    let (key, secret) = access_key(state, &auth.access_key)
        .await
        .map_err(|()| CallerError::Internal)?
        .ok_or_else(|| CallerError::Unauthenticated("unknown access key".into()))?;
    sign::huawei::verify(request, &auth, &secret, state.clock.now_ms()).map_err(unauthenticated)?;
    let header_project = signed_header(request, &auth, "x-project-id")?;
    let header_domain = signed_header(request, &auth, "x-domain-id")?;
    if header_domain.is_some_and(|d| d != key.tenant_id) {
        return Err(CallerError::NotPermitted);
    }
    let project = match (path_project, header_project) {
        (Some(path), Some(header)) if path != header => return Err(CallerError::NotPermitted),
        (path, header) => path.or(header),
    };
    let scope = match project {
        None => Scope::Domain,
        Some(project) => match state
            .store
            .find_project(&key.tenant_id, None, Some(project))
            .await
        {
            Ok(Some(found)) => Scope::Project(found.project_id),
            Ok(None) => return Err(CallerError::NotPermitted),
            Err(error) => {
                tracing::error!(%error, "project lookup failed");
                return Err(CallerError::Internal);
            }
        },
    };
    Ok(Identity {
        tenant_id: key.tenant_id,
        user_id: key.user_id,
        scope,
    })
}

/// The projects a caller may scope to (IAM's KeystoneListAuthProjects): every project of its
/// tenant, whatever the caller's own scope.
pub(crate) async fn list_projects(
    state: &AppState,
    identity: &Identity,
) -> Result<Vec<ProjectRecord>, StoreError> {
    state.store.list_projects(&identity.tenant_id).await
}

/// An argon2id hash of a random password nobody knows, used to equalise login timing.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0CA5lkDXPp4wz1oGcsa7xdL8rTNvaGZVXNjX9RaNb1U";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert_ne!(a, b, "salted");
        assert!(verify_password("s3cret", &a));
        assert!(!verify_password("S3cret", &a));
        assert!(!verify_password("s3cret", "not a hash"));
        assert!(!verify_password("anything", DUMMY_HASH));
    }

    #[test]
    fn tokens_are_random_and_digested() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(token_digest(&a).len(), 64);
        assert_ne!(token_digest(&a), a);
    }
}
