//! Viewing sessions and their video: GetDeviceToken, SetVideoConfig, StopInstancesStreaming and
//! ReleaseInstancesSession. The tenant's video matrix is stored, then pushed to the nodes; a
//! device token is random, and its node only ever learns its SHA-256.

use cloudphone_api::error::ApiError;
use cloudphone_core::role::Role;
use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig};
use cloudphone_proto::node_v1 as pb;
use rand::RngCore;
use sha2::{Digest, Sha256};

use cloudphone_core::instance::{Plan, TenantOp};

use super::{ServiceError, node_of, owned};
use crate::AppState;
use crate::iam::Principal;

/// How long a device token lets a viewer stream.
pub(crate) const DEVICE_TOKEN_TTL_SECS: i64 = 3600;

/// What a node does to an instance's live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionCall {
    /// StopInstancesStreaming.
    StopStreaming,
    /// ReleaseInstancesSession.
    Release,
}

/// A registered viewing session: what GetDeviceToken hands the tenant.
pub(crate) struct DeviceSession {
    /// The secret the viewer presents; only its SHA-256 went to the node.
    pub(crate) device_token: String,
    pub(crate) device_id: String,
    pub(crate) signaling_url: String,
    pub(crate) ice_servers: Vec<String>,
    /// GetDeviceToken's `expired_time`: how many seconds of streaming the token allows from
    /// now (a renewal, another GetDeviceToken, extends a live stream by as much again).
    pub(crate) expired_time_secs: i64,
}

/// StopInstancesStreaming / ReleaseInstancesSession. Nothing streams an archived phone or one
/// whose host is down, so there is nothing to stop there (`cloudphone_core::instance::plan`).
pub(crate) async fn session_call(
    state: &AppState,
    principal: &Principal,
    id: String,
    call: SessionCall,
) -> Result<(), ServiceError> {
    let record = owned(state, principal, std::slice::from_ref(&id))
        .await?
        .remove(0);
    if super::plan(state, &record, TenantOp::EndSessions)? != Plan::OnNode {
        return Ok(());
    }
    let Some(mut client) = node_of(state, &record) else {
        return Ok(());
    };
    let target = pb::InstanceRef { instance_id: id };
    let outcome = match call {
        SessionCall::Release => client.release_session(target).await.map(|_| ()),
        SessionCall::StopStreaming => client.stop_streaming(target).await.map(|_| ()),
    };
    match outcome {
        Ok(()) => Ok(()),
        // The instance left the node meanwhile (a backup finishing, a delete): it streams
        // nothing, which is what the call asks.
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => {
            tracing::warn!(%status, "node session call failed");
            Err(node_failure(&record.instance_id, &status))
        }
    }
}

/// A node call about an instance that failed: the host is unreachable, or the instance is not
/// in a state to do it (it moved meanwhile). Both are `62010` ("云实例异常"), never `9999`.
fn node_failure(instance_id: &str, status: &tonic::Status) -> ServiceError {
    let why = match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => "its host did not answer",
        _ => "its host refused",
    };
    ApiError::InstanceAbnormal(format!("instance {instance_id}: {why}")).into()
}

/// The device id a viewer of `instance_id` for `user_id` presents: the same for every
/// GetDeviceToken of that user and instance, so a new call renews the grant of a live stream
/// (the node moves its expiry) instead of starting a second, unrelated one. Hex of a SHA-256
/// over both ids, shaped like the seed's `7b0cd026df8d495b8a65d628d7bec433`.
pub(crate) fn device_id(tenant_id: &str, instance_id: &str, user_id: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [tenant_id, instance_id, user_id] {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

/// The device id of a `role` token: an owner's is [`device_id`] (as before roles); an
/// observer's differs, so a user can hand out a view-only token while keeping their own (a new
/// observer token renews the observer device, never the owner's grant or stream).
pub(crate) fn device_id_for(
    tenant_id: &str,
    instance_id: &str,
    user_id: &str,
    role: Role,
) -> String {
    match role {
        Role::Owner => device_id(tenant_id, instance_id, user_id),
        Role::Observer => device_id(tenant_id, instance_id, &format!("{user_id}\0observer")),
    }
}

/// The node API's spelling of a role.
fn viewer_role(role: Role) -> pb::ViewerRole {
    match role {
        Role::Owner => pb::ViewerRole::Owner,
        Role::Observer => pb::ViewerRole::Observer,
    }
}

/// GetDeviceToken: a fresh random token bound to this instance and user, registered with the
/// instance's node after the tenant's video matrix (the node may have restarted since). The
/// device id is the same for the same user and instance ([`device_id`]): calling again within
/// a stream renews it for another `DEVICE_TOKEN_TTL_SECS` (the old token stops admitting new
/// viewers; the live stream carries on). A phone being backed up, in its archive or being
/// restored, or on a host that is down, is refused with its documented code
/// (`cloudphone_core::instance::plan`); for the rest the node decides.
pub(crate) async fn device_token(
    state: &AppState,
    principal: &Principal,
    instance_id: String,
    role: Role,
) -> Result<DeviceSession, ServiceError> {
    start_session(state, principal, instance_id, role, None).await
}

/// GetDeviceToken with `{"renew": "<token>"}` (an extension, docs/api-notes.md): extends the
/// caller's live `token` for this instance and role by another `DEVICE_TOKEN_TTL_SECS` from now,
/// keeping the token, so a player reconnecting later needs nothing new. The node checks that
/// the token is the live one of the caller's device ([`device_id_for`]); another user's or
/// tenant's token, an expired or released one, or a token of the other role is
/// `KOOPHONE.API.1000` and changes nothing. Another tenant's instance is `1001`, as everywhere.
pub(crate) async fn renew_device_token(
    state: &AppState,
    principal: &Principal,
    instance_id: String,
    role: Role,
    device_token: String,
) -> Result<DeviceSession, ServiceError> {
    start_session(state, principal, instance_id, role, Some(device_token)).await
}

/// Registers a device token with the instance's node: a fresh one, or `renew`'s for another
/// `DEVICE_TOKEN_TTL_SECS`.
async fn start_session(
    state: &AppState,
    principal: &Principal,
    instance_id: String,
    role: Role,
    renew: Option<String>,
) -> Result<DeviceSession, ServiceError> {
    let record = owned(state, principal, std::slice::from_ref(&instance_id))
        .await?
        .remove(0);
    super::plan(state, &record, TenantOp::DeviceToken)?;
    let Some(mut client) = node_of(state, &record) else {
        return Err(node_failure(
            &instance_id,
            &tonic::Status::unavailable("not connected"),
        ));
    };
    let renewing = renew.is_some();
    // A renewal keeps the live session's video; a new session gets the tenant's matrix first.
    if !renewing
        && let Some(config) = stored_video_config(state, &instance_id).await?
        && let Err(status) = push_video_config(&mut client, &instance_id, &config).await
    {
        tracing::warn!(%status, "video config not pushed before the session");
    }
    let device_token = renew.unwrap_or_else(|| {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    });
    let device_id = device_id_for(&principal.tenant_id, &instance_id, &principal.user_id, role);
    let expires_at = state.clock.now_ms() + DEVICE_TOKEN_TTL_SECS * 1000;
    let started = client
        .start_session(pb::StartSessionRequest {
            instance_id: instance_id.clone(),
            device_token_sha256: hex::encode(Sha256::digest(device_token.as_bytes())),
            expires_at_unix_ms: expires_at,
            user_id: principal.user_id.clone(),
            tenant_id: principal.tenant_id.clone(),
            device_id: device_id.clone(),
            role: viewer_role(role) as i32,
            renew: renewing,
        })
        .await
        .map_err(|status| {
            if renewing && status.code() == tonic::Code::FailedPrecondition {
                return ApiError::InvalidParameter(
                    "renew: not a live device token of this user, instance and role".into(),
                )
                .into();
            }
            tracing::warn!(%status, "node refused StartSession");
            node_failure(&instance_id, &status)
        })?
        .into_inner();
    Ok(DeviceSession {
        device_token,
        device_id,
        signaling_url: started.signaling_url,
        ice_servers: started.ice_servers,
        expired_time_secs: DEVICE_TOKEN_TTL_SECS,
    })
}

/// SetVideoConfig: stores one validated matrix for every instance (one transaction), and pushes
/// it to the nodes so live sessions change bitrate and fps without reconnecting.
pub(crate) async fn set_video_config(
    state: &AppState,
    principal: &Principal,
    ids: &[String],
    config: &VideoConfig,
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    let json =
        serde_json::to_string(config).map_err(|_| ServiceError::Refused(ApiError::Internal))?;
    state
        .store
        .set_video_config(ids, &json, crate::unix_ms())
        .await?;
    for record in &records {
        // A node that is down gets the matrix with the next GetDeviceToken.
        if let Some(mut client) = node_of(state, record)
            && let Err(status) = push_video_config(&mut client, &record.instance_id, config).await
        {
            tracing::warn!(instance_id = %record.instance_id, %status, "video config not pushed; sent with the next session");
        }
    }
    Ok(())
}

/// The stored matrix as the node API carries it.
fn video_profiles(config: &VideoConfig) -> Vec<pb::VideoProfile> {
    let mut profiles = Vec::new();
    for network in NetworkType::ALL {
        for codec in Codec::ALL {
            let specs = Definition::ALL
                .iter()
                .map(|definition| {
                    let spec = config.get(network, codec, *definition);
                    pb::VideoSpec {
                        definition: definition.as_str().to_string(),
                        code_rate_kbps: spec.code_rate_kbps,
                        fps: spec.fps,
                    }
                })
                .collect();
            profiles.push(pb::VideoProfile {
                network_type: network.as_str().to_string(),
                encoding_type: codec.as_str().to_string(),
                specs,
            });
        }
    }
    profiles
}

/// Sends an instance's stored matrix to its node (live sessions adopt it at once).
async fn push_video_config(
    client: &mut crate::nodes::NodeClient,
    instance_id: &str,
    config: &VideoConfig,
) -> Result<(), tonic::Status> {
    let request = pb::SetVideoConfigRequest {
        instance_id: instance_id.to_string(),
        profiles: video_profiles(config),
    };
    client.set_video_config(request).await.map(|_| ())
}

/// The instance's stored matrix, if SetVideoConfig was ever called for it.
async fn stored_video_config(
    state: &AppState,
    instance_id: &str,
) -> Result<Option<VideoConfig>, ServiceError> {
    let json = state.store.video_config(instance_id).await?;
    if json.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(&json) {
        Ok(config) => Ok(Some(config)),
        Err(error) => {
            tracing::error!(instance_id, %error, "stored video config is unreadable");
            Err(ApiError::Internal.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Role, device_id, device_id_for};

    #[test]
    fn an_observer_token_is_a_device_of_its_own() {
        let owner = device_id_for("t", "inst1", "user-1", Role::Owner);
        assert_eq!(
            owner,
            device_id("t", "inst1", "user-1"),
            "owners as before roles"
        );
        let observer = device_id_for("t", "inst1", "user-1", Role::Observer);
        assert_ne!(
            observer, owner,
            "an observer token does not renew the owner's grant"
        );
        assert_eq!(
            observer,
            device_id_for("t", "inst1", "user-1", Role::Observer),
            "a new observer token renews the observer device"
        );
        assert_ne!(
            observer,
            device_id_for("t", "inst1", "user-2", Role::Observer)
        );
    }

    #[test]
    fn one_device_per_user_and_instance() {
        let a = device_id("t", "inst1", "user-1");
        assert_eq!(a, device_id("t", "inst1", "user-1"), "a renewal finds it");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        for other in [
            device_id("t", "inst1", "user-2"),
            device_id("t", "inst2", "user-1"),
            device_id("u", "inst1", "user-1"),
            // Boundaries between the parts count.
            device_id("t", "inst1u", "ser-1"),
        ] {
            assert_ne!(a, other);
        }
    }
}
