//! `POST /v3/auth/tokens`: Huawei IAM password login answering 201 with `X-Subject-Token`.

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cloudphone_api::iam::{IamError, TokenRequest};

use super::AppStateRef;
use crate::iam::IamServiceError;

/// IAM's error body: `{"error_code": "IAM.xxxx", "error_msg": "..."}`.
pub(super) fn iam_error(error: IamError) -> Response {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({"error_code": error.code(), "error_msg": error.to_string()});
    (status, axum::Json(body)).into_response()
}

pub(super) async fn issue_token(state: AppStateRef, body: Bytes) -> Response {
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
    match crate::iam::login(state.store.as_ref(), login, state.clock.now_ms(), ttl_ms).await {
        Ok((token, body)) => {
            let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&token) {
                response.headers_mut().insert("x-subject-token", value);
            }
            response
        }
        Err(IamServiceError::WrongCredentials) => iam_error(IamError::WrongCredentials),
        Err(error) => {
            tracing::error!(%error, "login failed");
            iam_error(IamError::Internal)
        }
    }
}
