//! StartSession grants: who may watch which instance, checked at hello (see the module docs of
//! [`super`]), kept bounded per instance, and revoked by ReleaseSession.

use std::collections::HashMap;

use cloudphone_core::role::Role;
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{ByeReason, ErrorCode};
use sha2::{Digest, Sha256};

use super::Sessions;

/// Unexpired grants kept per instance: every GetDeviceToken adds one, and only the newest few
/// can matter (a viewer uses its grant once, at hello). Bounds the node's memory however often
/// a tenant asks for tokens.
pub(crate) const MAX_GRANTS_PER_INSTANCE: usize = 64;

/// Why StartSession was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("device_token_sha256 must be 64 hex digits")]
    BadDigest,
    #[error("device_id must be 1-64 characters of [A-Za-z0-9-_.:]")]
    BadDeviceId,
    #[error("expires_at_unix_ms is in the past")]
    AlreadyExpired,
    #[error("instance {0} not found")]
    UnknownInstance(String),
    #[error("role {0} is not a ViewerRole")]
    BadRole(i32),
    /// A renewal for a device without a live grant for that token, instance, tenant and role.
    #[error("no live grant of this device for that token")]
    NoLiveGrant,
}

/// An authorised session (StartSession).
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub session_id: String,
    pub instance_id: String,
    pub device_id: String,
    pub(super) token_sha256: [u8; 32],
    pub expires_at_unix_ms: i64,
    pub tenant_id: String,
    /// Whether the grant's viewers may send input (an observer's is refused and counted).
    pub role: Role,
}

impl Grant {
    /// A grant as the grant file kept it ([`super::grant_file`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn restored(
        session_id: String,
        instance_id: String,
        device_id: String,
        token_sha256: [u8; 32],
        expires_at_unix_ms: i64,
        tenant_id: String,
        role: Role,
    ) -> Grant {
        Grant {
            session_id,
            instance_id,
            device_id,
            token_sha256,
            expires_at_unix_ms,
            tenant_id,
            role,
        }
    }

    /// Whether `device_token` is the token this grant was made for (its SHA-256 compared in
    /// constant time).
    pub(crate) fn token_matches(&self, device_token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(device_token.as_bytes()).into();
        digest_eq(&presented, &self.token_sha256)
    }
}

/// Drops every expired grant, then the soonest-expiring grants of `instance_id` beyond `cap`
/// (with one token lifetime, the oldest). Streams already running are not affected: a grant
/// is checked only at hello.
pub(super) fn prune_grants(
    grants: &mut HashMap<String, Grant>,
    instance_id: &str,
    now_ms: i64,
    cap: usize,
) {
    grants.retain(|_, g| g.expires_at_unix_ms > now_ms);
    let mut mine: Vec<(i64, String)> = grants
        .values()
        .filter(|g| g.instance_id == instance_id)
        .map(|g| (g.expires_at_unix_ms, g.device_id.clone()))
        .collect();
    if mine.len() <= cap {
        return;
    }
    mine.sort();
    for (_, device) in &mine[..mine.len() - cap] {
        grants.remove(device);
    }
}

/// The node API's role as the core's: unspecified (a control older than roles) is an owner;
/// a value this node does not know is refused rather than guessed.
pub(super) fn role_of(value: i32) -> Result<Role, SessionError> {
    match pb::ViewerRole::try_from(value) {
        Ok(pb::ViewerRole::Unspecified | pb::ViewerRole::Owner) => Ok(Role::Owner),
        Ok(pb::ViewerRole::Observer) => Ok(Role::Observer),
        Err(_) => Err(SessionError::BadRole(value)),
    }
}

/// What StartSession hands back.
#[derive(Debug, Clone)]
pub(crate) struct StartedSession {
    pub session_id: String,
    pub signaling_url: String,
    pub ice_servers: Vec<String>,
}

/// A refused hello: the code and message the viewer gets before the socket closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

pub(super) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Whole Unix seconds of a millisecond time, rounded down (so an expiry never moves later).
fn unix_secs(ms: i64) -> u64 {
    u64::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

/// Equal digests, in time independent of where they differ.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// StartSession: authorises `device_id` to watch the instance until `expires_at`.
    pub(crate) async fn start_session(
        &self,
        r: &pb::StartSessionRequest,
    ) -> Result<StartedSession, SessionError> {
        let digest: [u8; 32] = hex::decode(&r.device_token_sha256)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or(SessionError::BadDigest)?;
        let device_ok = !r.device_id.is_empty()
            && r.device_id.len() <= 64
            && r.device_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !device_ok {
            return Err(SessionError::BadDeviceId);
        }
        let role = role_of(r.role)?;
        let now = crate::unix_ms();
        if r.expires_at_unix_ms <= now {
            return Err(SessionError::AlreadyExpired);
        }
        self.manager
            .status(&r.instance_id)
            .await
            .map_err(|_| SessionError::UnknownInstance(r.instance_id.clone()))?;
        if r.renew {
            return self.renew(r, digest, role, now);
        }
        let grant = Grant {
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            instance_id: r.instance_id.clone(),
            device_id: r.device_id.clone(),
            token_sha256: digest,
            expires_at_unix_ms: r.expires_at_unix_ms,
            tenant_id: r.tenant_id.clone(),
            role,
        };
        let session_id = grant.session_id.clone();
        {
            let mut inner = self.inner();
            inner.grants.insert(r.device_id.clone(), grant);
            prune_grants(
                &mut inner.grants,
                &r.instance_id,
                now,
                MAX_GRANTS_PER_INSTANCE,
            );
        }
        self.persist_grants();
        tracing::info!(instance = %r.instance_id, device = %r.device_id, session = %session_id, %role, "session authorised");
        Ok(self.started(session_id, &r.device_id, now, r.expires_at_unix_ms))
    }

    /// What StartSession answers for a grant of `device_id` until `expires_at`.
    fn started(
        &self,
        session_id: String,
        device_id: &str,
        now: i64,
        expires_at: i64,
    ) -> StartedSession {
        let servers = self
            .settings
            .ice
            .servers(device_id, unix_secs(now), unix_secs(expires_at));
        StartedSession {
            session_id,
            signaling_url: format!(
                "{}/v1/signaling",
                self.settings.public_url.trim_end_matches('/')
            ),
            ice_servers: crate::streaming::ice::to_strings(&servers),
        }
    }

    /// StartSession with `renew`: moves the expiry of the device's live grant when the request
    /// names the same token (digest), instance, tenant and role; the token stays valid and a
    /// stream on it carries on to the new expiry. Anything else creates nothing: a renewal
    /// never mints access a GetDeviceToken did not.
    fn renew(
        &self,
        r: &pb::StartSessionRequest,
        digest: [u8; 32],
        role: Role,
        now: i64,
    ) -> Result<StartedSession, SessionError> {
        let session_id = {
            let mut inner = self.inner();
            let grant = inner
                .grants
                .get_mut(&r.device_id)
                .filter(|g| {
                    g.expires_at_unix_ms > now
                        && digest_eq(&g.token_sha256, &digest)
                        && g.instance_id == r.instance_id
                        && g.tenant_id == r.tenant_id
                        && g.role == role
                })
                .ok_or(SessionError::NoLiveGrant)?;
            // Never shortens: a renewal that raced a later one keeps the later expiry.
            grant.expires_at_unix_ms = grant.expires_at_unix_ms.max(r.expires_at_unix_ms);
            grant.session_id.clone()
        };
        self.persist_grants();
        tracing::info!(instance = %r.instance_id, device = %r.device_id, session = %session_id, "session renewed");
        Ok(self.started(session_id, &r.device_id, now, r.expires_at_unix_ms))
    }

    /// Writes the grants to the state dir (when the node keeps them there). A failed write is
    /// logged, not refused: the grant works until the next restart, as before grants were kept.
    pub(super) fn persist_grants(&self) {
        let Some(file) = &self.grant_file else {
            return;
        };
        // The change the caller just made to the grants is this one.
        let change = file.changed();
        let _order = file.lock();
        if file.holds(change) {
            // A snapshot taken after the change was written while we waited.
            return;
        }
        let covers = file.counted();
        let snapshot: Vec<Grant> = self.inner().grants.values().cloned().collect();
        match file.save(snapshot.iter()) {
            Ok(()) => file.wrote(covers),
            Err(e) => tracing::warn!(error = %e, "grants not written to the state dir"),
        }
    }

    /// The ICE servers a viewer gets in its `ready`: TURN credentials no longer valid than the
    /// grant it was admitted with.
    pub(crate) fn ice_servers(&self, grant: &Grant) -> Vec<cloudphone_signaling::IceServer> {
        self.settings.ice.servers(
            &grant.device_id,
            unix_secs(crate::unix_ms()),
            unix_secs(grant.expires_at_unix_ms),
        )
    }

    /// The current grant of a device, if it still has one.
    pub(crate) fn grant(&self, device_id: &str) -> Option<Grant> {
        self.inner().grants.get(device_id).cloned()
    }

    /// ReleaseSession: revokes the instance's grants and ends its streams.
    pub(crate) fn release(&self, instance_id: &str) -> u32 {
        let released = {
            let mut inner = self.inner();
            let before = inner.grants.len();
            inner.grants.retain(|_, g| g.instance_id != instance_id);
            (before - inner.grants.len()) as u32
        };
        if released > 0 {
            self.persist_grants();
        }
        self.stop_viewers(|v| v.instance_id == instance_id, ByeReason::Released);
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(instance: &str, device: &str, expires: i64) -> (String, Grant) {
        (
            device.to_owned(),
            Grant {
                session_id: format!("s-{device}"),
                instance_id: instance.to_owned(),
                device_id: device.to_owned(),
                token_sha256: [0; 32],
                expires_at_unix_ms: expires,
                tenant_id: "t".into(),
                role: Role::Owner,
            },
        )
    }

    #[test]
    fn pruning_drops_expired_grants_and_caps_each_instance_at_its_newest() {
        let mut grants: HashMap<String, Grant> = [
            grant("a", "expired", 999),
            grant("a", "a1", 1_001),
            grant("a", "a2", 1_002),
            grant("a", "a3", 1_003),
            grant("b", "b1", 1_001),
            grant("b", "b-expired", 1_000),
        ]
        .into_iter()
        .collect();
        prune_grants(&mut grants, "a", 1_000, 2);
        let mut left: Vec<&str> = grants.keys().map(String::as_str).collect();
        left.sort_unstable();
        // Another instance's live grants are not touched by a's cap.
        assert_eq!(left, ["a2", "a3", "b1"]);
        prune_grants(&mut grants, "a", 1_000, 2);
        assert_eq!(grants.len(), 3, "idempotent");
    }

    #[test]
    fn roles_map_from_the_node_api_with_unspecified_as_owner() {
        assert_eq!(role_of(0).unwrap(), Role::Owner);
        assert_eq!(role_of(pb::ViewerRole::Owner as i32).unwrap(), Role::Owner);
        assert_eq!(
            role_of(pb::ViewerRole::Observer as i32).unwrap(),
            Role::Observer
        );
        assert!(matches!(role_of(7), Err(SessionError::BadRole(7))));
    }
}
