//! `GET /openapi.json`: the tenant API as OpenAPI 3.1, generated from the same `cloudphone_api`
//! types the handlers parse and answer with. Each route is described by a stub function here so
//! the handlers stay free of documentation attributes.

#![allow(dead_code)]

use axum::response::{IntoResponse, Response};
use cloudphone_api::apps::{InstallAppData, InstallAppRequest};
use cloudphone_api::error::ErrorBody;
use cloudphone_api::iam::{AuthProjects, TokenRequest, TokenResponse};
use cloudphone_api::instances::{
    CreateInstanceRequest, CreateInstanceResponse, ListInstancesResponse, SkuResponse,
};
use cloudphone_api::management::{
    AsyncCommandInfo, BackupRequest, CmdResultWrapper, CommandRequest, DataResponse, DeleteRequest,
    DeviceTokenData, InstanceIdRequest, InstanceIdsRequest, JobDetailWrapper, NullDataResponse,
    PrepareRequest, PrepareStatusList, Progress, ProgressRequest, SetVideoConfigRequest,
    StatusResultWrapper, UserInstancesRequest,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// ListInstances' query parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// 1-based page number.
    page_no: i64,
    /// Rows per page, 1..=1000.
    page_size: i64,
    instance_id: Option<String>,
    instance_name: Option<String>,
    /// UTC, `yyyy-MM-dd HH:mm:ss`.
    query_start_time: Option<String>,
    /// UTC, `yyyy-MM-dd HH:mm:ss`.
    query_end_time: Option<String>,
    /// CLOUD_PHONE or CLOUD_APP.
    pool_scene_tag: Option<String>,
}

#[utoipa::path(post, path = "/v3/auth/tokens", tag = "iam", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse, headers(("x-subject-token" = String, description = "The token"))),
        (status = 429, body = ErrorBody, headers(("retry-after" = u64, description = "Seconds to wait")))))]
fn issue_token() {}

#[utoipa::path(get, path = "/v3/auth/projects", tag = "iam",
    responses((status = 200, body = AuthProjects, description = "Every project of the caller's tenant (a token of any scope, or AK/SK signing)")))]
fn list_auth_projects() {}

#[utoipa::path(get, path = "/v1/instances/batch-query", tag = "instances", params(ListParams,
        ("x-request-id" = String, Header, description = "Request tracking id")),
    responses((status = 200, body = ListInstancesResponse)))]
fn list_instances() {}

#[utoipa::path(get, path = "/v1/instances/sku", tag = "ordering",
    params(("type" = Option<String>, Query, description = "0: cloud phone SKUs")),
    responses((status = 200, body = SkuResponse)))]
fn batch_show_sku() {}

#[utoipa::path(post, path = "/v1/instances/create", tag = "ordering", request_body = CreateInstanceRequest,
    responses((status = 200, body = CreateInstanceResponse)))]
fn create_instance() {}

#[utoipa::path(post, path = "/v1/instances/delete", tag = "ordering", request_body = DeleteRequest,
    responses((status = 200, body = NullDataResponse)))]
fn delete_instance() {}

#[utoipa::path(post, path = "/v1/instances/sync-command", tag = "management", request_body = CommandRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = DataResponse<CmdResultWrapper>), (status = 429, body = ErrorBody)))]
fn sync_command() {}

#[utoipa::path(post, path = "/v1/instances/async-command", tag = "management", request_body = CommandRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = DataResponse<AsyncCommandInfo>)))]
fn async_command() {}

#[utoipa::path(get, path = "/v1/instances/tasks/{task_id}", tag = "management",
    params(("task_id" = String, Path), ("x-request-id" = String, Header)),
    responses((status = 200, body = DataResponse<JobDetailWrapper>)))]
fn get_task() {}

#[utoipa::path(put, path = "/v1/instances/video-setting", tag = "management", request_body = SetVideoConfigRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn set_video_config() {}

#[utoipa::path(post, path = "/v1/instances/batch-query-status", tag = "management", request_body = InstanceIdsRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = DataResponse<StatusResultWrapper>)))]
fn batch_query_status() {}

#[utoipa::path(post, path = "/v1/instances/batch-reset", tag = "management", request_body = InstanceIdsRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn batch_reset() {}

#[utoipa::path(post, path = "/v1/instances/reboot", tag = "management", request_body = InstanceIdsRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn batch_reboot() {}

#[utoipa::path(post, path = "/v1/instances/assign", tag = "management", request_body = UserInstancesRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn assign() {}

#[utoipa::path(post, path = "/v1/instances/unassign", tag = "management", request_body = UserInstancesRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn unassign() {}

#[utoipa::path(post, path = "/v1/instances/{instance_id}/auth", tag = "management",
    params(("instance_id" = String, Path)),
    responses((status = 200, body = DataResponse<DeviceTokenData>)))]
fn device_token() {}

#[utoipa::path(post, path = "/v1/instances/streaming/stop", tag = "use", request_body = InstanceIdRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn stop_streaming() {}

#[utoipa::path(post, path = "/v1/instances/session/release", tag = "use", request_body = InstanceIdRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn release_session() {}

#[utoipa::path(post, path = "/v1/instances/app/install", tag = "apps", request_body = InstallAppRequest,
    responses((status = 200, body = DataResponse<InstallAppData>)))]
fn install_app() {}

#[utoipa::path(post, path = "/v1/instances/prepare", tag = "use", request_body = PrepareRequest,
    responses((status = 200, body = DataResponse<PrepareStatusList>)))]
fn prepare() {}

#[utoipa::path(post, path = "/v1/instances/prepare-progress", tag = "use", request_body = ProgressRequest,
    responses((status = 200, body = DataResponse<Progress>)))]
fn prepare_progress() {}

#[utoipa::path(post, path = "/v1/instances/backup", tag = "use", request_body = BackupRequest,
    params(("x-request-id" = String, Header)),
    responses((status = 200, body = ErrorBody)))]
fn backup() {}

/// Every operation answers a refused or failed call with the error body: 400 (bad input), 401
/// (authentication, ownership), 403 (a caller not scoped to a project it may act in: `6002`)
/// and 500 (an internal failure). Added here rather than repeated in each operation's
/// `responses`, which list its success.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error_body = || {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            ResponseBuilder::new()
                .content("application/json", content)
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for status in ["400", "401", "403", "500"] {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_body().into());
                }
            }
        }
    }
}

/// Seed 001 §3.2: every call but login carries either an IAM token in `X-Auth-Token` or an
/// AK/SK signature, as the Huawei SDKs make it. OpenAPI has no HMAC scheme, so the signature is
/// described as the header it travels in; listed as alternatives in `security`.
struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "iam_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "A project-scoped IAM token from POST /v3/auth/tokens (a domain-scoped one only \
                 lists projects).",
            ))),
        );
        components.add_security_scheme(
            "aksk_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "AK/SK signing as huaweicloudsdkcore's Signer does it: `SDK-HMAC-SHA256 \
                 Access=<AK>, SignedHeaders=<names;...>, Signature=<hex>` over the canonical \
                 request, with `X-Sdk-Date` (within 15 minutes of the server's clock) and \
                 `X-Project-Id` (the project acted in) among the signed headers. Without \
                 `X-Project-Id` a call is domain-scoped (KOOPHONE.API.6002 on /v1 operations).",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "cloudphone tenant API", description = "Huawei CloudDevice (KooPhone) compatible API served by cloudphone-control."),
    paths(issue_token, list_auth_projects, list_instances, batch_show_sku, create_instance, delete_instance, sync_command,
        async_command, get_task, set_video_config, batch_query_status, batch_reset, batch_reboot, assign,
        unassign, device_token, stop_streaming, release_session, install_app, prepare, prepare_progress, backup),
    modifiers(&TokenAuth, &ErrorAnswers),
    security(("iam_token" = []), ("aksk_signature" = []))
)]
struct ApiDoc;

/// The document, built once.
pub(super) fn document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null);
        // IAM's login needs no token.
        if let Some(op) = doc.pointer_mut("/paths/~1v3~1auth~1tokens/post") {
            op["security"] = serde_json::json!([]);
        }
        allow_error_body_on_200(&mut doc);
        doc
    })
}

/// Where an operation requires `x-request-id`, the seeds answer its absence with HTTP 200 and
/// `KOOPHONE.API.0002`: such a 200 carries either the success body or the error body.
fn allow_error_body_on_200(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(|p| p.as_object_mut())
        .flat_map(|p| p.values_mut())
    {
        let needs_request_id = operation["parameters"]
            .as_array()
            .is_some_and(|params| params.iter().any(|p| p["name"] == "x-request-id"));
        if !needs_request_id {
            continue;
        }
        if let Some(schema) =
            operation.pointer_mut("/responses/200/content/application~1json/schema")
        {
            let success = schema.take();
            *schema =
                serde_json::json!({"anyOf": [success, {"$ref": "#/components/schemas/ErrorBody"}]});
        }
    }
}

pub(super) async fn serve() -> Response {
    axum::Json(document().clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_route_as_openapi_3_1() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 22);
        let schemes = doc
            .pointer("/components/securitySchemes")
            .and_then(|s| s.as_object())
            .expect("security schemes");
        assert_eq!(schemes["aksk_signature"]["name"], "Authorization");
        assert_eq!(
            doc["security"],
            serde_json::json!([{"iam_token": []}, {"aksk_signature": []}]),
            "a token or a signature"
        );
        assert!(
            doc.pointer("/components/schemas/InstanceRow/properties/running_status")
                .is_some()
        );
        assert_eq!(
            doc.pointer("/paths/~1v3~1auth~1tokens/post/security"),
            Some(&serde_json::json!([]))
        );
        let list_200 = doc.pointer("/paths/~1v1~1instances~1batch-query/get/responses/200/content/application~1json/schema");
        assert!(
            list_200.and_then(|s| s.get("anyOf")).is_some(),
            "0002 answers 200 with an error body"
        );
        let create_200 = doc.pointer(
            "/paths/~1v1~1instances~1create/post/responses/200/content/application~1json/schema",
        );
        assert!(
            create_200.and_then(|s| s.get("anyOf")).is_none(),
            "CreateInstance has no request-id rule"
        );
    }
}
