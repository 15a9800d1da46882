//! The players' HTTP routes, on the node's public listener next to signaling:
//!
//! - `GET /{app}/{id}.flv?auth_key=` — HTTP-FLV: the FLV header, then the hub's tags as they
//!   are (metadata, sequence headers and the current GOP first), chunked, until the publisher
//!   leaves;
//! - `GET /{app}/{id}.m3u8?auth_key=`, `GET /{app}/{id}/{segment}?auth_key=` — HLS;
//! - `POST /{app}/{id}/whep?auth_key=`, `DELETE /{app}/{id}/whep/{session}?auth_key=` — WHEP.
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

use super::admission::{Output, auth_key_of};
use super::{Live, PlayRefusal, flv};

/// Tags in one HTTP chunk at most.
const WRITE_BATCH: usize = 64;

pub(crate) fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/{app}/{file}", get(file))
        .route("/{app}/{id}/{segment}", get(hls_segment))
        .route("/{app}/{id}/whep", post(whep_offer))
        .route("/{app}/{id}/whep/{session}", delete(whep_end))
        .with_state(live)
}

/// `{id}.flv` or `{id}.m3u8`.
async fn file(
    State(live): State<Arc<Live>>,
    Path((app, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let uri = format!("/{app}/{file}");
    if let Some(id) = file.strip_suffix(".flv") {
        return flv_play(&live, &app, id, &uri, auth.as_deref());
    }
    if let Some(id) = file.strip_suffix(".m3u8") {
        if let Err(refusal) = live.check_play(&app, id, Output::Hls, &uri, auth.as_deref()) {
            return refused(&refusal);
        }
        // HLS (issue 15): `live::hls` serves the playlist here.
        return not_yet("HLS");
    }
    StatusCode::NOT_FOUND.into_response()
}

fn flv_play(live: &Live, app: &str, id: &str, uri: &str, auth: Option<&str>) -> Response {
    let player = match live.play(app, id, Output::Flv, uri, auth) {
        Ok(player) => player,
        Err(refusal) => return refused(&refusal),
    };
    let head = flv::header(player.starts_with_audio());
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(head) });
    let tags = futures::stream::unfold(player, |mut player| async move {
        // What is already waiting goes in one chunk: one write for a player catching up.
        let tags = player.next_batch(WRITE_BATCH).await?;
        let mut chunk = bytes::BytesMut::new();
        for tag in &tags {
            flv::put_tag(&mut chunk, tag);
        }
        player.sent(chunk.len());
        Some((Ok(chunk.freeze()), player))
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
    State(live): State<Arc<Live>>,
    Path((app, id, _segment)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let playlist = format!("/{app}/{id}.m3u8");
    if let Err(refusal) = live.check_play(&app, &id, Output::Hls, &playlist, auth.as_deref()) {
        return refused(&refusal);
    }
    // HLS (issue 15): `live::hls` serves `_segment` here.
    not_yet("HLS")
}

async fn whep_offer(
    State(live): State<Arc<Live>>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let uri = format!("/{app}/{id}/whep");
    if let Err(refusal) = live.check_play(&app, &id, Output::Webrtc, &uri, auth.as_deref()) {
        return refused(&refusal);
    }
    // WHEP (issue 15): `live::whep` answers the SDP offer here (201 + Location under
    // `/{app}/{id}/whep/{session}`, keeping the `auth_key` query).
    not_yet("WHEP")
}

/// Ends a WHEP session; its URL carries the offer's `auth_key`, checked over the offer's URI.
async fn whep_end(
    State(live): State<Arc<Live>>,
    Path((app, id, _session)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let auth = query.as_deref().and_then(auth_key_of);
    let uri = format!("/{app}/{id}/whep");
    if let Err(refusal) = live.check_play(&app, &id, Output::Webrtc, &uri, auth.as_deref()) {
        return refused(&refusal);
    }
    // WHEP (issue 15): `live::whep` ends `_session` here.
    not_yet("WHEP")
}

fn refused(refusal: &PlayRefusal) -> Response {
    let status = if refusal.not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::FORBIDDEN
    };
    (status, refusal.to_string()).into_response()
}

/// The place an output of another part of issue 15 plugs in, until it does.
fn not_yet(output: &str) -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        format!("{output} is not served by this node yet"),
    )
        .into_response()
}
