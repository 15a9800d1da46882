//! The HTTP edge: routes, request ids, authentication and the mapping of errors onto the spec's
//! codes. Handlers are thin: parse into `cloudphone_api` types, act, answer.

mod apps;
mod console;
mod iam;
mod instances;
mod lifecycle_data;
mod live_domains;
mod management;
mod openapi;
mod usage;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, post};
use cloudphone_api::error::{ApiError, validate_request_id};
use cloudphone_api::status::Operation;
use tracing::Instrument;

use crate::AppState;
use crate::iam::{IamServiceError, Principal};

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
    let mut routes = Router::new();
    for operation in Operation::ALL {
        let (_, path) = operation.route();
        let page = middleware::map_response(move |response: Response| on_page(operation, response));
        routes = routes.route(path, handler(operation).layer(page));
    }
    routes
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
    metrics::counter!("cloudphone_http_requests_total", "status" => status.to_string())
        .increment(1);
    metrics::histogram!("cloudphone_http_request_seconds").record(started.elapsed().as_secs_f64());
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

async fn healthz() -> &'static str {
    "ok"
}

async fn render_metrics() -> String {
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
/// header present and well formed (0002/0003), then a valid, unexpired `X-Auth-Token` (6001).
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

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiFailure> {
    let token = parts
        .headers
        .get(&AUTH_TOKEN)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::AuthenticationFailed)?;
    match crate::iam::authenticate(state.store.as_ref(), token, state.clock.now_ms()).await {
        Ok(principal) => {
            tracing::Span::current().record("tenant_id", principal.tenant_id.as_str());
            Ok(principal)
        }
        Err(IamServiceError::InvalidToken | IamServiceError::WrongCredentials) => {
            Err(ApiError::AuthenticationFailed.into())
        }
        Err(error) => {
            tracing::error!(%error, "token check failed");
            Err(ApiError::Internal.into())
        }
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
    use crate::config::ControlConfig;
    use crate::nodes::Registry;
    use crate::store::{DomainRecord, NewTenant, Store};

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
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/control.db?mode=rwc", dir.path().display());
        config.store.url = url.clone();
        let store: Arc<dyn Store> = Arc::new(crate::store::open(&url).await.unwrap());
        store.migrate().await.unwrap();
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
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let registry = Registry::new(
            Arc::clone(&store),
            1_500,
            stop_rx,
            crate::nodes::tests::test_tls(dir.path()),
        );
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

    /// Moves tokio's clock forward by `by`. The store's I/O runs in real time (its pool
    /// timeouts would fire under paused time's auto-advance), so the clock is paused only to jump.
    async fn jump(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
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
}
