//! The players' HTTP routes, on the node's public listener next to signaling:
//!
//! - `GET /{app}/{id}.flv?auth_key=` — HTTP-FLV: the FLV header, then the hub's tags as they
//!   are (metadata, sequence headers and the current GOP first), chunked, until the publisher
//!   leaves;
//! - `GET /{app}/{id}.m3u8?auth_key=`, `GET /{app}/{id}/{segment}?auth_key=` — HLS;
//! - `POST /{app}/{id}/whep?auth_key=`, `DELETE /{app}/{id}/whep/{session}?auth_key=` — WHEP
//!   (with its CORS preflight: every answer allows any origin, see [`any_origin`]).
//!
//! Every route checks admission here, before any output code runs: an unknown stream or one
//! nobody publishes is 404; a missing, wrong or expired `auth_key`, a stream not admitted, or an
//! output its group does not allow is 403. An `auth_key` signs the request's own path, except
//! for HLS segments, whose URLs carry the playlist's query and are checked against the
//! playlist's path.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use super::admission::{Output, PlayRequest, auth_key_of};
use super::hls::Hls;
use super::output::LiveOutputError;
use super::whep::Whep;
use super::{Live, PlayRefusal, flv};

/// Tags in one HTTP chunk at most.
const WRITE_BATCH: usize = 64;

/// What the routes reach: admission and the hub (`Live`), and the two outputs that keep state
/// per stream or per player.
#[derive(Clone)]
pub(crate) struct Players {
    pub(crate) live: Arc<Live>,
    pub(crate) hls: Arc<Hls>,
    pub(crate) whep: Arc<Whep>,
}

pub(crate) fn router(players: Players) -> Router {
    Router::new()
        .route("/{app}/{file}", get(file))
        .route("/{app}/{id}/{segment}", get(hls_segment))
        .route("/{app}/{id}/whep", post(whep_offer).options(preflight))
        .route(
            "/{app}/{id}/whep/{session}",
            delete(whep_end).options(preflight),
        )
        .layer(axum::middleware::map_response(any_origin))
        .with_state(players)
}

/// Every answer may be read by a page of any origin (a browser player such as the console's
/// Live page, served by control): access is by the URL's `auth_key`, never by cookies or
/// ambient credentials, so no origin gains anything it could not do with the URL alone. WHEP
/// clients need `Location` to end their session.
async fn any_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("Location"),
    );
    response
}

/// The CORS preflight of a WHEP offer (`Content-Type: application/sdp` is not a simple request)
/// or end.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "POST, DELETE, OPTIONS",
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// `{id}.flv` or `{id}.m3u8`.
async fn file(
    State(Players { live, hls, .. }): State<Players>,
    Path((app, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let uri = format!("/{app}/{file}");
    if let Some(id) = file.strip_suffix(".flv") {
        return flv_play(
            &live,
            &request(&app, id, Output::Flv, &uri, auth.as_deref()),
        );
    }
    if let Some(id) = file.strip_suffix(".m3u8") {
        if let Err(refusal) =
            live.check_play(&request(&app, id, Output::Hls, &uri, auth.as_deref()))
        {
            return refused(&refusal);
        }
        return match hls.playlist(&app, id, query.as_deref().unwrap_or("")).await {
            Ok(text) => (
                [
                    (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                text,
            )
                .into_response(),
            Err(error) => output_failed(&error),
        };
    }
    StatusCode::NOT_FOUND.into_response()
}

fn request<'a>(
    app: &'a str,
    id: &'a str,
    output: Output,
    uri: &'a str,
    auth_key: Option<&'a str>,
) -> PlayRequest<'a> {
    PlayRequest {
        app,
        id,
        output,
        uri,
        auth_key,
    }
}

fn flv_play(live: &Live, play: &PlayRequest<'_>) -> Response {
    let player = match live.play(play) {
        Ok(player) => player,
        Err(refusal) => return refused(&refusal),
    };
    let head = flv::header(player.starts_with_audio());
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(head) });
    let tags =
        futures::stream::unfold((player, Vec::new()), |(mut player, mut batch)| async move {
            if !player.next_batch(&mut batch, WRITE_BATCH).await {
                return None;
            }
            // A live player gets one tag per wake-up: the tag's shared FLV bytes, not a copy.
            // What is already waiting goes in one chunk: one write for a player catching up.
            let chunk = match batch.as_slice() {
                [tag] => tag.flv(),
                tags => {
                    let mut chunk = bytes::BytesMut::new();
                    for tag in tags {
                        chunk.extend_from_slice(&tag.flv());
                    }
                    chunk.freeze()
                }
            };
            player.sent(chunk.len());
            Some((Ok(chunk), (player, batch)))
        });
    use futures::StreamExt;
    (
        [
            (header::CONTENT_TYPE, "video/x-flv"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(first.chain(tags)),
    )
        .into_response()
}

/// An HLS segment: authorised by the playlist's `auth_key` over the playlist's URI.
async fn hls_segment(
    State(Players { live, hls, .. }): State<Players>,
    Path((app, id, segment)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let playlist = format!("/{app}/{id}.m3u8");
    if let Err(refusal) =
        live.check_play(&request(&app, &id, Output::Hls, &playlist, auth.as_deref()))
    {
        return refused(&refusal);
    }
    match hls.segment(&id, &segment).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "video/mp2t")], bytes).into_response(),
        Err(error) => output_failed(&error),
    }
}

async fn whep_offer(
    State(Players { live, whep, .. }): State<Players>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    offer: String,
) -> Response {
    if let Err(refusal) = check_whep(&live, &app, &id, query.as_deref()) {
        return refused(&refusal);
    }
    match whep.offer(&id, &offer).await {
        Ok((answer, session)) => {
            // The session URL keeps the offer's query: DELETE is authorised like the offer.
            let location = match &query {
                Some(q) => format!("/{app}/{id}/whep/{session}?{q}"),
                None => format!("/{app}/{id}/whep/{session}"),
            };
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_owned()),
                    (header::LOCATION, location),
                ],
                answer,
            )
                .into_response()
        }
        Err(error) => output_failed(&error),
    }
}

/// WHEP offers and their sessions are authorised over the offer's URI.
fn check_whep(live: &Live, app: &str, id: &str, query: Option<&str>) -> Result<(), PlayRefusal> {
    let auth = query.and_then(auth_key_of);
    let uri = format!("/{app}/{id}/whep");
    live.check_play(&request(app, id, Output::Webrtc, &uri, auth.as_deref()))
}

/// Ends a WHEP session; its URL carries the offer's `auth_key`, checked over the offer's URI.
async fn whep_end(
    State(Players { live, whep, .. }): State<Players>,
    Path((app, id, session)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refusal) = check_whep(&live, &app, &id, query.as_deref()) {
        return refused(&refusal);
    }
    // A key for one stream ends only that stream's sessions.
    let ours = whep
        .sessions()
        .iter()
        .any(|(s, stream)| *s == session && *stream == id);
    if !ours {
        return StatusCode::NOT_FOUND.into_response();
    }
    match whep.delete(&session).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => output_failed(&error),
    }
}

fn refused(refusal: &PlayRefusal) -> Response {
    let status = if refusal.not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::FORBIDDEN
    };
    (status, refusal.to_string()).into_response()
}

/// The statuses `LiveOutputError` documents.
fn output_failed(error: &LiveOutputError) -> Response {
    match error {
        LiveOutputError::NotFound => StatusCode::NOT_FOUND.into_response(),
        LiveOutputError::NotReady => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            error.to_string(),
        )
            .into_response(),
        LiveOutputError::Unsupported(_) => {
            (StatusCode::NOT_ACCEPTABLE, error.to_string()).into_response()
        }
        LiveOutputError::BadOffer(_) => {
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
        LiveOutputError::Internal(_) => {
            tracing::warn!(%error, "live output failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
