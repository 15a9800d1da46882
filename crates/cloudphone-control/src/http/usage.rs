//! Transcode usage over HTTP: IAM-compatible AK/SK management (`/v3.0/OS-CREDENTIAL/credentials`),
//! Huawei Live `GET /v2/{project_id}/stats/transcode` (seed 004) and Volcengine
//! `POST /?Action=DescribeLiveTranscodeData&Version=2023-01-01` (seed 002). Rules, errors and
//! bodies come from `cloudphone-usage`; this file authenticates, loads and answers.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cloudphone_api::timefmt;
use cloudphone_usage::huawei::HuaweiError;
use cloudphone_usage::sign::{self, RequestParts};
use cloudphone_usage::volc::{self, VolcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::iam::iam_error;
use super::{AppStateRef, header_pairs};
use crate::AppState;
use crate::iam::Identity;
use crate::service::{usage, usage_query};
use crate::store::AccessKeyRecord;
use cloudphone_api::iam::IamError;

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

// ---------------------------------------------------------------------------------------------
// IAM credentials

fn credential_json(k: &AccessKeyRecord) -> serde_json::Value {
    json!({
        "user_id": k.user_id,
        "access": k.access_key,
        "status": "active",
        "create_time": timefmt::format_iam(k.created_at_ms),
        "description": k.description,
    })
}

fn auth_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-auth-token")?.to_str().ok()
}

/// The description a create-credential body asks for, once the body is acceptable: a
/// `credential` object, for the caller itself, with at most 255 characters of description.
fn credential_request(body: &[u8], principal: &Identity) -> Result<String, IamError> {
    let parsed: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| IamError::InvalidCredentialRequest("request body is not JSON"))?;
    let credential = &parsed["credential"];
    if !credential.is_object() {
        return Err(IamError::InvalidCredentialRequest("credential is required"));
    }
    let user_id = credential["user_id"].as_str().unwrap_or(&principal.user_id);
    if user_id != principal.user_id {
        return Err(IamError::Forbidden("keys can only be created for yourself"));
    }
    let description = credential["description"].as_str().unwrap_or_default();
    if description.chars().count() > 255 {
        return Err(IamError::InvalidCredentialRequest(
            "description is too long",
        ));
    }
    Ok(description.to_string())
}

/// `POST /v3.0/OS-CREDENTIAL/credentials` (IAM's create-permanent-access-key): 201 with the
/// secret, which is never shown again.
pub(super) async fn create_credential(
    state: AppStateRef,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let created = async {
        let principal = usage::principal(&state, auth_token(&headers)).await?;
        let description = credential_request(&body, &principal)?;
        usage::create_credential(&state, &principal, &description).await
    };
    match created.await {
        Ok((record, secret)) => {
            let mut body = credential_json(&record);
            body["secret"] = json!(secret);
            let body = axum::Json(json!({ "credential": body }));
            (StatusCode::CREATED, body).into_response()
        }
        Err(error) => iam_error(error),
    }
}

/// `GET /v3.0/OS-CREDENTIAL/credentials`: the caller's own keys, without secrets.
pub(super) async fn list_credentials(state: AppStateRef, headers: HeaderMap) -> Response {
    let listed = async {
        let principal = usage::principal(&state, auth_token(&headers)).await?;
        usage::list_credentials(&state, &principal).await
    };
    match listed.await {
        Ok(keys) => axum::Json(json!({
            "credentials": keys.iter().map(credential_json).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(error) => iam_error(error),
    }
}

/// `DELETE /v3.0/OS-CREDENTIAL/credentials/{access_key}`: 204; another user's key is 404.
pub(super) async fn delete_credential(
    state: AppStateRef,
    Path(access_key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let deleted = async {
        let principal = usage::principal(&state, auth_token(&headers)).await?;
        usage::delete_credential(&state, &principal, &access_key).await
    };
    match deleted.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => iam_error(error),
    }
}

// ---------------------------------------------------------------------------------------------
// Huawei Live

fn huawei_failure(error: HuaweiError, request_id: &str) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::info!(code = error.code(), %error, "usage query refused");
    with_request_id(
        (status, axum::Json(error.body())).into_response(),
        request_id,
    )
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The parts of a [`SignedRequest`] a signature is checked over; `header_list` is
/// [`header_pairs`] of its headers.
fn signed_parts<'a>(
    method: &'a Method,
    uri: &'a Uri,
    header_list: &'a [(String, String)],
    body: &'a Bytes,
) -> RequestParts<'a> {
    RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: header_list,
        body,
    }
}

/// What a signature covers, as one extractor (the body last: it consumes the request).
pub(super) type SignedRequest = (Method, Uri, HeaderMap, Bytes);

/// Serves one Huawei Live call: authenticates it for `project_id` (`service::usage_query::huawei_tenant`), records
/// the tenant on the request's span, parses the query string as `Q`, runs `answer` for the tenant
/// and writes its JSON body or the Huawei error body, with `x-request-id` (the caller's, or a new
/// one) on either.
pub(super) async fn huawei_call<Q, T, F, Fut>(
    state: &AppState,
    project_id: &str,
    (method, uri, headers, body): SignedRequest,
    answer: F,
) -> Response
where
    Q: DeserializeOwned,
    T: Serialize,
    F: FnOnce(String, Q) -> Fut,
    Fut: Future<Output = Result<T, HuaweiError>>,
{
    let request_id = request_id(&headers);
    let header_list = header_pairs(&headers);
    let parts = signed_parts(&method, &uri, &header_list, &body);
    let result = async {
        let tenant_id =
            usage_query::huawei_tenant(state, project_id, &parts, auth_token(&headers)).await?;
        tracing::Span::current().record("tenant_id", tenant_id.as_str());
        let Query(query): Query<Q> = Query::try_from_uri(
            &Uri::try_from(format!("/?{}", parts.query))
                .map_err(|_| HuaweiError::InvalidParameter("query".into()))?,
        )
        .map_err(|_| HuaweiError::InvalidParameter("query".into()))?;
        answer(tenant_id, query).await
    };
    match result.await {
        Ok(body) => with_request_id(axum::Json(body).into_response(), &request_id),
        Err(error) => huawei_failure(error, &request_id),
    }
}

/// `GET /v2/{project_id}/stats/transcode`.
pub(super) async fn huawei_transcode(
    state: AppStateRef,
    Path(project_id): Path<String>,
    request: SignedRequest,
) -> Response {
    huawei_call(&state, &project_id, request, |tenant_id, query| {
        usage_query::huawei_transcode(&state, tenant_id, query)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Volcengine

fn volc_failure(error: &VolcError, request_id: &str, region: &str) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    tracing::info!(code = error.code(), "volcengine call refused");
    (
        status,
        axum::Json(volc::error_body(error, request_id, region)),
    )
        .into_response()
}

/// `POST /?Action=DescribeLiveTranscodeData&Version=2023-01-01`.
pub(super) async fn volcengine(
    state: AppStateRef,
    (method, uri, headers, body): SignedRequest,
) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let header_list = header_pairs(&headers);
    let parts = signed_parts(&method, &uri, &header_list, &body);
    let region = sign::volc::parse(&parts)
        .map(|a| a.region)
        .unwrap_or_else(|_| "cn-north-1".to_string());
    match usage_query::volc_transcode(&state, &parts).await {
        Ok(result) => {
            let meta = volc::ResponseMetadata::new(&request_id, &region);
            axum::Json(json!({"ResponseMetadata": meta, "Result": result})).into_response()
        }
        Err(error) => volc_failure(&error, &request_id, &region),
    }
}
