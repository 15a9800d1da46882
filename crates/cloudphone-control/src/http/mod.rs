//! The HTTP edge: routes, request ids, authentication and the mapping of errors onto the spec's
//! codes. Handlers are thin: parse into `cloudphone_api` types, act, answer.

mod apps;
mod console;
mod iam;
mod instances;
mod lifecycle_data;
pub(crate) mod live;
mod live_domains;
mod management;
mod openapi;
mod usage;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, post};
use cloudphone_api::error::{ApiError, validate_request_id};
use cloudphone_api::iam::IamError;
use cloudphone_api::status::Operation;
use cloudphone_usage::sign::{self, RequestParts};
use tracing::Instrument;

use crate::AppState;
use crate::iam::{CallerError, Identity, Principal};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");

/// Bodies larger than this are refused before parsing (the largest valid body, a
/// 100-instance SetVideoConfig, is far smaller).
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub(crate) use cloudphone_daemon::metrics_handle;

/// The handler of each CloudDevice operation. Its route is the operation's own (method and path
/// from `cloudphone_api::status::Operation::route`), under [`on_page`].
fn handler(operation: Operation) -> MethodRouter<Arc<AppState>> {
    let method = match operation.route().0 {
        "GET" => MethodFilter::GET,
        "PUT" => MethodFilter::PUT,
        _ => MethodFilter::POST,
    };
    match operation {
        Operation::SyncCommand => on(method, management::sync_command),
        Operation::AsyncCommand => on(method, management::async_command),
        Operation::GetTask => on(method, management::get_task),
        Operation::SetVideoConfig => on(method, management::set_video_config),
        Operation::BatchQueryStatus => on(method, management::batch_query_status),
        Operation::BatchReset => on(method, management::batch_reset),
        Operation::GetDeviceToken => on(method, management::device_token),
        Operation::AssignInstance => on(method, management::assign),
        Operation::UnassignInstance => on(method, management::unassign),
        Operation::ListInstances => on(method, instances::list),
        Operation::BatchRebootInstance => on(method, management::batch_reboot),
        Operation::BatchShowSku => on(method, instances::skus),
        Operation::CreateInstance => on(method, instances::create),
        Operation::DeleteInstance => on(method, management::delete),
        Operation::BatchPrepareInstances => on(method, lifecycle_data::prepare),
        Operation::ShowProgress => on(method, lifecycle_data::progress),
        Operation::BatchBackupInstances => on(method, lifecycle_data::backup),
        Operation::StopInstancesStreaming => on(method, management::stop_streaming),
        Operation::ReleaseInstancesSession => on(method, management::release_session),
        Operation::InstallApp => on(method, apps::install),
    }
}

/// The routes. Building them starts nothing: background work is `crate::run`'s.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new().route("/v3/auth/projects", get(iam::list_projects));
    for operation in Operation::ALL {
        let (_, path) = operation.route();
        let page = middleware::map_response(move |response: Response| on_page(operation, response));
        routes = routes.route(path, handler(operation).layer(page));
    }
    routes
        // Every route above takes a token or an AK/SK signature; the ones below authenticate
        // on their own terms (login, IAM credentials by token, the usage APIs' own errors).
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            verify_signature,
        ))
        .route("/v3/auth/tokens", post(iam::issue_token))
        .route(
            "/v3.0/OS-CREDENTIAL/credentials",
            post(usage::create_credential).get(usage::list_credentials),
        )
        .route(
            "/v3.0/OS-CREDENTIAL/credentials/{access_key}",
            axum::routing::delete(usage::delete_credential),
        )
        .route(
            "/v2/{project_id}/stats/transcode",
            get(usage::huawei_transcode),
        )
        .route("/v1/{project_id}/domain", get(live_domains::show))
        .route("/", post(usage::volcengine))
        .route("/console/", get(console::page))
        .route("/console", get(console::redirect))
        .route("/console/player", get(console::player))
        .route("/console/usage", get(console::usage))
        .route("/console/live", get(console::live_page))
        .route("/console/vs", axum::routing::any(live::console))
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Gives every request a span carrying its request id, echoes `x-request-id`, and counts it.
async fn observe(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let span = tracing::info_span!(
        "request",
        request_id = request_id.as_deref().unwrap_or("-"),
        method = %request.method(),
        path = %request.uri().path(),
        tenant_id = tracing::field::Empty,
    );
    // The route's template, not the path: ids in paths would make a series per instance.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served"
        )
    });
    crate::metrics::request_served(method, route, status, started.elapsed());
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// Liveness and readiness for load balancers and orchestrators: 200 when the database answers
/// within [`HEALTH_DB_TIMEOUT`], else 503. Unauthenticated, so the body names what failed and
/// nothing more: never the store URL (it can carry a password) or the driver's error text.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let database = match tokio::time::timeout(HEALTH_DB_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(error)) => {
            tracing::warn!(%error, "healthz: database check failed");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!("healthz: database check timed out");
            "timeout"
        }
    };
    let (nodes_up, nodes_down) = state.registry.health_counts();
    let ok = database == "ok";
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "database": database,
        "nodes_up": nodes_up,
        "nodes_down": nodes_down,
        "leader": *state.leader.borrow(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// How long `/healthz` waits for the database: a health check must answer quickly even when
/// the database hangs (a pool waiting on a dead server would otherwise wait 30 s).
const HEALTH_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

async fn render_metrics(State(state): State<Arc<AppState>>) -> String {
    let (up, down) = state.registry.health_counts();
    crate::metrics::set_nodes(up, down);
    crate::metrics::set_leader(*state.leader.borrow());
    metrics_handle().render()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ApiError::InvalidParameter("no such API".into()).body()),
    )
        .into_response()
}

/// An [`ApiError`] on its way out as the spec's status and `{error_code, error_msg}` body.
#[derive(Debug)]
pub(crate) struct ApiFailure(pub ApiError);

impl From<ApiError> for ApiFailure {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<crate::store::StoreError> for ApiFailure {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "store failure");
        Self(ApiError::Internal)
    }
}

impl From<crate::service::ServiceError> for ApiFailure {
    fn from(error: crate::service::ServiceError) -> Self {
        match error {
            crate::service::ServiceError::Refused(error) => Self(error),
            crate::service::ServiceError::Store(error) => error.into(),
        }
    }
}

impl IntoResponse for ApiFailure {
    /// The appendix's status and §3.3's body; on an operation's route, [`on_page`] then answers
    /// it as that page says. The error rides along in the response's extensions for that.
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = self.0.code(), "request failed");
        } else {
            tracing::info!(code = self.0.code(), error = %self.0, "request refused");
        }
        let mut response = (status, axum::Json(self.0.body())).into_response();
        response.extensions_mut().insert(self.0);
        response
    }
}

/// An operation's error answers as its page in seed 001 gives them: the status and body of
/// `cloudphone_api::status`'s one rule, whether the error came from an extractor (request id,
/// token, query) or from the handler.
async fn on_page(operation: Operation, response: Response) -> Response {
    let Some(error) = response.extensions().get::<ApiError>().cloned() else {
        return response;
    };
    let (status, body) = error.answer_on(operation);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut answer = (status, axum::Json(body)).into_response();
    // Headers the refusal set itself (`retry-after`…) stay; the body's own are the new body's.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer.extensions_mut().insert(error);
    answer
}

/// The authenticated tenant behind a `/v1/*` call whose seed page lists `x-request-id`: the
/// header present and well formed (0002/0003), then a valid, unexpired `X-Auth-Token` or AK/SK
/// signature (6001), scoped to one of the tenant's projects (6002).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
}

/// The authenticated tenant behind a call whose seed page lists only the token (GetDeviceToken,
/// BatchShowSku, CreateInstance, DeleteInstance, BatchPrepareInstances, ShowProgress): a client that
/// follows the documentation sends no `x-request-id` there, so none is required.
#[derive(Debug, Clone)]
pub(crate) struct TokenCaller {
    pub principal: Principal,
}

/// The outcome of checking a call's AK/SK signature, left in the request's extensions by
/// [`verify_signature`] for the extractors, which refuse in the operation's own order
/// (`x-request-id` first, as for token calls).
#[derive(Debug, Clone)]
struct SignedCaller(Result<Identity, CallerError>);

/// A request's headers as (name, value) pairs, as a signature check reads them.
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

/// A call that is AK/SK-signed and carries no token (a token, when present, wins).
fn is_signed_without_token(headers: &HeaderMap) -> bool {
    !headers.contains_key(&AUTH_TOKEN)
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with(sign::huawei::ALGORITHM))
}

/// Seed 001 §3.2: a call is authenticated by `X-Auth-Token` *or* by AK/SK signing. A call with
/// no token whose `Authorization` is `SDK-HMAC-SHA256 …` has its body read (the signature
/// covers it) and its signature checked by `iam::identify_signed`, the verifier the Huawei Live
/// routes use too; the body is then handed on unchanged. The route names no project, so the
/// signed `X-Project-Id` does. Calls with a token pass untouched.
async fn verify_signature(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_signed_without_token(request.headers()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiFailure(ApiError::InvalidParameter(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        )))
        .into_response();
    };
    let headers = header_pairs(&parts.headers);
    let signed_parts = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        headers: &headers,
        body: &bytes,
    };
    let outcome = crate::iam::identify_signed(&state, &signed_parts, None).await;
    parts.extensions.insert(SignedCaller(outcome));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Who a call is from: its `X-Auth-Token` if it has one, else its verified signature.
async fn identify(parts: &Parts, state: &AppState) -> Result<Identity, CallerError> {
    let identity = if let Some(token) = parts.headers.get(&AUTH_TOKEN) {
        let token = token
            .to_str()
            .map_err(|_| CallerError::Unauthenticated("X-Auth-Token is not text".into()))?;
        crate::iam::identify_token(state, token).await
    } else {
        match parts.extensions.get::<SignedCaller>() {
            Some(SignedCaller(outcome)) => outcome.clone(),
            None => Err(CallerError::Unauthenticated(
                "neither X-Auth-Token nor an SDK-HMAC-SHA256 signature".into(),
            )),
        }
    }?;
    tracing::Span::current().record("tenant_id", identity.tenant_id.as_str());
    Ok(identity)
}

/// `error` in one API's own refusals (each API has its codes for the three cases); why a
/// caller is not authenticated goes to the log, not to the caller.
fn refusal<E>(error: CallerError, unauthenticated: E, not_permitted: E, internal: E) -> E {
    match error {
        CallerError::Unauthenticated(why) => {
            tracing::info!(%why, "not authenticated");
            unauthenticated
        }
        CallerError::NotPermitted => not_permitted,
        CallerError::Internal => internal,
    }
}

/// The project-scoped caller of a CloudDevice operation: no (valid) token or signature is
/// `6001` (401); a signature naming a project that is not its tenant's, or a caller scoped to
/// the domain only, is `6002` (403, "没有许可").
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiFailure> {
    let identity = identify(parts, state).await.map_err(|error| {
        refusal(
            error,
            ApiError::AuthenticationFailed,
            ApiError::NoPermission("the project named is not one of the caller's".into()),
            ApiError::Internal,
        )
    })?;
    identity.in_project().ok_or_else(|| {
        ApiFailure(ApiError::NoPermission(
            "a domain-scoped caller cannot act on a project's instances: scope the token to a \
             project, or sign with X-Project-Id"
                .into(),
        ))
    })
}

/// The caller of an IAM call (`GET /v3/auth/projects`), by token of any scope or by signature;
/// refusals are IAM's (`IAM.0002` 401, `IAM.0003` 403).
#[derive(Debug, Clone)]
pub(crate) struct IamCaller(pub Identity);

impl FromRequestParts<Arc<AppState>> for IamCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        identify(parts, state)
            .await
            .map(IamCaller)
            .map_err(|error| {
                iam::iam_error(refusal(
                    error,
                    IamError::InvalidToken,
                    IamError::Forbidden("the project or domain named is not the caller's"),
                    IamError::Internal,
                ))
            })
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok());
        // ListInstances lists x-request-id among its query parameters; accept it there too.
        let query_id = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("x-request-id=").map(str::to_string))
        });
        validate_request_id(header.or(query_id.as_deref()))?;
        Ok(Caller {
            principal: authenticate(parts, state).await?,
        })
    }
}

impl FromRequestParts<Arc<AppState>> for TokenCaller {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(TokenCaller {
            principal: authenticate(parts, state).await?,
        })
    }
}

/// Parses a JSON body, turning any syntax or type error into `KOOPHONE.API.1000`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| {
        ApiFailure(ApiError::InvalidParameter(format!(
            "invalid JSON body: {e}"
        )))
    })
}

/// A query string parsed into `T`; one that does not parse is `KOOPHONE.API.1000` with the
/// parser's reason.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(query) = axum::extract::Query::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
        Ok(Self(query))
    }
}

/// Answers `State` extraction for handlers that need the whole app.
pub(crate) type AppStateRef = State<Arc<AppState>>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::clock::Clock;
    use crate::clock::jump;
    use crate::config::ControlConfig;
    use crate::store::{DomainRecord, NewTenant};

    /// Sends one request through the router; answers the status and the JSON body (or null).
    async fn send(app: &Router, request: Request<Body>) -> (u16, serde_json::Value, Response) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json, Response::from_parts(parts, Body::empty()))
    }

    fn list(token: &str) -> Request<Body> {
        Request::get("/v1/instances/batch-query?page_no=1&page_size=1")
            .header("x-auth-token", token)
            .header("x-request-id", "req-1")
            .body(Body::empty())
            .unwrap()
    }

    /// A router over a fresh SQLite store in a temporary directory (which also holds the usage
    /// secrets key) with tenant `acme` (id `t1`), user `dev`, project `cn-north-7` (id `p1`) and
    /// streaming domain `live.acme.example`, reading `clock`.
    async fn tenant_app(config: ControlConfig, clock: Clock) -> (Router, tempfile::TempDir) {
        let (state, dir) = tenant_state(config, clock).await;
        (router(state), dir)
    }

    /// [`tenant_app`]'s state, for tests that reach behind the router.
    async fn tenant_state(
        mut config: ControlConfig,
        clock: Clock,
    ) -> (Arc<AppState>, tempfile::TempDir) {
        let (store, dir) = crate::store::test_store().await;
        config.store.url = crate::store::test_url(dir.path());
        store
            .create_tenant(&NewTenant {
                tenant_id: "t1".into(),
                domain_name: "acme".into(),
                user_id: "u1".into(),
                user_name: "dev".into(),
                password_hash: crate::iam::hash_password("correct-horse-1").unwrap(),
                project_id: "p1".into(),
                project_name: "cn-north-7".into(),
                created_at_ms: 0,
            })
            .await
            .unwrap();
        store
            .create_domain(&DomainRecord {
                domain: "live.acme.example".into(),
                tenant_id: "t1".into(),
                is_default: true,
                created_at_ms: 0,
                deleted_at_ms: None,
            })
            .await
            .unwrap();
        let registry = crate::nodes::tests::test_registry(Arc::clone(&store), 1_500, dir.path());
        (AppState::new(config, store, registry, clock), dir)
    }

    /// A login request for `dev` with `password`.
    fn login_request(password: &str) -> Request<Body> {
        let login = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "dev", "password": password, "domain": {"name": "acme"}}}},
            "scope": {"project": {"name": "cn-north-7"}}}});
        Request::post("/v3/auth/tokens")
            .header("content-type", "application/json")
            .body(Body::from(login.to_string()))
            .unwrap()
    }

    /// Logs `dev` in; answers the token.
    async fn login(app: &Router) -> String {
        let (status, _, response) = send(app, login_request("correct-horse-1")).await;
        assert_eq!(status, 201);
        response.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// An error on its way out through an operation's page: `9999` is 500 where the page lists
    /// 500 and 400 where it lists only 200/400; SyncCommand's says `error_info`; headers the
    /// refusal set survive.
    #[tokio::test]
    async fn errors_are_answered_as_their_page_says() {
        let answer = |operation: Operation, error: ApiError| async move {
            let mut response = ApiFailure(error).into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("3"));
            let response = on_page(operation, response).await;
            let status = response.status().as_u16();
            let retry = response.headers()["retry-after"].clone();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(retry, "3");
            (status, body)
        };
        for (operation, status) in [
            (Operation::ListInstances, 500),
            (Operation::BatchPrepareInstances, 500),
            (Operation::GetDeviceToken, 400),
            (Operation::BatchReset, 400),
            (Operation::CreateInstance, 400),
            (Operation::DeleteInstance, 400),
            (Operation::BatchShowSku, 400),
            (Operation::InstallApp, 400),
        ] {
            let (got, body) = answer(operation, ApiError::Internal).await;
            assert_eq!(
                (got, body),
                (
                    status,
                    serde_json::json!({"error_code": "KOOPHONE.API.9999", "error_msg": "internal error"})
                ),
                "{operation:?}"
            );
        }
        let (status, body) = answer(Operation::SyncCommand, ApiError::Internal).await;
        assert_eq!(
            (status, body),
            (
                500,
                serde_json::json!({"error_code": "KOOPHONE.API.9999", "error_info": "internal error"})
            )
        );
        let (status, body) = answer(
            Operation::CreateInstance,
            ApiError::InsufficientInventory("short".into()),
        )
        .await;
        assert_eq!(
            (status, &body["error_code"]),
            (200, &serde_json::json!("KOOPHONE.API.40010"))
        );
    }

    /// A token works until its TTL is over, then is `KOOPHONE.API.6001` with 401. Time moves
    /// by `tokio::time::advance`, not by waiting on the wall clock.
    #[tokio::test]
    async fn tokens_expire_in_tokio_time() {
        let mut config = ControlConfig::default();
        config.iam.token_ttl_secs = 1;
        let (app, _dir) = tenant_app(config, Clock::tokio()).await;
        let token = login(&app).await;

        let (status, body, _) = send(&app, list(&token)).await;
        assert_eq!((status, body["error_code"].as_str()), (200, Some("0")));

        jump(Duration::from_millis(1_300)).await;
        let (status, body, _) = send(&app, list(&token)).await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (401, Some("KOOPHONE.API.6001")),
            "an expired token is refused"
        );
    }

    /// Login backoff on tokio's clock with the default rules: wrong passwords are answered
    /// `IAM.0002` until the free ones are used up, then `429` with `Retry-After` — before the
    /// 40th — and even the right password is refused while locked; once `Retry-After` has
    /// passed, the right password logs in. (The store's I/O runs in real time, so the test
    /// does not probe the lock's last millisecond: `core::login_backoff`'s tests do that.)
    #[tokio::test]
    async fn login_backoff_in_tokio_time() {
        let config = ControlConfig::default();
        let free = config.iam.login_free_failures;
        let (app, _dir) = tenant_app(config, Clock::tokio()).await;
        let mut refused_at = None;
        for n in 1..=40 {
            let (status, body, response) = send(&app, login_request("wrong-horse")).await;
            if status == 429 {
                assert_eq!(body["error_code"], "APIGW.0308", "{body}");
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                refused_at = Some((n, retry));
                break;
            }
            assert_eq!(
                (status, body["error_code"].as_str()),
                (401, Some("IAM.0002"))
            );
        }
        let (n, retry) = refused_at.expect("a 429 before the 40th wrong password");
        assert_eq!(n, free + 2, "the first attempt after the first lock");
        assert!(retry >= 1, "{retry}");

        // Locked: the right password is refused too, until Retry-After has passed.
        let (status, _, _) = send(&app, login_request("correct-horse-1")).await;
        assert_eq!(status, 429);
        jump(Duration::from_secs(retry)).await;
        login(&app).await;
        // The right password reset the user's count: one wrong one is free again.
        let (status, _, _) = send(&app, login_request("wrong-horse")).await;
        assert_eq!(status, 401);
    }

    /// The bounded password-check pool: with its one slot busy, a login waits
    /// `login_queue_timeout_ms` (on tokio's paused clock: no store I/O happens before a slot is
    /// had) and is refused with 429 and `Retry-After`; with the slot free it logs in.
    #[tokio::test]
    async fn logins_past_the_password_check_pool_wait_then_get_429() {
        let mut config = ControlConfig::default();
        config.iam.argon2_concurrency = 1;
        let (state, _dir) = tenant_state(config, Clock::tokio()).await;
        let app = router(Arc::clone(&state));
        let busy = state.login_guard.take_slot().await;
        tokio::time::pause();
        let waited = tokio::time::Instant::now();
        let (status, body, response) = send(&app, login_request("correct-horse-1")).await;
        let waited = waited.elapsed();
        tokio::time::resume();
        assert_eq!(
            (status, body["error_code"].as_str()),
            (429, Some("APIGW.0308"))
        );
        assert_eq!(response.headers()["retry-after"], "1");
        // The default queue timeout (tokio's timer rounds up to its next millisecond).
        assert!(
            (Duration::from_secs(10)..Duration::from_millis(10_010)).contains(&waited),
            "{waited:?}"
        );
        drop(busy);
        login(&app).await;
    }

    /// A signed Volcengine `DescribeLiveTranscodeData` over the last day, dated `now_ms`.
    fn volc(ak: &str, sk: &str, now_ms: i64) -> Request<Body> {
        use cloudphone_usage::sign::{self, RequestParts};
        use sha2::Digest;
        let query = "Action=DescribeLiveTranscodeData&Version=2023-01-01";
        let body = serde_json::json!({
            "StartTime": cloudphone_usage::volc::format_time(now_ms - cloudphone_usage::DAY_MS, 0),
            "EndTime": cloudphone_usage::volc::format_time(now_ms, 0)})
        .to_string();
        let date = cloudphone_usage::huawei::format_time(now_ms).replace(['-', ':'], "");
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            ("host".into(), "127.0.0.1".into()),
            (
                "x-content-sha256".into(),
                hex::encode(sha2::Sha256::digest(&body)),
            ),
            ("x-date".into(), date),
        ];
        let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let parts = RequestParts {
            method: "POST",
            path: "/",
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        let auth = sign::volc::sign(&parts, ak, sk, "cn-north-1", &signed).unwrap();
        headers.push(("authorization".into(), auth));
        let mut request = Request::post(format!("/?{query}"));
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        request.body(Body::from(body)).unwrap()
    }

    /// The document's budget, 100 requests per user per sliding minute, in tokio time: the
    /// 101st is refused (`FlowLimitExceeded`, 429) until the minute since the first request is
    /// over, then accepted. The HTTP test against a live control (`usage_rules`) checks the
    /// budget, its sharing between a user's keys and the answer's body; this one moves the
    /// clock instead of waiting out the window.
    #[tokio::test]
    async fn volcengine_rate_window_reopens_in_tokio_time() {
        let clock = Clock::tokio();
        let config = ControlConfig::default();
        let window = Duration::from_millis(config.usage.volcengine_rate_window_ms);
        assert_eq!(
            (config.usage.volcengine_rate_limit, window),
            (100, Duration::from_secs(60))
        );
        let (app, _dir) = tenant_app(config, clock).await;
        let token = login(&app).await;
        let request = Request::post("/v3.0/OS-CREDENTIAL/credentials")
            .header("x-auth-token", &token)
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::json!({"credential": {"description": "limits"}}).to_string(),
            ))
            .unwrap();
        let (status, created, _) = send(&app, request).await;
        assert_eq!(status, 201, "{created}");
        let field = |name: &str| created["credential"][name].as_str().unwrap().to_string();
        let (ak, sk) = (field("access"), field("secret"));
        let call = |app: Router| {
            let request = volc(&ak, &sk, clock.now_ms());
            async move { send(&app, request).await }
        };
        let refused = |(status, body, _): (u16, serde_json::Value, Response), when: &str| {
            assert_eq!(status, 429, "{when}: {body}");
            assert_eq!(
                body["ResponseMetadata"]["Error"]["Code"], "FlowLimitExceeded",
                "{when}: {body}"
            );
        };

        let first = tokio::time::Instant::now();
        for n in 1..=100 {
            let (status, body, _) = call(app.clone()).await;
            assert_eq!(status, 200, "request {n}: {body}");
        }
        refused(call(app.clone()).await, "the 101st");
        // Just inside the minute of the first request: still refused; just past it: accepted.
        jump(first + window - Duration::from_millis(300) - tokio::time::Instant::now()).await;
        refused(call(app.clone()).await, "300 ms before the window ends");
        jump(first + window + Duration::from_millis(300) - tokio::time::Instant::now()).await;
        let (status, body, _) = call(app.clone()).await;
        assert_eq!(status, 200, "after the window: {body}");
    }

    /// A Huawei `GET /v2/p1/stats/transcode?publish_domain=live.acme.example&{query}` with a
    /// token; answers the status and body.
    async fn huawei(app: &Router, token: &str, query: &str) -> (u16, serde_json::Value) {
        let request = Request::get(format!(
            "/v2/p1/stats/transcode?publish_domain=live.acme.example&{query}"
        ))
        .header("x-auth-token", token)
        .body(Body::empty())
        .unwrap();
        let (status, body, response) = send(app, request).await;
        assert!(response.headers().contains_key("x-request-id"));
        (status, body)
    }

    /// The `time` of each hour listed in a Huawei answer.
    fn hours(status: u16, body: &serde_json::Value) -> Vec<String> {
        assert_eq!(status, 200, "{body}");
        body["transcode_data_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["time"].as_str().unwrap().to_string())
            .collect()
    }

    /// Huawei's rules relative to the current hour (seed 004), with "now" at a chosen half past
    /// the hour so no hour boundary can fall inside the test (the live-control test in
    /// `usage_rules` used to retry until the hour did not change while it ran).
    #[tokio::test]
    async fn huawei_hours_relative_to_now_on_a_controlled_clock() {
        use cloudphone_usage::huawei::format_time as iso;
        use cloudphone_usage::{DAY_MS, HOUR_MS};
        const MIN_MS: i64 = 60_000;
        // 2026-11-20T07:30:00Z.
        let hour = 1_795_159_800_000 - 30 * MIN_MS;
        let (app, _dir) = tenant_app(
            ControlConfig::default(),
            Clock::tokio_at(hour + 30 * MIN_MS),
        )
        .await;
        let token = login(&app).await;
        let q = |start: &str, end: &str| format!("start_time={start}&end_time={end}");

        // Both empty: the last 24 hours up to now.
        let (status, body) = huawei(&app, &token, "").await;
        let listed = hours(status, &body);
        assert_eq!(listed.len(), 25);
        assert_eq!(
            (listed[0].as_str(), listed[24].as_str()),
            (iso(hour - DAY_MS).as_str(), iso(hour).as_str())
        );
        // end_time empty: now. Empty strings count as absent.
        let (status, body) = huawei(
            &app,
            &token,
            &format!(
                "start_time={}&end_time=",
                iso(hour - 2 * HOUR_MS + 5 * MIN_MS)
            ),
        )
        .await;
        assert_eq!(
            hours(status, &body),
            [iso(hour - 2 * HOUR_MS), iso(hour - HOUR_MS), iso(hour)]
        );
        // Hours after now are not listed.
        let (status, body) = huawei(
            &app,
            &token,
            &q(&iso(hour - HOUR_MS), &iso(hour + 5 * HOUR_MS)),
        )
        .await;
        assert_eq!(hours(status, &body), [iso(hour - HOUR_MS), iso(hour)]);

        // History ≤ 1 year: floored start_time exactly 365 days before this hour is accepted,
        // one second earlier (the hour before) is not.
        let oldest = hour - 365 * DAY_MS;
        let (status, body) = huawei(&app, &token, &q(&iso(oldest), &iso(oldest + HOUR_MS))).await;
        assert_eq!(hours(status, &body), [iso(oldest), iso(oldest + HOUR_MS)]);
        let (status, body) = huawei(
            &app,
            &token,
            &q(&iso(oldest - 1000), &iso(oldest + HOUR_MS)),
        )
        .await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (400, Some("LIVE.100011001")),
            "{body}"
        );
        let message = body["error_msg"].as_str().unwrap_or_default();
        assert!(message.contains("more than one year ago"), "{message:?}");
        assert!(body.get("transcode_data_list").is_none());
        assert!(body.get("summary_list").is_none());
    }

    /// A new AK/SK of `dev` (`t1`), through IAM's create-permanent-access-key form.
    async fn access_key(app: &Router, token: &str) -> (String, String) {
        let request = Request::post("/v3.0/OS-CREDENTIAL/credentials")
            .header("x-auth-token", token)
            .header("content-type", "application/json")
            .body(Body::from(
                serde_json::json!({"credential": {"description": "signing"}}).to_string(),
            ))
            .unwrap();
        let (status, created, _) = send(app, request).await;
        assert_eq!(status, 201, "{created}");
        let field = |name: &str| created["credential"][name].as_str().unwrap().to_string();
        (field("access"), field("secret"))
    }

    /// How a test request is signed.
    struct Signing<'a> {
        ak: &'a str,
        sk: &'a str,
        /// The `X-Sdk-Date` written, in Unix ms.
        date_ms: i64,
        /// `X-Project-Id`, signed like `BasicCredentials` does.
        project: Option<&'a str>,
        /// Extra headers, sent but left out of `SignedHeaders`.
        unsigned: &'a [(&'a str, &'a str)],
    }

    /// `method path_and_query` with `body`, signed as huaweicloudsdkcore's `Signer` signs (the
    /// fleet test `aksk` runs the SDK itself), with an `x-request-id`.
    fn signed(method: &str, uri: &str, body: &str, how: &Signing<'_>) -> Request<Body> {
        use cloudphone_usage::sign::{RequestParts, huawei};
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let date = cloudphone_usage::huawei::format_time(how.date_ms).replace(['-', ':'], "");
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            ("host".into(), "127.0.0.1".into()),
            ("x-request-id".into(), "req-signed".into()),
            ("x-sdk-date".into(), date),
        ];
        if let Some(project) = how.project {
            headers.push(("x-project-id".into(), project.into()));
        }
        let names: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
        let parts = RequestParts {
            method,
            path,
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        let auth = huawei::sign(&parts, how.ak, how.sk, &names).unwrap();
        headers.push(("authorization".into(), auth));
        for (k, v) in how.unsigned {
            headers.push(((*k).into(), (*v).into()));
        }
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        request.body(Body::from(body.to_string())).unwrap()
    }

    const LIST: &str = "/v1/instances/batch-query?page_no=1&page_size=1";

    /// Seed 001 §3.2's AK/SK signing on the CloudDevice routes, read on a controlled clock: a
    /// signature made up to 15 minutes either side of now is taken, one older or newer is
    /// 6001/401 like a wrong secret, an unknown key, a body changed after signing or an
    /// unsigned `X-Project-Id`; a project that is not the key's tenant's (another tenant's, or
    /// none at all) is 6002/403, as is a signature naming no project; refusals keep the
    /// operation's order (`x-request-id` first); a signed body reaches the handler whole.
    #[tokio::test]
    async fn signed_calls_on_a_controlled_clock() {
        const NOW: i64 = 1_795_159_800_000;
        const MIN: i64 = 60_000;
        let (state, _dir) = tenant_state(ControlConfig::default(), Clock::tokio_at(NOW)).await;
        let mut other = NewTenant {
            tenant_id: "t2".into(),
            domain_name: "other".into(),
            user_id: "u2".into(),
            user_name: "dev".into(),
            password_hash: String::new(),
            project_id: "p2".into(),
            project_name: "cn-north-7".into(),
            created_at_ms: 0,
        };
        other.password_hash = crate::iam::hash_password("correct-horse-2").unwrap();
        state.store.create_tenant(&other).await.unwrap();
        let app = router(state);
        let token = login(&app).await;
        let (ak, sk) = access_key(&app, &token).await;
        let how = |date_ms: i64| Signing {
            ak: &ak,
            sk: &sk,
            date_ms,
            project: Some("p1"),
            unsigned: &[],
        };
        let code = |(status, body, _): (u16, serde_json::Value, Response)| {
            (
                status,
                body["error_code"].as_str().unwrap_or("-").to_string(),
            )
        };
        let ok = (200, "0".to_string());
        let unauthenticated = (401, "KOOPHONE.API.6001".to_string());
        let forbidden = (403, "KOOPHONE.API.6002".to_string());

        for (offset, expected, why) in [
            (0, &ok, "now"),
            (-14 * MIN, &ok, "14 min old"),
            (14 * MIN, &ok, "14 min ahead"),
            (-16 * MIN, &unauthenticated, "16 min old"),
            (16 * MIN, &unauthenticated, "16 min ahead"),
        ] {
            let got = code(send(&app, signed("GET", LIST, "", &how(NOW + offset))).await);
            assert_eq!(&got, expected, "signed {why}");
        }
        let wrong_sk = Signing {
            sk: "not-the-secret",
            ..how(NOW)
        };
        let unknown = Signing {
            ak: "CPAKNOSUCHKEY000000",
            ..how(NOW)
        };
        let unsigned_project = Signing {
            project: None,
            unsigned: &[("x-project-id", "p1")],
            ..how(NOW)
        };
        for (signing, why) in [
            (&wrong_sk, "wrong secret"),
            (&unknown, "unknown key"),
            (&unsigned_project, "X-Project-Id outside SignedHeaders"),
        ] {
            let got = code(send(&app, signed("GET", LIST, "", signing)).await);
            assert_eq!(got, unauthenticated, "{why}");
        }
        let mut tampered = signed("GET", LIST, "", &how(NOW));
        *tampered.uri_mut() = "/v1/instances/batch-query?page_no=1&page_size=2"
            .parse()
            .unwrap();
        assert_eq!(
            code(send(&app, tampered).await),
            unauthenticated,
            "query changed"
        );
        // A signed POST: the body reaches the handler (1001: the named instance is not the
        // caller's); the same signature over another body is refused.
        let status_of =
            |body: &str| signed("POST", "/v1/instances/batch-query-status", body, &how(NOW));
        let body = serde_json::json!({"instance_ids": ["iRJEVP96"]}).to_string();
        assert_eq!(
            code(send(&app, status_of(&body)).await),
            (401, "KOOPHONE.API.1001".to_string())
        );
        let (parts, _) = status_of(&body).into_parts();
        let swapped = Request::from_parts(
            parts,
            Body::from(serde_json::json!({"instance_ids": ["iRJEVP97"]}).to_string()),
        );
        assert_eq!(
            code(send(&app, swapped).await),
            unauthenticated,
            "body changed"
        );

        for (project, why) in [
            (Some("p2"), "another tenant's project"),
            (Some("p404"), "a project that exists nowhere"),
            (None, "no project: domain-scoped"),
        ] {
            let signing = Signing {
                project,
                ..how(NOW)
            };
            let got = code(send(&app, signed("GET", LIST, "", &signing)).await);
            assert_eq!(got, forbidden, "{why}");
        }

        // The operation's own order: a missing x-request-id is 0002 before any signature check.
        let (mut parts, body) = signed("GET", LIST, "", &how(NOW - 20 * MIN)).into_parts();
        parts.headers.remove("x-request-id");
        let got = code(send(&app, Request::from_parts(parts, body)).await);
        assert_eq!(got, (200, "KOOPHONE.API.0002".to_string()));
        // A token still wins over a signature sent alongside it.
        let mut both = signed("GET", LIST, "", &wrong_sk);
        both.headers_mut()
            .insert("x-auth-token", token.parse().unwrap());
        assert_eq!(code(send(&app, both).await), ok);
    }

    /// `POST /v3/auth/tokens` with `scope.domain` (the user's own domain, by name or id) issues
    /// a domain-scoped token: IAM's body names the `domain` and no `project`. It lists the
    /// tenant's projects and manages the user's keys, but a CloudDevice call with it is
    /// `6002`/403 and a Huawei Live call `APIGW.0302`/403. Another domain is `IAM.0002`.
    #[tokio::test]
    async fn domain_scoped_tokens_list_projects_but_act_on_none() {
        let (state, _dir) = tenant_state(ControlConfig::default(), Clock::tokio()).await;
        state
            .store
            .create_project(
                &crate::store::ProjectRecord {
                    project_id: "p1b".into(),
                    tenant_id: "t1".into(),
                    name: "cn-east-3".into(),
                },
                5,
            )
            .await
            .unwrap();
        let app = router(state);
        let domain_login = |domain: serde_json::Value| {
            let login = serde_json::json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "dev", "password": "correct-horse-1", "domain": {"name": "acme"}}}},
                "scope": {"domain": domain}}});
            Request::post("/v3/auth/tokens")
                .header("content-type", "application/json")
                .body(Body::from(login.to_string()))
                .unwrap()
        };
        let (status, body, _) = send(&app, domain_login(serde_json::json!({"id": "nope"}))).await;
        assert_eq!(
            (status, &body["error_code"]),
            (401, &serde_json::json!("IAM.0002"))
        );
        let (status, _, _) = send(&app, domain_login(serde_json::json!({"id": "t1"}))).await;
        assert_eq!(status, 201);
        let (status, body, response) =
            send(&app, domain_login(serde_json::json!({"name": "acme"}))).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            body["token"]["domain"],
            serde_json::json!({"id": "t1", "name": "acme"})
        );
        assert!(body["token"].get("project").is_none(), "{body}");
        let domain_token = response.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        let project_token = login(&app).await;

        let projects = |token: Option<&str>| {
            let mut request = Request::get("/v3/auth/projects");
            if let Some(token) = token {
                request = request.header("x-auth-token", token);
            }
            request.body(Body::empty()).unwrap()
        };
        for token in [&domain_token, &project_token] {
            let (status, body, _) = send(&app, projects(Some(token))).await;
            assert_eq!(status, 200, "{body}");
            let listed: Vec<_> = body["projects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
                .collect();
            assert_eq!(listed, [("p1", "cn-north-7"), ("p1b", "cn-east-3")]);
            let first = &body["projects"][0];
            assert_eq!(
                (&first["domain_id"], &first["enabled"], &first["is_domain"]),
                (
                    &serde_json::json!("t1"),
                    &serde_json::json!(true),
                    &serde_json::json!(false)
                )
            );
            assert!(
                first["links"]["self"]
                    .as_str()
                    .unwrap()
                    .ends_with("/v3/projects/p1")
            );
            assert!(
                body["links"]["self"]
                    .as_str()
                    .unwrap()
                    .ends_with("/v3/auth/projects")
            );
        }
        let (status, body, _) = send(&app, projects(None)).await;
        assert_eq!(
            (status, &body["error_code"]),
            (401, &serde_json::json!("IAM.0002"))
        );
        let (status, body, _) = send(&app, projects(Some("CPT1unknown"))).await;
        assert_eq!(
            (status, &body["error_code"]),
            (401, &serde_json::json!("IAM.0002"))
        );

        let (status, body, _) = send(&app, list(&domain_token)).await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (403, Some("KOOPHONE.API.6002")),
            "{body}"
        );
        let (status, body) = huawei(&app, &domain_token, "").await;
        assert_eq!(
            (status, body["error_code"].as_str()),
            (403, Some("APIGW.0302"))
        );
        let keys = Request::get("/v3.0/OS-CREDENTIAL/credentials")
            .header("x-auth-token", &domain_token)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, keys).await.0, 200);
    }

    /// All 20 CloudDevice operations take an AK/SK signature in place of the token: signed with
    /// the key's project, each answers exactly what the token gets (status and code, past
    /// authentication); signed without a project each is `6002`/403; with neither it is
    /// `6001`/401.
    #[tokio::test]
    async fn every_clouddevice_operation_takes_a_signature_in_place_of_a_token() {
        let clock = Clock::tokio();
        let (app, _dir) = tenant_app(ControlConfig::default(), clock).await;
        let token = login(&app).await;
        let (ak, sk) = access_key(&app, &token).await;
        let id = "iRJEVP96";
        let ids = serde_json::json!({"instance_ids": [id]}).to_string();
        let one = serde_json::json!({"instance_id": id}).to_string();
        let users = serde_json::json!({"user_instances": [{"user_id": "u-1", "instance_id": id}]})
            .to_string();
        let command = serde_json::json!({"command": "ls", "instance_ids": [id]}).to_string();
        let operations: Vec<(&str, String, String)> = vec![
            ("GET", LIST.into(), String::new()),
            ("GET", "/v1/instances/sku?type=0".into(), String::new()),
            ("POST", "/v1/instances/create".into(), order_body()),
            (
                "POST",
                "/v1/instances/delete".into(),
                serde_json::json!({"instanceIdList": [id]}).to_string(),
            ),
            ("POST", "/v1/instances/sync-command".into(), command.clone()),
            ("POST", "/v1/instances/async-command".into(), command),
            ("GET", "/v1/instances/tasks/ZGCA0000".into(), String::new()),
            (
                "POST",
                "/v1/instances/batch-query-status".into(),
                ids.clone(),
            ),
            ("POST", "/v1/instances/batch-reset".into(), ids.clone()),
            (
                "POST",
                "/v1/instances/app/install".into(),
                serde_json::json!({"instance_ids": [id]}).to_string(),
            ),
            (
                "PUT",
                "/v1/instances/video-setting".into(),
                serde_json::json!({"instance_ids": [id], "video_configs": []}).to_string(),
            ),
            ("POST", "/v1/instances/reboot".into(), ids.clone()),
            ("POST", "/v1/instances/backup".into(), ids),
            (
                "POST",
                "/v1/instances/prepare".into(),
                serde_json::json!({"user_id": "u-1", "instance_ids": [id]}).to_string(),
            ),
            (
                "POST",
                "/v1/instances/prepare-progress".into(),
                serde_json::json!({"user_id": "u-1", "instance_id": id}).to_string(),
            ),
            ("POST", "/v1/instances/assign".into(), users.clone()),
            ("POST", "/v1/instances/unassign".into(), users),
            ("POST", format!("/v1/instances/{id}/auth"), "{}".into()),
            ("POST", "/v1/instances/streaming/stop".into(), one.clone()),
            ("POST", "/v1/instances/session/release".into(), one),
        ];
        assert_eq!(operations.len(), 20);
        let answer = |(status, body, _): (u16, serde_json::Value, Response)| {
            (
                status,
                body["error_code"].as_str().unwrap_or("-").to_string(),
            )
        };
        for (method, uri, body) in &operations {
            let with_token = Request::builder()
                .method(*method)
                .uri(uri.as_str())
                .header("x-auth-token", &token)
                .header("x-request-id", "req-token")
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let by_token = answer(send(&app, with_token).await);
            let signing = |project| Signing {
                ak: &ak,
                sk: &sk,
                date_ms: clock.now_ms(),
                project,
                unsigned: &[],
            };
            let by_key = answer(send(&app, signed(method, uri, body, &signing(Some("p1")))).await);
            assert_eq!(by_key, by_token, "{method} {uri}: signed vs token");
            assert!(
                !["KOOPHONE.API.6001", "KOOPHONE.API.6002"].contains(&by_key.1.as_str()),
                "{method} {uri}: {by_key:?}"
            );
            let unscoped = answer(send(&app, signed(method, uri, body, &signing(None))).await);
            assert_eq!(
                unscoped,
                (403, "KOOPHONE.API.6002".to_string()),
                "{method} {uri}"
            );
            let bare = Request::builder()
                .method(*method)
                .uri(uri.as_str())
                .header("x-request-id", "req-bare")
                .body(Body::from(body.clone()))
                .unwrap();
            assert_eq!(
                answer(send(&app, bare).await),
                (401, "KOOPHONE.API.6001".to_string()),
                "{method} {uri}"
            );
        }
    }

    /// A CreateInstance body in the seeds' spelling (one x11 720P phone).
    fn order_body() -> String {
        serde_json::json!({"os": "AOSP11", "instanceSkuld": "kp.x11.720p", "bandSkuld": "kp.bandwidth",
            "regionld": "cn-north-7", "instanceNamePrefix": "signed", "bandSize": 4, "count": 1,
            "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1, "isAutoRenew": 0}})
        .to_string()
    }
}
