//! Transcode usage over HTTP: IAM-compatible AK/SK management (`/v3.0/OS-CREDENTIAL/credentials`),
//! Huawei Live `GET /v2/{project_id}/stats/transcode` (seed 004) and Volcengine
//! `POST /?Action=DescribeLiveTranscodeData&Version=2023-01-01` (seed 002). Rules, errors and
//! bodies come from `cloudphone-usage`; this file authenticates, loads and answers.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cloudphone_api::timefmt;
use cloudphone_usage::class::{huawei_spec, volc_class};
use cloudphone_usage::huawei::{self, HuaweiError, TranscodeQuery};
use cloudphone_usage::meter::{Grid, bucket_totals};
use cloudphone_usage::sign::{self, RequestParts, SignError};
use cloudphone_usage::volc::{self, VolcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppStateRef;
use super::iam::iam_error;
use crate::AppState;
use crate::iam::Principal;
use crate::service::usage;
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

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn token_principal(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    usage::principal(state, auth_token(headers)).await.ok()
}

/// An AK's record and its unsealed secret; `None` when the AK is unknown.
async fn access_key(state: &AppState, ak: &str) -> Result<Option<(AccessKeyRecord, String)>, ()> {
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
    match sealer.open(&record.secret_sealed) {
        Ok(secret) => Ok(Some((record, secret))),
        Err(error) => {
            tracing::error!(%error, "access key secret could not be unsealed");
            Err(())
        }
    }
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
fn credential_request(body: &[u8], principal: &Principal) -> Result<String, IamError> {
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

/// `GET /v3.0/OS-CREDENTIAL/credentials`: the tenant's keys, without secrets.
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

/// `DELETE /v3.0/OS-CREDENTIAL/credentials/{access_key}`: 204; another tenant's key is 404.
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

/// The tenant a Huawei call acts for: an IAM token scoped to `project_id`, or an AK/SK
/// signature by a key of the tenant owning `project_id`.
async fn huawei_tenant(
    state: &AppState,
    project_id: &str,
    parts: &RequestParts<'_>,
    headers: &HeaderMap,
) -> Result<String, HuaweiError> {
    if headers.contains_key("x-auth-token") {
        let principal = token_principal(state, headers)
            .await
            .ok_or_else(|| HuaweiError::Unauthorized("token missing, unknown or expired".into()))?;
        if principal.project_id != project_id {
            return Err(HuaweiError::Forbidden);
        }
        return Ok(principal.tenant_id);
    }
    if !sign::huawei::is_present(parts) {
        return Err(HuaweiError::Unauthorized(
            "neither X-Auth-Token nor an SDK-HMAC-SHA256 signature".into(),
        ));
    }
    let auth = sign::huawei::parse(parts).map_err(|e| HuaweiError::Unauthorized(e.to_string()))?;
    let (key, secret) = access_key(state, &auth.access_key)
        .await
        .map_err(|()| HuaweiError::Internal)?
        .ok_or_else(|| HuaweiError::Unauthorized("unknown access key".into()))?;
    sign::huawei::verify(parts, &auth, &secret, crate::unix_ms())
        .map_err(|e| HuaweiError::Unauthorized(e.to_string()))?;
    if parts
        .header("x-project-id")
        .is_some_and(|p| p != project_id)
    {
        return Err(HuaweiError::Forbidden);
    }
    match state
        .store
        .find_project(&key.tenant_id, None, Some(project_id))
        .await
    {
        Ok(Some(_)) => Ok(key.tenant_id),
        Ok(None) => Err(HuaweiError::Forbidden),
        Err(error) => {
            tracing::error!(%error, "project lookup failed");
            Err(HuaweiError::Internal)
        }
    }
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

/// Serves one Huawei Live call: authenticates it for `project_id` ([`huawei_tenant`]), records
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
        let tenant_id = huawei_tenant(state, project_id, &parts, &headers).await?;
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
        huawei_answer(&state, tenant_id, query)
    })
    .await
}

async fn huawei_answer(
    state: &AppState,
    tenant_id: String,
    query: TranscodeQuery,
) -> Result<huawei::TranscodeResponse, HuaweiError> {
    let domain = huawei::publish_domain(&query)?.to_string();
    // "Now" (the window's defaults and limits, open sessions) from the state's clock, so the
    // rules relative to the current hour are tested at a chosen time.
    let now = state.clock.now_ms();
    let window = huawei::window(&query, now)?;
    let store_failed = |error: crate::store::StoreError| {
        tracing::error!(%error, "usage query failed");
        HuaweiError::Internal
    };
    let domains = state
        .store
        .list_domains(&tenant_id)
        .await
        .map_err(store_failed)?;
    // Another tenant's domain answers exactly like one that does not exist.
    if !domains.iter().any(|d| d.domain == domain) {
        return Err(HuaweiError::InvalidParameter("publish_domain".into()));
    }
    let (from, to) = window.range_ms();
    let stream = query.stream.as_deref().filter(|s| !s.is_empty());
    let spans: Vec<_> = crate::usage::spans(state.store.as_ref(), &tenant_id, from, to, now)
        .await
        .map_err(store_failed)?
        .into_iter()
        .filter(|s| s.domain == domain && stream.is_none_or(|st| s.stream == st))
        .collect();
    let totals = bucket_totals(&spans, Grid::HOURS, from, to, |s| {
        huawei_spec(s.codec, s.width, s.height)
    });
    Ok(huawei::response(&window, &totals))
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

fn sign_error(e: SignError) -> VolcError {
    match e {
        SignError::Missing => VolcError::MissingAuthenticationToken,
        SignError::BadDate | SignError::Stale => VolcError::InvalidTimestamp,
        SignError::Mismatch | SignError::BodyHash => VolcError::SignatureDoesNotMatch,
        other => VolcError::InvalidAuthorization(other.to_string()),
    }
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
    match volc_answer(&state, &parts).await {
        Ok(result) => {
            let meta = volc::ResponseMetadata::new(&request_id, &region);
            axum::Json(json!({"ResponseMetadata": meta, "Result": result})).into_response()
        }
        Err(error) => volc_failure(&error, &request_id, &region),
    }
}

async fn volc_answer(
    state: &AppState,
    parts: &RequestParts<'_>,
) -> Result<volc::TranscodeResult, VolcError> {
    let query = sign::query_pairs(parts.query);
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (action, version) = (get("Action"), get("Version"));
    if action != volc::ACTION || version != volc::VERSION {
        return Err(VolcError::InvalidActionOrVersion(action, version));
    }
    if !sign::volc::is_present(parts) {
        return Err(VolcError::MissingAuthenticationToken);
    }
    let auth = sign::volc::parse(parts).map_err(sign_error)?;
    if auth.service != volc::SERVICE {
        return Err(VolcError::InvalidAuthorization(format!(
            "service {} is not live",
            auth.service
        )));
    }
    let (key, secret) = access_key(state, &auth.access_key)
        .await
        .map_err(|()| VolcError::InternalError)?
        .ok_or(VolcError::InvalidAccessKey)?;
    // The rate window, the signature's age and "now" in the query all read the state's clock,
    // so the window can be tested in tokio's paused time.
    let now = state.clock.now_ms();
    sign::volc::verify(parts, &auth, &secret, now).map_err(sign_error)?;
    tracing::Span::current().record("tenant_id", key.tenant_id.as_str());
    let allowed = state
        .volcengine_limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(&key.user_id, now);
    if !allowed {
        return Err(VolcError::FlowLimitExceeded);
    }
    let request = volc::parse_body(parts.body)?;
    let window = volc::window(&request, now)?;
    let store_failed = |error: crate::store::StoreError| {
        tracing::error!(%error, "usage query failed");
        VolcError::InternalError
    };
    let owned: Vec<String> = state
        .store
        .list_domains(&key.tenant_id)
        .await
        .map_err(store_failed)?
        .into_iter()
        .map(|d| d.domain)
        .collect();
    let domains = match request.domain_list.as_deref() {
        None | Some([]) => owned,
        Some(asked) => {
            // Another account's domain is refused exactly like one that does not exist.
            if asked.iter().any(|d| !owned.contains(d)) {
                return Err(VolcError::AccountIdNotAllow);
            }
            asked.to_vec()
        }
    };
    let app = request.app.as_deref().filter(|s| !s.is_empty());
    let stream = request.stream.as_deref().filter(|s| !s.is_empty());
    let spans: Vec<_> = crate::usage::spans(
        state.store.as_ref(),
        &key.tenant_id,
        window.start_ms,
        window.end_ms,
        now,
    )
    .await
    .map_err(store_failed)?
    .into_iter()
    .filter(|s| {
        domains.contains(&s.domain)
            && app.is_none_or(|a| s.app == a)
            && stream.is_none_or(|st| s.stream == st)
    })
    .collect();
    let totals = bucket_totals(&spans, window.grid(), window.start_ms, window.end_ms, |s| {
        let (kind, resolution) = volc_class(s.codec, s.width, s.height);
        (kind, resolution.to_string())
    });
    Ok(volc::result(&request, domains, &window, &totals))
}
