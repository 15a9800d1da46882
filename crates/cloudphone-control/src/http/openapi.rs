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
    DeviceTokenData, DeviceTokenRequest, InstanceIdRequest, InstanceIdsRequest, JobDetailWrapper,
    NullDataResponse, PrepareRequest, PrepareStatusList, Progress, ProgressRequest,
    SetVideoConfigRequest, StatusResultWrapper, UserInstancesRequest,
};
use cloudphone_api::status::{ErrorInfoBody, MessageField, Operation};
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

/// The operations whose caller must send `x-request-id` (`Caller` in the router; without it
/// `KOOPHONE.API.0002`), each with that header among its parameters: the rule is written once
/// here, not in every stub.
macro_rules! with_request_id {
    ($($method:ident $path:literal, $tag:literal, $body:ident => $responses:tt $name:ident;)*) => {$(
        #[utoipa::path($method, path = $path, tag = $tag, request_body = $body,
            params(("x-request-id" = String, Header)), responses $responses)]
        fn $name() {}
    )*};
}

with_request_id! {
    post "/v1/instances/sync-command", "management", CommandRequest
        => ((status = 200, body = DataResponse<CmdResultWrapper>), (status = 429, body = ErrorBody)) sync_command;
    post "/v1/instances/async-command", "management", CommandRequest
        => ((status = 200, body = DataResponse<AsyncCommandInfo>)) async_command;
    put "/v1/instances/video-setting", "management", SetVideoConfigRequest
        => ((status = 200, body = ErrorBody)) set_video_config;
    post "/v1/instances/batch-query-status", "management", InstanceIdsRequest
        => ((status = 200, body = DataResponse<StatusResultWrapper>)) batch_query_status;
    post "/v1/instances/batch-reset", "management", InstanceIdsRequest
        => ((status = 200, body = ErrorBody)) batch_reset;
    post "/v1/instances/reboot", "management", InstanceIdsRequest
        => ((status = 200, body = ErrorBody)) batch_reboot;
    post "/v1/instances/assign", "management", UserInstancesRequest
        => ((status = 200, body = ErrorBody)) assign;
    post "/v1/instances/unassign", "management", UserInstancesRequest
        => ((status = 200, body = ErrorBody)) unassign;
    post "/v1/instances/streaming/stop", "use", InstanceIdRequest
        => ((status = 200, body = ErrorBody)) stop_streaming;
    post "/v1/instances/session/release", "use", InstanceIdRequest
        => ((status = 200, body = ErrorBody)) release_session;
    post "/v1/instances/backup", "use", BackupRequest
        => ((status = 200, body = ErrorBody)) backup;
}

#[utoipa::path(get, path = "/v1/instances/tasks/{task_id}", tag = "management",
    params(("task_id" = String, Path), ("x-request-id" = String, Header)),
    responses((status = 200, body = DataResponse<JobDetailWrapper>)))]
fn get_task() {}

#[utoipa::path(post, path = "/v1/instances/{instance_id}/auth", tag = "management",
    request_body(content = Option<DeviceTokenRequest>,
        description = "Optional extension (docs/api-notes.md): the viewer's role (without it, an owner token), and `renew`: a live device token of the caller to extend instead of minting a new one."),
    params(("instance_id" = String, Path)),
    responses((status = 200, body = DataResponse<DeviceTokenData>)))]
fn device_token() {}

#[utoipa::path(post, path = "/v1/instances/app/install", tag = "apps", request_body = InstallAppRequest,
    responses((status = 200, body = DataResponse<InstallAppData>)))]
fn install_app() {}

#[utoipa::path(post, path = "/v1/instances/prepare", tag = "use", request_body = PrepareRequest,
    responses((status = 200, body = DataResponse<PrepareStatusList>)))]
fn prepare() {}

#[utoipa::path(post, path = "/v1/instances/prepare-progress", tag = "use", request_body = ProgressRequest,
    responses((status = 200, body = DataResponse<Progress>)))]
fn prepare_progress() {}

/// Every operation's error answers, from the same rule the router applies
/// (`cloudphone_api::status`): the error statuses its page lists (400, and 500 where listed),
/// 401 (authentication, ownership) and 403 (an AK/SK call outside the key's projects: `6002`)
/// on every operation, each with the body its page names (SyncCommand's 400 and 500 carry
/// `error_info`). Paths that are not CloudDevice operations (IAM's login and project list) get
/// 400, 401, 403 and 500 with the plain error body. Added here rather than repeated
/// in each operation's `responses`, which list its success.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error_body = |schema: &str| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build();
            ResponseBuilder::new()
                .content("application/json", content)
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("GET", &mut item.get),
                ("PUT", &mut item.put),
                ("POST", &mut item.post),
                ("DELETE", &mut item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let page = Operation::ALL
                    .into_iter()
                    .find(|o| o.route() == (method, path.as_str()));
                let statuses: Vec<(u16, MessageField)> = match page {
                    Some(page) => page
                        .page_statuses()
                        .iter()
                        .chain(&[401, 403])
                        .filter(|s| **s != 200)
                        .map(|s| (*s, page.error_message_field(*s)))
                        .collect(),
                    None => [400, 401, 403, 500]
                        .map(|status| (status, MessageField::ErrorMsg))
                        .to_vec(),
                };
                for (status, field) in statuses {
                    let schema = match field {
                        MessageField::ErrorInfo => "ErrorInfoBody",
                        MessageField::ErrorMsg => "ErrorBody",
                    };
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_body(schema).into());
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
    components(schemas(ErrorInfoBody)),
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

/// The appendix sends many codes with HTTP 200 (`0002` where a request id is required, `3002`,
/// `40010`, `62006`…; `cloudphone_api::status`), so an operation's 200 carries either its
/// success body or the error body.
fn allow_error_body_on_200(doc: &mut serde_json::Value) {
    for operation in Operation::ALL {
        let (method, path) = operation.route();
        let pointer = format!(
            "/paths/{}/{}/responses/200/content/application~1json/schema",
            path.replace('~', "~0").replace('/', "~1"),
            method.to_ascii_lowercase()
        );
        if let Some(schema) = doc.pointer_mut(&pointer) {
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
        // Every operation is documented, with its page's error statuses and bodies.
        for operation in Operation::ALL {
            let (method, path) = operation.route();
            let responses = doc
                .pointer(&format!(
                    "/paths/{}/{}/responses",
                    path.replace('/', "~1"),
                    method.to_ascii_lowercase()
                ))
                .unwrap_or_else(|| panic!("{} is documented", operation.name()));
            assert!(
                responses
                    .pointer("/200/content/application~1json/schema/anyOf")
                    .is_some(),
                "{}: 200 may carry an error body",
                operation.name()
            );
            assert_eq!(
                responses.get("500").is_some(),
                operation.page_statuses().contains(&500),
                "{}",
                operation.name()
            );
        }
        let sync_400 = doc.pointer(
            "/paths/~1v1~1instances~1sync-command/post/responses/400/content/application~1json/schema/$ref",
        );
        assert_eq!(
            sync_400,
            Some(&serde_json::json!("#/components/schemas/ErrorInfoBody"))
        );
    }
}
