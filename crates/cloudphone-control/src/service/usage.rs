//! AK/SK credentials (IAM's `OS-CREDENTIAL`) for the usage APIs: who the token belongs to, and
//! creating, listing and deleting the caller's own keys. Refusals are IAM's codes
//! (`cloudphone_api::iam::IamError`).

use cloudphone_api::iam::IamError;

use crate::AppState;
use crate::iam::Identity;
use crate::store::{AccessKeyRecord, KeyOwner};

/// Logs a failure the caller cannot fix and answers it as an internal error (500), with the
/// details only in the log.
fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> IamError {
    move |error| {
        tracing::error!(%error, "{what}");
        IamError::Internal
    }
}

/// The user behind an `X-Auth-Token` of any scope (IAM calls act for the user, not a
/// project); a missing, unknown or expired one is `IAM.0002`.
pub(crate) async fn principal(state: &AppState, token: Option<&str>) -> Result<Identity, IamError> {
    let token = token.ok_or(IamError::InvalidToken)?;
    crate::iam::authenticate(state.store.as_ref(), token, state.clock.now_ms())
        .await
        .map_err(|_| IamError::InvalidToken)
}

/// Creates a key for the caller; answers it with its secret, which is never shown again.
pub(crate) async fn create_credential(
    state: &AppState,
    principal: &Identity,
    description: &str,
) -> Result<(AccessKeyRecord, String), IamError> {
    let sealer =
        crate::usage::secret_box(&state.config).map_err(internal("secrets key unavailable"))?;
    crate::usage::create_access_key(
        state.store.as_ref(),
        sealer,
        &principal.tenant_id,
        &principal.user_id,
        description,
        state.clock.now_ms(),
    )
    .await
    .map_err(internal("access key creation failed"))
}

/// A user's own keys: IAM's permanent-key calls act for the caller only (the seeds carry no
/// IAM document granting more; an operator lists a whole tenant's through the admin CLI).
fn own_keys(principal: &Identity) -> KeyOwner<'_> {
    KeyOwner {
        tenant_id: &principal.tenant_id,
        user_id: Some(&principal.user_id),
    }
}

/// The caller's own keys, without secrets.
pub(crate) async fn list_credentials(
    state: &AppState,
    principal: &Identity,
) -> Result<Vec<AccessKeyRecord>, IamError> {
    state
        .store
        .list_access_keys(&own_keys(principal))
        .await
        .map_err(internal("listing access keys failed"))
}

/// Deletes one of the caller's own keys; another user's (or an unknown) key is `IAM.0004`.
pub(crate) async fn delete_credential(
    state: &AppState,
    principal: &Identity,
    access_key: &str,
) -> Result<(), IamError> {
    match state
        .store
        .delete_access_key(&own_keys(principal), access_key)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(IamError::NotFound("no such access key")),
        Err(error) => Err(internal("deleting an access key failed")(error)),
    }
}
