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

use bytes::{BufMut, Bytes, BytesMut};
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
use super::fanout::Sink;
use super::hub::{Tag, TagKind};
use super::{Ingest, Live, PlayerCount};

/// The `onStatus` codes a refused publish or play gets.
const PUBLISH_DENIED: &str = "NetStream.Publish.Denied";
const PLAY_FAILED: &str = "NetStream.Play.Failed";
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 4096;
/// A client that has not finished the handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The chunk streams this module sends media on. `rml_rtmp`'s session uses 2 to 6 for what it
/// sends itself (control, commands, and media when asked, which it never is here), so
/// messages framed here never follow one of its headers on a chunk stream, and its own
/// compressed headers never follow one of ours.
const CSID_DATA: u8 = 7;
const CSID_AUDIO: u8 = 8;
const CSID_VIDEO: u8 = 9;
/// The largest timestamp a chunk header holds; larger ones go in the extended field.
const MAX_HEADER_TIMESTAMP: u32 = 0x00ff_ffff;
/// A connection that sends nothing for this long while not playing (a silent publisher, or a
/// client that never asks for anything) is dropped. Players are exempt: with the 1 GiB
/// acknowledgement window they may rightly say nothing for hours; a dead one fails a write.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    let config = ServerSessionConfig::new();
    let chunk_size = config.chunk_size as usize;
    let (session, results) = ServerSession::new(config).map_err(protocol)?;
    let socket = Arc::new(socket);
    let mut conn = Conn {
        sink: Sink::new(Arc::clone(&socket)),
        socket,
        session,
        chunk_size,
        live,
        ingest: None,
        play: None,
    };
    conn.process(results)?;
    conn.input(&remaining)?;
    conn.sink.flush()?;
    tracing::debug!(%peer, "RTMP session started");
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(super::STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A player's media is written by its stream's writers (see `fanout`): this loop wakes for
    // what they leave it (the rest of a write, the stream's end), not for every tag.
    loop {
        // Players are exempt: with the 1 GiB acknowledgement window they may rightly say
        // nothing for hours (a dead one fails a write).
        let idle = conn.play.is_none().then_some(IDLE_TIMEOUT);
        let pending = conn.sink.pending();
        tokio::select! {
            read = read_some(&conn.socket, &mut buf, idle) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                conn.input(&buf[..n])?;
            }
            () = revoked(&mut conn.ingest) => {
                return Err(ConnError::Refused("the stream's admission was withdrawn".into()));
            }
            () = conn.sink.notified() => {
                // The publisher left: the play is over once what is queued went out.
                if conn.sink.ended() {
                    if let Some(play) = conn.play.take()
                        && let Ok(packet) = conn.session.finish_playing(play.stream_id)
                    {
                        conn.sink.queue(Bytes::from(packet.bytes));
                    }
                    conn.sink.flush_all().await?;
                    return Ok(());
                }
            }
            writable = conn.socket.writable(), if pending => writable?,
            _ = tick.tick(), if conn.ingest.is_some() => {
                if let Some(ingest) = &mut conn.ingest {
                    ingest.report();
                }
            }
            () = stopped(&mut stop) => return Ok(()),
        }
        conn.sink.flush()?;
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

/// One read, within `idle` when given.
async fn read_some(
    socket: &TcpStream,
    buf: &mut [u8],
    idle: Option<Duration>,
) -> Result<usize, ConnError> {
    Ok(match idle {
        Some(idle) => tokio::time::timeout(idle, read(socket, buf))
            .await
            .map_err(|_| ConnError::Timeout)??,
        None => read(socket, buf).await?,
    })
}

/// A read on a socket shared with the stream's writers (which only write to it).
async fn read(socket: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            read => return read,
        }
    }
}

/// A tag as one RTMP message in chunks of `chunk_size`, on message stream `stream_id`. Every
/// message opens with a full (type 0) header, absolute timestamp and all, so the bytes do not
/// depend on what this connection sent before: framed once, they serve every player with the
/// same chunk size and stream id (see [`Tag::rtmp_chunks`]). The continuation chunks are
/// type 3, with the extended timestamp repeated as the type 0 header had one.
pub(crate) fn chunks(tag: &Tag, chunk_size: usize, stream_id: u32) -> Bytes {
    let (csid, type_id) = match tag.kind {
        TagKind::Video => (CSID_VIDEO, 9),
        TagKind::Audio => (CSID_AUDIO, 8),
        TagKind::Script => (CSID_DATA, 18),
    };
    let data = &tag.data[..];
    let extended = tag.timestamp_ms >= MAX_HEADER_TIMESTAMP;
    let pieces = data.len().div_ceil(chunk_size).max(1);
    let mut out = BytesMut::with_capacity(16 + data.len() + pieces * 5);
    out.put_u8(csid);
    out.put_uint(u64::from(tag.timestamp_ms.min(MAX_HEADER_TIMESTAMP)), 3);
    // An RTMP message is at most 2^24 - 1 bytes, as an FLV tag body is.
    out.put_uint((data.len() & 0x00ff_ffff) as u64, 3);
    out.put_u8(type_id);
    out.put_u32_le(stream_id);
    if extended {
        out.put_u32(tag.timestamp_ms);
    }
    for (i, piece) in data.chunks(chunk_size.max(1)).enumerate() {
        if i > 0 {
            out.put_u8(0xc0 | csid);
            if extended {
                out.put_u32(tag.timestamp_ms);
            }
        }
        out.extend_from_slice(piece);
    }
    out.freeze()
}

/// One RTMP connection: a publisher, a player, or (until it asks) neither.
struct Conn {
    socket: Arc<TcpStream>,
    /// What goes to the peer, in order: the session's messages, queued here and written once
    /// per turn of the loop, and while playing the media the stream's writers write.
    sink: Arc<Sink>,
    session: ServerSession,
    live: Arc<Live>,
    /// Set while this connection publishes.
    ingest: Option<Ingest>,
    /// Set while this connection plays.
    play: Option<Play>,
    /// The chunk size the session announced to the peer (media is framed here, see [`chunks`]).
    chunk_size: usize,
}

/// A play in progress: the stream's writers serve the connection's sink until it drops.
struct Play {
    /// The RTMP message stream it plays on.
    stream_id: u32,
    sink: Arc<Sink>,
    _count: PlayerCount,
}

impl Drop for Play {
    fn drop(&mut self) {
        self.sink.detach();
    }
}

impl Conn {
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
                    self.sink.queue(Bytes::from(packet.bytes));
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
                    ingest.send(Tag::new(TagKind::Script, 0, data));
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
            ingest.send(Tag::new(kind, timestamp.value, data));
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
        if let Err(refusal) = self.live.check_play(&play) {
            return self.refuse(
                request_id,
                PLAY_FAILED,
                format!("play of /{app}/{id}: {refusal}"),
            );
        }
        // The session's answer (StreamBegin, Play.Start) goes before the first tag.
        let results = self.session.accept_request(request_id).map_err(protocol)?;
        self.process(results)?;
        match self
            .live
            .play_rtmp(&play, &self.sink, self.chunk_size, stream_id)
        {
            Ok(count) => {
                self.play = Some(Play {
                    stream_id,
                    sink: Arc::clone(&self.sink),
                    _count: count,
                });
                Ok(Vec::new())
            }
            // The publisher left in between: as when it leaves during the play.
            Err(refusal) => Err(ConnError::Refused(format!(
                "play of /{app}/{id}: {refusal}"
            ))),
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
                    self.sink.queue(Bytes::from(packet.bytes));
                }
            }
        }
        Err(ConnError::Refused(why))
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

/// The metadata in a script tag body.
#[cfg(test)]
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
    use rml_rtmp::chunk_io::ChunkDeserializer;

    #[test]
    fn media_framed_once_reads_back_as_the_same_messages_after_the_sessions_own() {
        // What a player's parser sees: the session's own messages (its SetChunkSize first),
        // then our type 0 framed media, a video message over several chunks and an extended
        // timestamp among them.
        let (mut session, results) =
            ServerSession::new(ServerSessionConfig::new()).expect("session");
        let mut wire = Vec::new();
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                wire.extend_from_slice(&packet.bytes);
            }
        }
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let tags = [
            Tag::new(
                TagKind::Script,
                0,
                Bytes::from_static(b"\x02\x00\x0aonMetaData"),
            ),
            Tag::new(TagKind::Audio, 40, Bytes::from_static(&[0xaf, 1, 9, 9])),
            Tag::new(TagKind::Video, 40, Bytes::from(big.clone())),
            Tag::new(TagKind::Video, 0x0100_0000, Bytes::from(big)),
            Tag::new(TagKind::Audio, 0x0100_0001, Bytes::from_static(&[0xaf, 1])),
        ];
        for tag in &tags {
            wire.extend_from_slice(&tag.rtmp_chunks(4096, 1));
        }
        // The session's compressed headers stay its own after ours.
        let ping = session.send_ping_request().expect("ping").0;
        wire.extend_from_slice(&ping.bytes);

        let mut parser = ChunkDeserializer::new();
        let mut messages = Vec::new();
        let mut input = &wire[..];
        loop {
            match parser.get_next_message(input).expect("parses") {
                Some(message) => {
                    if message.type_id == 1 {
                        parser.set_max_chunk_size(4096).expect("size");
                    } else {
                        messages.push(message);
                    }
                }
                None => break,
            }
            input = &[];
        }
        assert_eq!(messages.last().map(|m| m.type_id), Some(4), "the ping last");
        let media: Vec<_> = messages
            .iter()
            .filter(|m| m.message_stream_id == 1)
            .collect();
        assert_eq!(media.len(), tags.len(), "{messages:?}");
        for (message, tag) in media.iter().zip(&tags) {
            assert_eq!(message.type_id, tag.kind as u8);
            assert_eq!(message.timestamp.value, tag.timestamp_ms);
            assert_eq!(message.message_stream_id, 1);
            assert_eq!(message.data, tag.data);
        }
        // Framed once: another player with the same chunk size and stream gets the same bytes.
        assert_eq!(
            tags[2].rtmp_chunks(4096, 1).as_ptr(),
            tags[2].rtmp_chunks(4096, 1).as_ptr()
        );
        assert_eq!(
            tags[2].rtmp_chunks(128, 3).len(),
            12 + 10_000 + 10_000usize.div_ceil(128) - 1
        );
    }

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
