//! Huawei Live `GET /v1/{project_id}/domain` (ShowDomain): the tenant's streaming domains, so a
//! client (the console's Usage page, or the Huawei SDK's `show_domain`) can find the
//! `publish_domain` values that `GET /v2/{project_id}/stats/transcode` accepts. Authenticated
//! exactly like that call: an IAM token scoped to the project, or an AK/SK signature.

use axum::extract::Path;
use axum::response::Response;
use cloudphone_usage::huawei::{HuaweiError, format_time};
use serde::{Deserialize, Serialize};

use super::AppStateRef;
use super::usage::{SignedRequest, huawei_call};
use crate::AppState;

/// Table 2 of the document: both optional. `enterprise_project_id` is accepted and ignored
/// (there are no enterprise projects here).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ShowDomainQuery {
    pub domain: Option<String>,
    #[allow(dead_code)]
    pub enterprise_project_id: Option<String>,
}

/// One entry of `domain_info` (the document's `DecoupledLiveDomainInfo`), with the fields that
/// have a meaning here. `is_default` is ours: cloud-phone sessions bill under that domain.
#[derive(Debug, Serialize)]
pub(super) struct DomainInfo {
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
pub(super) struct ShowDomainResponse {
    pub total: usize,
    pub domain_info: Vec<DomainInfo>,
}

/// `GET /v1/{project_id}/domain`.
pub(super) async fn show(
    state: AppStateRef,
    Path(project_id): Path<String>,
    request: SignedRequest,
) -> Response {
    huawei_call(&state, &project_id, request, |tenant_id, query| {
        answer(&state, tenant_id, query)
    })
    .await
}

async fn answer(
    state: &AppState,
    tenant_id: String,
    query: ShowDomainQuery,
) -> Result<ShowDomainResponse, HuaweiError> {
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
