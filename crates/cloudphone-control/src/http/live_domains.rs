//! Huawei Live `GET /v1/{project_id}/domain` (ShowDomain): the tenant's streaming domains, so a
//! client (the console's Usage page, or the Huawei SDK's `show_domain`) can find the
//! `publish_domain` values that `GET /v2/{project_id}/stats/transcode` accepts. Authenticated
//! exactly like that call: an IAM token scoped to the project, or an AK/SK signature.

use axum::extract::Path;
use axum::response::Response;

use super::AppStateRef;
use super::usage::{SignedRequest, huawei_call};
use crate::service::usage_query;

/// `GET /v1/{project_id}/domain`.
pub(super) async fn show(
    state: AppStateRef,
    Path(project_id): Path<String>,
    request: SignedRequest,
) -> Response {
    huawei_call(&state, &project_id, request, |tenant_id, query| {
        usage_query::show_domains(&state, tenant_id, query)
    })
    .await
}
