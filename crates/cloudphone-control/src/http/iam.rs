//! Huawei IAM: `POST /v3/auth/tokens` (password login answering 201 with `X-Subject-Token`,
//! project- or domain-scoped) and `GET /v3/auth/projects` (KeystoneListAuthProjects: the
//! projects a caller may scope to).

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::RETRY_AFTER;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudphone_api::iam::{
    AuthProject, AuthProjects, CollectionLinks, IamError, SelfLink, TokenRequest,
};

use super::{AppStateRef, IamCaller};
use crate::iam::IamServiceError;

/// IAM's error body: `{"error_code": "IAM.xxxx", "error_msg": "..."}`.
pub(super) fn iam_error(error: IamError) -> Response {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({"error_code": error.code(), "error_msg": error.to_string()});
    (status, axum::Json(body)).into_response()
}

/// The client's address, when the server records connection addresses (it does; an in-process
/// router in unit tests does not, and then only the per-user backoff applies).
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// 429 with `Retry-After` in whole seconds, rounded up so a client that waits it is let in.
fn too_many(retry_after_ms: i64) -> Response {
    let mut response = iam_error(IamError::TooManyRequests);
    let secs = (retry_after_ms.max(1) + 999) / 1000;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    response
}

pub(super) async fn issue_token(state: AppStateRef, Peer(peer): Peer, body: Bytes) -> Response {
    let login = match serde_json::from_slice::<TokenRequest>(&body) {
        Ok(request) => request.into_login(),
        Err(e) => Err(IamError::BadRequest(e.to_string())),
    };
    let login = match login {
        Ok(login) => login,
        Err(error) => return iam_error(error),
    };
    let ttl_ms =
        i64::try_from(state.config.iam.token_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let guard = &state.login_guard;
    match crate::iam::login(
        state.store.as_ref(),
        guard,
        &state.clock,
        login,
        peer,
        ttl_ms,
    )
    .await
    {
        Ok((token, body)) => {
            let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&token) {
                response.headers_mut().insert("x-subject-token", value);
            }
            response
        }
        Err(IamServiceError::WrongCredentials) => iam_error(IamError::WrongCredentials),
        Err(IamServiceError::TooManyAttempts { retry_after_ms }) => too_many(retry_after_ms),
        Err(error) => {
            tracing::error!(%error, "login failed");
            iam_error(IamError::Internal)
        }
    }
}

/// `GET /v3/auth/projects`: every project of the caller's tenant, with a token of any scope or
/// an AK/SK signature (seed 001 §3.2 gives it as the example of a token call).
pub(super) async fn list_projects(state: AppStateRef, IamCaller(caller): IamCaller) -> Response {
    let projects = match crate::iam::list_projects(&state, &caller).await {
        Ok(projects) => projects,
        Err(error) => {
            tracing::error!(%error, "listing projects failed");
            return iam_error(IamError::Internal);
        }
    };
    let base = state.config.public_url.trim_end_matches('/');
    let body = AuthProjects {
        projects: projects
            .into_iter()
            .map(|p| AuthProject {
                links: SelfLink {
                    self_: format!("{base}/v3/projects/{}", p.project_id),
                },
                id: p.project_id,
                name: p.name,
                domain_id: p.tenant_id.clone(),
                parent_id: p.tenant_id,
                description: String::new(),
                enabled: true,
                is_domain: false,
            })
            .collect(),
        links: CollectionLinks {
            self_: format!("{base}/v3/auth/projects"),
            previous: None,
            next: None,
        },
    };
    axum::Json(body).into_response()
}
