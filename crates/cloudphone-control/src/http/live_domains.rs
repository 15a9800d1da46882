//! Huawei Live `GET /v1/{project_id}/domain` (ShowDomain): the tenant's streaming domains, so a
//! client (the console's Usage page, or the Huawei SDK's `show_domain`) can find the
//! `publish_domain` values that `GET /v2/{project_id}/stats/transcode` accepts. Authenticated
//! exactly like that call: an IAM token scoped to the project, or an AK/SK signature.

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use cloudphone_usage::huawei::{HuaweiError, format_time};
use cloudphone_usage::sign::RequestParts;
use serde::{Deserialize, Serialize};

use super::AppStateRef;
use super::usage::{header_pairs, huawei_failure, huawei_tenant, request_id, with_request_id};
use crate::AppState;

/// Table 2 of the document: both optional. `enterprise_project_id` is accepted and ignored
/// (there are no enterprise projects here).
#[derive(Debug, Default, Deserialize)]
pub struct ShowDomainQuery {
    pub domain: Option<String>,
    #[allow(dead_code)]
    pub enterprise_project_id: Option<String>,
}

/// One entry of `domain_info` (the document's `DecoupledLiveDomainInfo`), with the fields that
/// have a meaning here. `is_default` is ours: cloud-phone sessions bill under that domain.
#[derive(Debug, Serialize)]
pub struct DomainInfo {
    pub domain: String,
    /// Always `push`: usage is reported per publish domain.
    pub domain_type: &'static str,
    pub region: String,
    /// `on`, or `off` once deleted (its past usage stays queryable).
    pub status: &'static str,
    pub create_time: String,
    pub is_default: bool,
}

#[derive(Debug, Serialize)]
pub struct ShowDomainResponse {
    pub total: usize,
    pub domain_info: Vec<DomainInfo>,
}

/// `GET /v1/{project_id}/domain`.
pub async fn show(
    state: AppStateRef,
    Path(project_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = request_id(&headers);
    let header_list = header_pairs(&headers);
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &header_list,
        body: &body,
    };
    match answer(&state, &project_id, &parts, &headers).await {
        Ok(body) => with_request_id(axum::Json(body).into_response(), &request_id),
        Err(error) => huawei_failure(error, &request_id),
    }
}

async fn answer(
    state: &AppState,
    project_id: &str,
    parts: &RequestParts<'_>,
    headers: &HeaderMap,
) -> Result<ShowDomainResponse, HuaweiError> {
    let tenant_id = huawei_tenant(state, project_id, parts, headers).await?;
    tracing::Span::current().record("tenant_id", tenant_id.as_str());
    let Query(query): Query<ShowDomainQuery> = Query::try_from_uri(
        &Uri::try_from(format!("/?{}", parts.query))
            .map_err(|_| HuaweiError::InvalidParameter("query".into()))?,
    )
    .map_err(|_| HuaweiError::InvalidParameter("query".into()))?;
    let wanted = query
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if wanted.is_some_and(|d| d.len() > 255) {
        return Err(HuaweiError::InvalidParameter("domain".into()));
    }
    let domains = state
        .store
        .list_domains(&tenant_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, "listing streaming domains failed");
            HuaweiError::Internal
        })?;
    // The domain sessions bill under, chosen as `usage::default_domain` does (without creating
    // one): the live default, else the oldest live domain.
    let live = || domains.iter().filter(|d| d.deleted_at_ms.is_none());
    let billing = live()
        .find(|d| d.is_default)
        .or_else(|| live().next())
        .map(|d| d.domain.clone());
    let domain_info: Vec<DomainInfo> = domains
        .iter()
        .filter(|d| wanted.is_none_or(|w| d.domain.eq_ignore_ascii_case(w)))
        .map(|d| DomainInfo {
            domain: d.domain.clone(),
            domain_type: "push",
            region: state.config.region.clone(),
            status: if d.deleted_at_ms.is_none() {
                "on"
            } else {
                "off"
            },
            create_time: format_time(d.created_at_ms),
            is_default: billing.as_deref() == Some(d.domain.as_str()),
        })
        .collect();
    Ok(ShowDomainResponse {
        total: domain_info.len(),
        domain_info,
    })
}
