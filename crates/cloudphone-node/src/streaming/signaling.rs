//! The viewer's signaling WebSocket, `/v1/signaling`: hello → ready → offer/answer and
//! trickled candidates → `bye`. One task per viewer owns its socket and its peer connection;
//! the protocol is in `docs/signaling.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use cloudphone_signaling::{ByeReason, Candidate, ClientMessage, ErrorCode, Hello, NodeMessage};
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::track::track_local::TrackLocalWriter;

use crate::streaming::definition;
use crate::streaming::peer::{ntp_compact, rtt_ms};
use crate::streaming::sessions::{Sessions, SharedEncoder, Viewer};

/// A viewer must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest signaling message accepted (SDP offers are a few KiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The signaling route.
pub(crate) fn router(sessions: Arc<Sessions>) -> Router {
    Router::new()
        .route("/v1/signaling", get(upgrade))
        .with_state(sessions)
}

async fn upgrade(ws: WebSocketUpgrade, State(sessions): State<Arc<Sessions>>) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| serve(sessions, socket))
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;
type Source = futures::stream::SplitStream<WebSocket>;

async fn send(sink: &mut Sink, message: &NodeMessage) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => sink.send(Message::text(text)).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends an error and closes.
async fn fail(sink: &mut Sink, code: ErrorCode, message: impl Into<String>) {
    let _ = send(
        sink,
        &NodeMessage::Error {
            code,
            message: message.into(),
        },
    )
    .await;
    let _ = sink.send(Message::Close(None)).await;
}

/// The next client message; `None` when the socket closed. Pings are answered by axum.
async fn next_message(source: &mut Source) -> Option<Result<ClientMessage, String>> {
    loop {
        match source.next().await? {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(text.as_str()).map_err(|e| e.to_string()));
            }
            Ok(Message::Binary(_)) => return Some(Err("binary messages are not used".into())),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn serve(sessions: Arc<Sessions>, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let hello: Hello = match tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut source)).await {
        Ok(Some(Ok(ClientMessage::Hello(hello)))) => hello,
        Ok(Some(Ok(_))) => return fail(&mut sink, ErrorCode::BadRequest, "say hello first").await,
        Ok(Some(Err(e))) => return fail(&mut sink, ErrorCode::BadRequest, e).await,
        Ok(None) => return,
        Err(_) => return fail(&mut sink, ErrorCode::BadRequest, "no hello in time").await,
    };
    let viewer = match sessions.admit(&hello).await {
        Ok(v) => v,
        Err(refusal) => return fail(&mut sink, refusal.code, refusal.message).await,
    };
    if let Some(reason) = stream(&sessions, viewer, &mut sink, &mut source).await {
        let _ = send(&mut sink, &NodeMessage::Bye { reason }).await;
    }
    let _ = sink.send(Message::Close(None)).await;
}

/// Runs one admitted viewer until it leaves (`None`) or the node ends the stream (the reason).
async fn stream(
    sessions: &Arc<Sessions>,
    mut viewer: Viewer,
    sink: &mut Sink,
    source: &mut Source,
) -> Option<ByeReason> {
    let mut encoder = match sessions.join_encoder(&viewer).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(instance = %viewer.grant.instance_id, error = %e, "encoder did not start");
            fail(sink, ErrorCode::Internal, "the stream could not start").await;
            return None;
        }
    };
    let peer = match sessions.peers().new_viewer(viewer.codec).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "peer connection failed");
            fail(sink, ErrorCode::Internal, "the stream could not start").await;
            return None;
        }
    };
    let pc = Arc::clone(&peer.pc);

    // Local candidates, from webrtc-rs callbacks to the socket.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<NodeMessage>();
    let candidates = out_tx.clone();
    pc.on_ice_candidate(Box::new(move |c| {
        let candidates = candidates.clone();
        Box::pin(async move {
            let Some(c) = c else { return };
            if let Ok(init) = c.to_json() {
                let _ = candidates.send(NodeMessage::Candidate(Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                }));
            }
        })
    }));
    let (state_tx, mut state_rx) = watch::channel(RTCPeerConnectionState::New);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));

    // The `input` data channel: input, clipboard and screenshots (`streaming::channel`).
    let channel_tasks = crate::streaming::channel::serve(
        &pc,
        sessions,
        viewer.grant.instance_id.clone(),
        viewer.grant.role,
        out_tx.clone(),
    );

    // Sound: the instance's audio encoder → this viewer's audio track (none: video only).
    let audio_task = match sessions.join_audio(&viewer).await {
        Some(audio) => {
            let track = Arc::clone(&peer.audio);
            let mut packets = audio.subscribe();
            let sender = Arc::clone(&peer.audio_sender);
            Some(tokio::spawn(async move {
                // RTCP must be read for the interceptors (sender reports) to run.
                let rtcp = tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
                loop {
                    match packets.recv().await {
                        Ok(packet) => {
                            let _ = track.write(&packet).await;
                        }
                        // Lost sound is not asked for again: Opus conceals and FEC covers it.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
                rtcp.abort();
            }))
        }
        None => None,
    };

    // Media: encoder packets → this viewer's track; a definition switch hands it a new feed.
    let (switch_tx, switch_rx) = mpsc::unbounded_channel();
    let media_task = tokio::spawn(definition::forward(
        Arc::clone(&peer.track),
        viewer.codec,
        definition::Feed::new(&encoder, None),
        switch_rx,
    ));
    // The encoder this viewer's RTCP goes to: the current one, across definition switches.
    let (rtcp_encoder, rtcp_encoder_rx) = watch::channel(Arc::clone(&encoder));
    let rtcp_task = tokio::spawn(read_rtcp(
        Arc::clone(sessions),
        rtcp_encoder_rx,
        Arc::clone(&peer.sender),
        viewer.id,
    ));

    let ready = NodeMessage::Ready {
        ice_servers: sessions.ice_servers(&viewer.grant),
        video: definition::video_info(&viewer, &encoder),
        role: viewer.grant.role,
    };
    let ended = crate::streaming::sessions::until_true(encoder.ended());
    tokio::pin!(ended);
    let reason = if send(sink, &ready).await {
        // Its own copy: a definition switch borrows the viewer mutably meanwhile.
        let device_id = viewer.grant.device_id.clone();
        let expiry = expiry(sessions, &device_id);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                // The node's reason first: when an instance stops, its encoder ends too, and
                // the viewer should hear why rather than "media_error".
                biased;
                Ok(()) = viewer.stop.changed() => {
                    if let Some(reason) = *viewer.stop.borrow() {
                        break Some(reason);
                    }
                }
                message = next_message(source) => match message {
                    None => break None,
                    Some(Ok(ClientMessage::Offer { sdp })) => {
                        match answer(&pc, sdp).await {
                            Ok(sdp) => {
                                if !send(sink, &NodeMessage::Answer { sdp }).await {
                                    break None;
                                }
                            }
                            Err(e) => {
                                fail(sink, ErrorCode::BadRequest, format!("offer: {e}")).await;
                                break None;
                            }
                        }
                    }
                    Some(Ok(ClientMessage::Candidate(c))) => {
                        // End-of-candidates carries nothing to add.
                        if c.candidate.is_empty() {
                            continue;
                        }
                        let init = RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_mline_index: c.sdp_mline_index,
                            username_fragment: None,
                        };
                        if let Err(e) = pc.add_ice_candidate(init).await {
                            tracing::debug!(error = %e, "remote candidate refused");
                        }
                    }
                    Some(Ok(ClientMessage::Hello(_))) => {
                        fail(sink, ErrorCode::BadRequest, "hello was already sent").await;
                        break None;
                    }
                    Some(Ok(ClientMessage::Definition { definition, encoding_type })) => {
                        let reply = match definition::switch(sessions, &mut viewer, &encoder, definition, encoding_type).await {
                            Ok((Some(feed), reply)) => {
                                encoder = Arc::clone(feed.encoder());
                                ended.set(crate::streaming::sessions::until_true(encoder.ended()));
                                rtcp_encoder.send_replace(Arc::clone(&encoder));
                                let _ = switch_tx.send(feed);
                                reply
                            }
                            Ok((None, reply)) | Err(reply) => reply,
                        };
                        if !send(sink, &reply).await {
                            break None;
                        }
                    }
                    Some(Err(e)) => {
                        fail(sink, ErrorCode::BadRequest, e).await;
                        break None;
                    }
                },
                Some(message) = out_rx.recv() => {
                    if !send(sink, &message).await {
                        break None;
                    }
                }
                Ok(()) = state_rx.changed() => {
                    let state = *state_rx.borrow();
                    match state {
                        RTCPeerConnectionState::Connected => {
                            tracing::info!(viewer = viewer.id, "peer connected");
                            encoder.request_keyframe();
                        }
                        RTCPeerConnectionState::Failed => break Some(ByeReason::PeerFailed),
                        RTCPeerConnectionState::Closed => break None,
                        _ => {}
                    }
                }
                _ = &mut ended => break Some(ByeReason::MediaError),
                reason = &mut expiry => break Some(reason),
            }
        }
    } else {
        None
    };
    media_task.abort();
    if let Some(task) = audio_task {
        task.abort();
    }
    rtcp_task.abort();
    drop(channel_tasks);
    let _ = pc.close().await;
    reason
}

/// Resolves with `Expired` at the grant's expiry, following a grant renewed by a new
/// StartSession for the same device; with `Released` if the grant disappears.
async fn expiry(sessions: &Sessions, device_id: &str) -> ByeReason {
    let clock = sessions.clock();
    follow_expiry(
        || sessions.grant(device_id).map(|g| g.expires_at_unix_ms),
        || clock.unix_ms(),
    )
    .await
}

/// [`expiry`]'s loop over a grant's expiry (`None`: the grant is gone) and "now", both read
/// again after each wait, so a renewal (control's GetDeviceToken for the same device) carries
/// a live stream past its first expiry. Apart so a test can drive it on a paused clock.
async fn follow_expiry(
    expires_at: impl Fn() -> Option<i64>,
    now_ms: impl Fn() -> i64,
) -> ByeReason {
    loop {
        let Some(expires_at) = expires_at() else {
            return ByeReason::Released;
        };
        let left = expires_at - now_ms();
        if left <= 0 {
            return ByeReason::Expired;
        }
        // Re-read at most every 5 s so a renewal is noticed without a wake-up per grant change.
        tokio::time::sleep(Duration::from_millis(left.min(5_000) as u64)).await;
    }
}

async fn answer(
    pc: &webrtc::peer_connection::RTCPeerConnection,
    sdp: String,
) -> Result<String, webrtc::Error> {
    pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    // Candidates trickle; the answer goes out at once.
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or(webrtc::Error::ErrNoRemoteDescription)
}

/// Feeds one viewer's RTCP into the shared encoder: PLI/FIR → key frame, receiver reports and
/// REMB → its bitrate controller.
async fn read_rtcp(
    sessions: Arc<Sessions>,
    encoder: watch::Receiver<Arc<SharedEncoder>>,
    sender: Arc<webrtc::rtp_transceiver::rtp_sender::RTCRtpSender>,
    viewer: u64,
) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        let arrival = ntp_compact(std::time::SystemTime::now());
        let now_ms = sessions.now_ms();
        let encoder = Arc::clone(&encoder.borrow());
        for packet in packets {
            let any = packet.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                encoder.request_keyframe();
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for report in &rr.reports {
                    tracing::trace!(
                        lsr = report.last_sender_report,
                        dlsr = report.delay,
                        arrival,
                        "reception report"
                    );
                    encoder.on_receiver_report(
                        viewer,
                        now_ms,
                        f64::from(report.fraction_lost) / 256.0,
                        rtt_ms(arrival, report.last_sender_report, report.delay),
                    );
                }
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                encoder.on_remb(viewer, now_ms, (remb.bitrate / 1000.0) as u32);
            }
        }
    }
}

// `wss://` signaling is served through the daemons' shared TLS listener.
pub(crate) use cloudphone_daemon::tls::{TlsError, TlsListener, tls_acceptor};

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::Clock;

    /// A grant renewed before its expiry carries the stream on to the new expiry, and only
    /// then ends it (`expired`): what makes a stream started through GetDeviceToken outlive
    /// its first hour. Tokio's paused clock, no wall-clock wait.
    #[tokio::test(start_paused = true)]
    async fn a_renewed_grant_moves_the_expiry() {
        const HOUR: i64 = 3_600_000;
        let clock = Clock::tokio(1_000_000);
        let expires = Mutex::new(Some(clock.unix_ms() + HOUR));
        let ended = follow_expiry(|| *expires.lock().unwrap(), || clock.unix_ms());
        tokio::pin!(ended);
        // 59 minutes in: still streaming; the device's grant is renewed for another hour.
        let waited = tokio::time::timeout(Duration::from_secs(59 * 60), &mut ended).await;
        assert!(waited.is_err(), "ended before its expiry");
        *expires.lock().unwrap() = Some(clock.unix_ms() + HOUR);
        // Past the first expiry: still streaming.
        let waited = tokio::time::timeout(Duration::from_secs(30 * 60), &mut ended).await;
        assert!(
            waited.is_err(),
            "cut at the first expiry despite the renewal"
        );
        // At the renewed expiry it ends, as expired.
        let reason = tokio::time::timeout(Duration::from_secs(31 * 60), &mut ended).await;
        assert_eq!(reason.ok(), Some(ByeReason::Expired));
        assert!(clock.unix_ms() >= 1_000_000 + 59 * 60_000 + HOUR);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_grant_ends_the_stream() {
        let clock = Clock::tokio(0);
        let reason = follow_expiry(|| None, || clock.unix_ms()).await;
        assert_eq!(reason, ByeReason::Released);
    }
}
