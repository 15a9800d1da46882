//! The phone's features beyond screen and input, over the node's HTTP port, authorised by the
//! device token as signaling is (`Authorization: Bearer <device_token>`):
//!
//! - `GET /v1/devices/{device_id}/screenshot`: a PNG of the screen at its native size
//!   (owners and observers: an observer sees the screen anyway);
//! - `PUT /v1/devices/{device_id}/files/{path}`: uploads the body to `/data/<path>`, streamed to
//!   disk (owners only);
//! - `GET /v1/devices/{device_id}/files/{path}`: downloads `/data/<path>`, streamed (owners
//!   only).
//!
//! Media never passes through control: a client reaches these on the node whose address
//! GetDeviceToken gave it. The rules of the data dir are in [`files`]; the wire is in
//! `docs/signaling.md` section 7.
//!
//! # Layout
//! - [`files`]: paths below `/data` opened without ever following a symlink.
//! - [`screenshot`]: PNG capture per capture source.

pub(crate) mod files;
pub(crate) mod screenshot;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::instances::DataAccess;
use crate::instances::InstanceError;
use crate::runtime::RuntimeError;
use crate::streaming::sessions::{Grant, Sessions};
use files::FileError;

/// What the phone routes need.
#[derive(Clone)]
pub(crate) struct PhoneState {
    pub sessions: Arc<Sessions>,
    /// Largest upload accepted, bytes (the sandbox's largest file, `[sandbox]
    /// file_size_max_mib`, or [`DEFAULT_MAX_UPLOAD`]); the data dir's quota also applies.
    pub max_upload: u64,
}

/// Largest upload when `[sandbox] file_size_max_mib` is not set: 1 GiB.
pub(crate) const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;
/// An upload whose client sends nothing for this long is dropped: while it runs it holds the
/// instance's lock, which a stop, wipe or restore waits for.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The phone routes.
pub(crate) fn router(state: PhoneState) -> Router {
    Router::new()
        .route(
            "/v1/devices/{device_id}/screenshot",
            get(screenshot).options(preflight),
        )
        .route(
            "/v1/devices/{device_id}/files/{*path}",
            get(download).put(upload).options(preflight),
        )
        // Uploads are streamed and capped by `max_upload`, not buffered.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(allow_any_origin))
        .with_state(state)
}

/// The player runs on control's origin and calls these on the node's: any origin may, as the
/// bearer token (never a cookie) is what authorises a request.
async fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// CORS preflight of a `PUT` or of a request with `Authorization`.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, PUT, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// Why a phone request was refused; each maps to one status and `error` code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PhoneError {
    #[error("missing or wrong device token, or the session expired")]
    Unauthorized,
    #[error("an observer may not transfer files")]
    Observer,
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the instance is not running")]
    NotRunning,
    #[error("the upload stalled for {UPLOAD_IDLE:?}")]
    Stalled,
    #[error("unsupported on this node's runtime: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

impl From<InstanceError> for PhoneError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::NotFound(_)
            | InstanceError::InvalidState { .. }
            | InstanceError::Runtime(RuntimeError::NotRunning(_)) => Self::NotRunning,
            InstanceError::Runtime(RuntimeError::Unsupported(what)) => {
                Self::Unsupported(what.to_owned())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for PhoneError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "bad_token"),
            Self::Observer => (StatusCode::FORBIDDEN, "observer"),
            Self::File(FileError::BadPath(_)) => (StatusCode::BAD_REQUEST, "bad_path"),
            Self::File(FileError::Symlink) => (StatusCode::FORBIDDEN, "symlink"),
            Self::File(FileError::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            Self::File(FileError::NotAFile) => (StatusCode::CONFLICT, "not_a_file"),
            Self::File(FileError::TooLarge(_)) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::File(FileError::NoSpace) => (StatusCode::PAYLOAD_TOO_LARGE, "quota"),
            Self::NotRunning => (StatusCode::CONFLICT, "not_running"),
            Self::Stalled => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            Self::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
            Self::File(FileError::Io(_)) | Self::Internal(_) => {
                tracing::warn!(error = %self, "phone request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

/// The grant the request's bearer token is for, if it is live.
fn authorize(
    state: &PhoneState,
    device_id: &str,
    headers: &HeaderMap,
) -> Result<Grant, PhoneError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(PhoneError::Unauthorized)?;
    let grant = state
        .sessions
        .grant(device_id)
        .ok_or(PhoneError::Unauthorized)?;
    if !grant.token_matches(token) || grant.expires_at_unix_ms <= state.sessions.clock().unix_ms() {
        return Err(PhoneError::Unauthorized);
    }
    Ok(grant)
}

/// Files are the owner's: an observer may watch, not read or write the phone's data.
fn owner_only(grant: &Grant) -> Result<(), PhoneError> {
    if grant.role.may_send_input() {
        Ok(())
    } else {
        Err(PhoneError::Observer)
    }
}

async fn screenshot(
    State(state): State<PhoneState>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PhoneError> {
    let grant = authorize(&state, &device_id, &headers)?;
    let shot = take_screenshot(&state.sessions, &grant.instance_id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        shot.png,
    )
        .into_response())
}

/// A screenshot of a running instance (also what the data channel's `screenshot` uses).
pub(crate) async fn take_screenshot(
    sessions: &Sessions,
    instance_id: &str,
) -> Result<screenshot::Shot, PhoneError> {
    let manager = sessions.manager();
    let source = manager.screen_of(instance_id)?;
    if let Some(png) = manager.runtime_screenshot(instance_id).await? {
        let (width, height) = screenshot::size_of(&source);
        return Ok(screenshot::Shot { png, width, height });
    }
    tokio::task::spawn_blocking(move || screenshot::take(&source))
        .await
        .map_err(|e| PhoneError::Internal(e.to_string()))?
        .map_err(PhoneError::Internal)
}

async fn download(
    State(state): State<PhoneState>,
    Path((device_id, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, PhoneError> {
    let grant = authorize(&state, &device_id, &headers)?;
    owner_only(&grant)?;
    let path = files::parse_path(&path)?;
    let access = data_access(&state, &grant.instance_id).await?;
    let root = access.paths.data.clone();
    let (file, size) = tokio::task::spawn_blocking(move || files::open_read(&root, &path))
        .await
        .map_err(|e| PhoneError::Internal(e.to_string()))??;
    // The stream holds the instance's lock until the last byte is read.
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).map(move |r| {
        let _held = &access;
        r
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The instance's `/data` on this host, held until dropped (a runtime whose data lives on the
/// device has none).
async fn data_access(state: &PhoneState, instance_id: &str) -> Result<DataAccess, PhoneError> {
    state
        .sessions
        .manager()
        .data_access(instance_id)
        .await?
        .ok_or_else(|| PhoneError::Unsupported("files (the phone's data is on the device)".into()))
}

async fn upload(
    State(state): State<PhoneState>,
    Path((device_id, raw_path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PhoneError> {
    let grant = authorize(&state, &device_id, &headers)?;
    owner_only(&grant)?;
    let path = files::parse_path(&raw_path)?;
    let cap = state.max_upload;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > cap) {
        return Err(FileError::TooLarge(cap).into());
    }
    let access = data_access(&state, &grant.instance_id).await?;
    let (root, owner) = (access.paths.data.clone(), access.paths.owner);
    let (upload, file) =
        tokio::task::spawn_blocking(move || files::Upload::begin(&root, &path, owner))
            .await
            .map_err(|e| PhoneError::Internal(e.to_string()))??;
    let mut file = tokio::fs::File::from_std(file);
    let mut hash = Sha256::new();
    let mut size: u64 = 0;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = tokio::time::timeout(UPLOAD_IDLE, chunks.next())
        .await
        .map_err(|_| PhoneError::Stalled)?
    {
        // A client that goes away mid-upload leaves nothing (the upload is dropped).
        let chunk = chunk.map_err(|e| PhoneError::Internal(format!("upload body: {e}")))?;
        size += chunk.len() as u64;
        if size > cap {
            return Err(FileError::TooLarge(cap).into());
        }
        hash.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            // The rest of the body (at most the cap) is read and dropped, so the client is
            // there to hear why instead of failing to send into a closed connection.
            while let Some(Ok(chunk)) = chunks.next().await {
                size += chunk.len() as u64;
                if size > cap {
                    break;
                }
            }
            return Err(write_error(e));
        }
    }
    file.flush().await.map_err(write_error)?;
    file.sync_all().await.map_err(write_error)?;
    drop(file);
    tokio::task::spawn_blocking(move || upload.commit())
        .await
        .map_err(|e| PhoneError::Internal(e.to_string()))??;
    drop(access);
    tracing::info!(instance = %grant.instance_id, path = %raw_path, size, "file uploaded");
    let body = serde_json::json!({
        "path": raw_path,
        "size": size,
        "sha256": hex::encode(hash.finalize()),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// A failed write: a full quota is the client's to fix, anything else is the node's.
fn write_error(e: std::io::Error) -> PhoneError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => FileError::NoSpace.into(),
        _ => FileError::Io(e).into(),
    }
}
