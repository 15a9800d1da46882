//! The live edge's API listener (`[live_api] listen`): `GET /` and `POST /` with the
//! parameters in the query and/or a form body, as the document's signed URLs and the official
//! SDK send them. The handler gathers the request's parts, `service::live` does the rest, and
//! every answer (refusals included) carries `RequestId`, in the body and as
//! `x-acs-request-id`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use cloudphone_vs_api::error::VsError;
use cloudphone_vs_api::sign::decode_form;
use tracing::Instrument;

use crate::AppState;
use crate::service::live::{self, Incoming};

/// The largest request accepted (a 100-name CreateRtmpGroupStreamurls is far smaller).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The API's router: one endpoint, `/` (GET and POST; any other method or path is an unknown
/// Action, answered like every refusal).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(serve))
        .fallback(unknown)
        .with_state(state)
}

/// A request id in Alibaba's shape (upper-case UUID).
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_ascii_uppercase()
}

fn answer(status: StatusCode, request_id: &str, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-acs-request-id", value);
    }
    response
}

fn refusal(state: &AppState, request_id: &str, error: &VsError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::to_value(error.body(request_id, &state.config.live_api.host_id))
        .unwrap_or_default();
    answer(status, request_id, body)
}

async fn unknown(State(state): State<Arc<AppState>>) -> Response {
    refusal(&state, &request_id(), &VsError::ActionNotFound)
}

/// `GET|POST /console/vs` on control's main listener: the same API for the console's Live
/// page, which signs each request in the browser with the tenant's key (the secret never
/// leaves the browser) and so needs no cross-origin access to the live API's listener. Off,
/// like the listener, unless `[live_api] listen` is set. The request is handled as if sent to
/// `/` (the document's string to sign names `/` whatever the path).
pub(crate) async fn console(State(state): State<Arc<AppState>>, mut request: Request) -> Response {
    if state.config.live_api.listen.is_none() {
        return refusal(&state, &request_id(), &VsError::ActionNotFound);
    }
    let root = match request.uri().query() {
        Some(query) => Uri::builder().path_and_query(format!("/?{query}")).build(),
        None => Uri::builder().path_and_query("/").build(),
    };
    match root {
        Ok(root) => {
            *request.uri_mut() = root;
            serve(State(state), request).await
        }
        // The query came in as part of a valid URI, so this cannot fail; refuse it anyway.
        Err(_) => refusal(
            &state,
            &request_id(),
            &VsError::InvalidParameter("Body".into()),
        ),
    }
}

async fn serve(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let request_id = request_id();
    let span = tracing::info_span!("live_api", request_id = %request_id);
    async move {
        if method != Method::GET && method != Method::POST {
            return refusal(&state, &request_id, &VsError::ActionNotFound);
        }
        // Read here rather than by an extractor, so an oversized body is refused like every
        // other request: with the error body and its RequestId.
        let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
            return refusal(
                &state,
                &request_id,
                &VsError::InvalidParameter("Body".into()),
            );
        };
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        // A body that is not UTF-8 carries no parameters (and its hash still counts for ACS3).
        let form = match (is_form, std::str::from_utf8(&body)) {
            (true, Ok(text)) => decode_form(text),
            _ => Vec::new(),
        };
        let incoming = Incoming {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().map(decode_form).unwrap_or_default(),
            form,
            headers: headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
                })
                .collect(),
            body: &body,
        };
        match live::handle(&state, &incoming).await {
            Ok(result) => answer(StatusCode::OK, &request_id, result.to_json(&request_id)),
            Err(error) => {
                tracing::info!(code = error.code(), "live API request refused");
                refusal(&state, &request_id, &error)
            }
        }
    }
    .instrument(span)
    .await
}
