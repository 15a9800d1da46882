//! The RTMP server: pushes from encoders (OBS, ffmpeg, GStreamer's `rtmp2sink`) into the hub,
//! and RTMP players out of it.
//!
//! `rml_rtmp` does the protocol sans-I/O (handshake, chunking, the connect/createStream/
//! publish/play command flow); this module owns the sockets and the decisions: which push or
//! play is admitted (see [`super::Live`]), what goes to the hub, and when a connection ends.
//! A connection whose bytes the protocol rejects, or whose push or play is refused, is closed;
//! no other connection notices.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rml_amf0::Amf0Value;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::admission::{Output, PlayRequest, split_query};
use super::hub::{Tag, TagKind};
use super::{Ingest, Live, Player};

/// The `onStatus` codes a refused publish or play gets.
const PUBLISH_DENIED: &str = "NetStream.Publish.Denied";
const PLAY_FAILED: &str = "NetStream.Play.Failed";
/// Tags a player gets in one write at most, when it has fallen a little behind.
const WRITE_BATCH: usize = 64;
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 4096;
/// A client that has not finished the handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long while not playing (a silent publisher, or a
/// client that never asks for anything) is dropped. Players are exempt: with the 1 GiB
/// acknowledgement window they may rightly say nothing for hours; a dead one fails a write.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The read timeout of a player (never reached in practice).
const PLAYER_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Accepts RTMP connections on `listener` until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                        tracing::warn!(%peer, "RTMP connection limit reached; closing");
                        continue;
                    };
                    let live = Arc::clone(&live);
                    let stop = stop.clone();
                    let span = tracing::info_span!("rtmp", %peer);
                    tokio::spawn(
                        async move {
                            let _permit = permit;
                            match connection(socket, peer, live, stop).await {
                                Ok(()) => tracing::debug!("RTMP connection closed"),
                                Err(error) => tracing::info!(%error, "RTMP connection closed"),
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(error) => {
                    // Out of descriptors or similar: wait rather than spin.
                    tracing::warn!(%error, "RTMP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
}

fn protocol(error: impl std::fmt::Display) -> ConnError {
    ConnError::Protocol(error.to_string())
}

async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    socket.set_nodelay(true)?;
    let remaining = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut socket))
        .await
        .map_err(|_| ConnError::Timeout)??;
    let (session, results) = ServerSession::new(ServerSessionConfig::new()).map_err(protocol)?;
    let mut conn = Conn {
        socket,
        session,
        live,
        ingest: None,
        play: None,
        out: Vec::new(),
    };
    conn.process(results)?;
    conn.input(&remaining)?;
    conn.flush().await?;
    tracing::debug!(%peer, "RTMP session started");
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(super::STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let idle = if conn.play.is_some() {
            PLAYER_IDLE_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        tokio::select! {
            read = tokio::time::timeout(idle, conn.socket.read(&mut buf)) => {
                let n = read.map_err(|_| ConnError::Timeout)??;
                if n == 0 {
                    return Ok(());
                }
                conn.input(&buf[..n])?;
            }
            () = revoked(&mut conn.ingest) => {
                return Err(ConnError::Refused("the stream's admission was withdrawn".into()));
            }
            tags = next_tags(&mut conn.play) => match tags {
                Some(tags) => {
                    for tag in tags {
                        conn.play_tag(tag)?;
                    }
                }
                // The publisher left: the play is over.
                None => {
                    if let Some((_, stream_id)) = conn.play.take()
                        && let Ok(packet) = conn.session.finish_playing(stream_id)
                    {
                        conn.out.extend_from_slice(&packet.bytes);
                    }
                    conn.flush().await?;
                    return Ok(());
                }
            },
            _ = tick.tick() => {
                if let Some(ingest) = &mut conn.ingest {
                    ingest.report();
                }
            }
            () = stopped(&mut stop) => return Ok(()),
        }
        conn.flush().await?;
    }
}

/// The server side of the RTMP handshake; returns the bytes that followed it.
async fn handshake(socket: &mut TcpStream) -> Result<Vec<u8>, ConnError> {
    let mut handshake = Handshake::new(PeerType::Server);
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(ConnError::Handshake("closed during the handshake".into()));
        }
        match handshake
            .process_bytes(&buf[..n])
            .map_err(|e| ConnError::Handshake(e.to_string()))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Resolves once the node stops (the guard `wait_for` returns is not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn revoked(ingest: &mut Option<Ingest>) {
    match ingest {
        Some(ingest) => ingest.revoked().await,
        None => std::future::pending().await,
    }
}

async fn next_tags(play: &mut Option<(Player, u32)>) -> Option<Vec<Tag>> {
    match play {
        Some((player, _)) => player.next_batch(WRITE_BATCH).await,
        None => std::future::pending().await,
    }
}

/// One RTMP connection: a publisher, a player, or (until it asks) neither.
struct Conn {
    socket: TcpStream,
    session: ServerSession,
    live: Arc<Live>,
    /// Set while this connection publishes.
    ingest: Option<Ingest>,
    /// Set while this connection plays: the player and its RTMP message stream id.
    play: Option<(Player, u32)>,
    /// Bytes for the peer, in order, written once per turn of the loop.
    out: Vec<u8>,
}

impl Conn {
    async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.socket.write_all(&self.out).await?;
            if let Some((player, _)) = &self.play {
                player.sent(self.out.len());
            }
            self.out.clear();
        }
        Ok(())
    }

    fn input(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        // rml_rtmp indexes into some messages without checking their length (an `@setDataFrame`
        // with no arguments panics inside it): such input ends this connection like any other
        // protocol error.
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.session.handle_input(bytes)
        }))
        .map_err(|_| ConnError::Protocol("input the RTMP parser cannot take".into()))?
        .map_err(protocol)?;
        self.process(results)
    }

    /// Queues what the session wants sent and acts on its events (which may queue more).
    fn process(&mut self, results: Vec<ServerSessionResult>) -> Result<(), ConnError> {
        let mut queue = VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.out.extend_from_slice(&packet.bytes);
                }
                ServerSessionResult::RaisedEvent(event) => queue.extend(self.event(event)?),
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn event(&mut self, event: ServerSessionEvent) -> Result<Vec<ServerSessionResult>, ConnError> {
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                self.session.accept_request(request_id).map_err(protocol)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => self.publish(request_id, &app_name, &stream_key),
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => self.play(request_id, &app_name, &stream_key, stream_id),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let (Some(ingest), Some(data)) = (&mut self.ingest, metadata_body(&metadata)) {
                    ingest.send(Tag {
                        kind: TagKind::Script,
                        timestamp_ms: 0,
                        data,
                    });
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.media(TagKind::Video, data, timestamp);
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.media(TagKind::Audio, data, timestamp);
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.ingest = None;
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamFinished { .. } => {
                self.play = None;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn media(&mut self, kind: TagKind, data: Bytes, timestamp: RtmpTimestamp) {
        if let Some(ingest) = &mut self.ingest {
            ingest.send(Tag {
                kind,
                timestamp_ms: timestamp.value,
                data,
            });
        }
    }

    fn publish(
        &mut self,
        request_id: u32,
        app_name: &str,
        stream_key: &str,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        let (app, app_auth) = split_query(app_name);
        let (id, key_auth) = split_query(stream_key);
        // Never the auth_key: a push URL's key does not expire.
        tracing::debug!(app, id, "RTMP publish requested");
        // OBS and ffmpeg put the query on the stream key; some clients on the app.
        let auth = key_auth.or(app_auth);
        if self.ingest.is_some() || self.play.is_some() {
            return self.refuse(
                request_id,
                PUBLISH_DENIED,
                "one stream per connection".into(),
            );
        }
        match self.live.publish(app, id, auth.as_deref()) {
            Ok(ingest) => {
                tracing::info!(stream_id = ingest.stream_id(), "RTMP publish admitted");
                self.ingest = Some(ingest);
                self.session.accept_request(request_id).map_err(protocol)
            }
            Err(refusal) => self.refuse(
                request_id,
                PUBLISH_DENIED,
                format!("publish of /{app}/{id}: {refusal}"),
            ),
        }
    }

    fn play(
        &mut self,
        request_id: u32,
        app_name: &str,
        stream_key: &str,
        stream_id: u32,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        let (app, app_auth) = split_query(app_name);
        let (id, key_auth) = split_query(stream_key);
        let auth = key_auth.or(app_auth);
        if self.ingest.is_some() || self.play.is_some() {
            return self.refuse(request_id, PLAY_FAILED, "one stream per connection".into());
        }
        let uri = format!("/{app}/{id}");
        let play = PlayRequest {
            app,
            id,
            output: Output::Rtmp,
            uri: &uri,
            auth_key: auth.as_deref(),
        };
        match self.live.play(&play) {
            Ok(player) => {
                let results = self.session.accept_request(request_id).map_err(protocol)?;
                self.play = Some((player, stream_id));
                Ok(results)
            }
            Err(refusal) => self.refuse(
                request_id,
                PLAY_FAILED,
                format!("play of /{app}/{id}: {refusal}"),
            ),
        }
    }

    /// Tells the client no, then ends the connection (the caller's error) once it is sent.
    fn refuse(
        &mut self,
        request_id: u32,
        code: &str,
        why: String,
    ) -> Result<Vec<ServerSessionResult>, ConnError> {
        if let Ok(results) = self.session.reject_request(request_id, code, &why) {
            for result in results {
                if let ServerSessionResult::OutboundResponse(packet) = result {
                    self.out.extend_from_slice(&packet.bytes);
                }
            }
        }
        Err(ConnError::Refused(why))
    }

    /// One tag to this connection's player.
    fn play_tag(&mut self, tag: Tag) -> Result<(), ConnError> {
        let Some((_, stream_id)) = &self.play else {
            return Ok(());
        };
        let stream_id = *stream_id;
        let timestamp = RtmpTimestamp::new(tag.timestamp_ms);
        let packet = match tag.kind {
            TagKind::Video => self
                .session
                .send_video_data(stream_id, tag.data, timestamp, false),
            TagKind::Audio => self
                .session
                .send_audio_data(stream_id, tag.data, timestamp, false),
            TagKind::Script => match metadata_of(&tag.data) {
                Some(metadata) => self.session.send_metadata(stream_id, &metadata),
                None => return Ok(()),
            },
        }
        .map_err(protocol)?;
        self.out.extend_from_slice(&packet.bytes);
        Ok(())
    }
}

/// The FLV script tag body (`onMetaData` and its properties) for what a publisher's
/// `@setDataFrame` said.
fn metadata_body(m: &StreamMetadata) -> Option<Bytes> {
    let mut props = HashMap::new();
    let mut number = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            props.insert(name.to_string(), Amf0Value::Number(v));
        }
    };
    number("width", m.video_width.map(f64::from));
    number("height", m.video_height.map(f64::from));
    number("videocodecid", m.video_codec_id.map(f64::from));
    number("videodatarate", m.video_bitrate_kbps.map(f64::from));
    number("framerate", m.video_frame_rate.map(f64::from));
    number("audiocodecid", m.audio_codec_id.map(f64::from));
    number("audiodatarate", m.audio_bitrate_kbps.map(f64::from));
    number("audiosamplerate", m.audio_sample_rate.map(f64::from));
    number("audiochannels", m.audio_channels.map(f64::from));
    if let Some(stereo) = m.audio_is_stereo {
        props.insert("stereo".into(), Amf0Value::Boolean(stereo));
    }
    if let Some(encoder) = &m.encoder {
        props.insert("encoder".into(), Amf0Value::Utf8String(encoder.clone()));
    }
    let values = vec![
        Amf0Value::Utf8String("onMetaData".into()),
        Amf0Value::Object(props),
    ];
    rml_amf0::serialize(&values).ok().map(Bytes::from)
}

/// The metadata in a script tag body, for an RTMP player.
fn metadata_of(body: &[u8]) -> Option<StreamMetadata> {
    let mut values = rml_amf0::deserialize(&mut &body[..]).ok()?.into_iter();
    match values.next()? {
        Amf0Value::Utf8String(name) if name == "onMetaData" => {}
        _ => return None,
    }
    let props = values.next()?.get_object_properties()?;
    let mut metadata = StreamMetadata::new();
    metadata.apply_metadata_values(props);
    Some(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_survives_the_trip_through_an_flv_script_tag() {
        let mut m = StreamMetadata::new();
        m.video_width = Some(1280);
        m.video_height = Some(720);
        m.video_codec_id = Some(7);
        m.encoder = Some("x264".into());
        let body = metadata_body(&m).expect("serializes");
        assert_eq!(metadata_of(&body), Some(m));
        assert_eq!(metadata_of(b"\x02\x00\x01x"), None);
        assert_eq!(metadata_of(b""), None);
    }
}
