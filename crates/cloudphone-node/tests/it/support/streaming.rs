//! Shared by the streaming tests: an in-process node (`run()` on real listeners), a signaling
//! WebSocket client, and a webrtc-rs viewer that decodes what it receives with GStreamer.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudphone_node::config::NodeConfig;
use cloudphone_node::testing::viewer::{forward_rtp, receiving_peer, remote_candidate};
use cloudphone_node::testing::{InProcessNode, Listeners};
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{
    Candidate, ClientMessage, Definition, EncodingType, Hello, NetworkType, NodeMessage,
};
use cloudphone_testkit::process::InstanceProcessGuard;
use futures::{SinkExt, StreamExt};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::MediaEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A node running in this process ([`InProcessNode`], shared with the bench), with its state
/// dir; its fields (`grpc`, `http`, `ws_url`) through `Deref`.
pub(crate) struct Node {
    inner: InProcessNode,
    _guard: InstanceProcessGuard,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = InProcessNode;

    fn deref(&self) -> &InProcessNode {
        &self.inner
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut InProcessNode {
        &mut self.inner
    }
}

impl Node {
    pub(crate) async fn start(runtime: &str, tweak: impl FnOnce(&mut NodeConfig)) -> Node {
        // RUST_LOG=cloudphone_node=debug shows the node's side of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("cp-stream-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let listeners = Listeners::bind(Ipv4Addr::LOCALHOST.into()).await.unwrap();
        let http = listeners.http_addr().unwrap();
        let mut config = listeners.config("stream-test", dir.path()).unwrap();
        config.runtime = runtime.into();
        // Each test binary runs its tests in parallel; give each node its own displays.
        config.x11.first_display = 200 + (std::process::id() % 50) * 10 + (http.port() as u32 % 10);
        config.webrtc.ice_interfaces = cloudphone_testkit::ice_interfaces();
        tweak(&mut config);
        Self::launch(config, dir, listeners).await
    }

    async fn launch(config: NodeConfig, dir: tempfile::TempDir, listeners: Listeners) -> Node {
        Node {
            inner: InProcessNode::launch(config, listeners, WAIT)
                .await
                .unwrap(),
            _guard: InstanceProcessGuard(dir.path().to_path_buf()),
            dir,
        }
    }

    /// Stops the node and starts it again over the same state dir, on the same addresses (a
    /// viewer reconnects to the `signaling_url` it had). `between` runs while it is down.
    pub(crate) async fn restart(mut self, between: impl FnOnce(&std::path::Path)) -> Node {
        self.stop_task().await;
        between(self.dir.path());
        let listeners = Listeners::rebind(&self.config).await.unwrap();
        let Node { dir, inner, .. } = self;
        Self::launch(inner.config, dir, listeners).await
    }

    pub(crate) async fn create_instance(&mut self, id: &str, width: u32, height: u32) {
        self.inner
            .create_running((id, "tenant-1"), (width, height), WAIT)
            .await
            .unwrap();
    }

    /// Authorises `device_id` with `token` for `valid_for`.
    /// [`Node::start_session`] valid for ten minutes, longer than any test streams.
    pub(crate) async fn open_session(
        &mut self,
        instance: &str,
        device_id: &str,
        token: &str,
    ) -> pb::StartSessionResponse {
        self.start_session(instance, device_id, token, Duration::from_secs(600))
            .await
    }

    pub(crate) async fn start_session(
        &mut self,
        instance: &str,
        device_id: &str,
        token: &str,
        valid_for: Duration,
    ) -> pb::StartSessionResponse {
        self.grpc
            .start_session(session_request(instance, device_id, token, valid_for))
            .await
            .unwrap()
            .into_inner()
    }

    /// StartSession for 10 minutes with a role (what control sends for GetDeviceToken's body).
    pub(crate) async fn authorize_as(
        &mut self,
        instance: &str,
        device_id: &str,
        token: &str,
        role: pb::ViewerRole,
    ) -> Result<pb::StartSessionResponse, tonic::Status> {
        let mut request = session_request(instance, device_id, token, Duration::from_secs(600));
        request.role = role as i32;
        self.grpc
            .start_session(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The report stream, opened as control opens it.
    pub(crate) async fn open_reports(&mut self) -> tonic::Streaming<pb::NodeReport> {
        self.grpc
            .open_reports(pb::OpenReportsRequest {
                control_id: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// StopStreaming on `instance`: how many streams it ended.
    pub(crate) async fn stop_streaming(&mut self, instance: &str) -> u32 {
        let r = self.grpc.stop_streaming(instance_ref(instance)).await;
        r.unwrap().into_inner().streams_stopped
    }

    /// ReleaseSession on `instance`: how many sessions it ended.
    pub(crate) async fn release_session(&mut self, instance: &str) -> u32 {
        let r = self.grpc.release_session(instance_ref(instance)).await;
        r.unwrap().into_inner().sessions_released
    }

    /// A webrtc-rs viewer saying hello for `device_id` at 540P; the refusal instead when the
    /// node answers with an error.
    pub(crate) async fn viewer(
        &self,
        device_id: &str,
        token: &str,
        codec: EncodingType,
    ) -> Result<RustViewer, NodeMessage> {
        RustViewer::connect(
            &self.ws_url,
            hello(device_id, token, codec, Definition::P540),
        )
        .await
    }

    /// Like [`Node::viewer`] for H.264, also receiving the audio track
    /// ([`RustViewer::connect_audio`]); panics on a refusal.
    pub(crate) async fn audio_viewer(&self, device_id: &str, token: &str) -> RustViewer {
        let hello = hello(device_id, token, EncodingType::H264, Definition::P540);
        RustViewer::connect_audio(&self.ws_url, hello)
            .await
            .unwrap()
    }

    /// The product's player page (`player.html`, read from the tree) as a `file://` URL that
    /// connects to this node at once as `device_id` with `token`, asking for H.264 at 540P.
    pub(crate) fn player_page(&self, device_id: &str, token: &str) -> String {
        let player = cloudphone_testkit::browser::workspace()
            .join("crates/cloudphone-control/assets/player.html")
            .canonicalize()
            .unwrap();
        format!(
            "file://{}?signaling={}&device_id={device_id}&device_token={token}&codec=H264&definition=540P&network=WIFI&autoconnect=1",
            player.display(),
            self.ws_url
        )
    }

    /// Like [`Node::viewer`] for H.264, with ICE over the TURN servers from `ready` only.
    pub(crate) async fn relay_viewer(
        &self,
        device_id: &str,
        token: &str,
    ) -> Result<RustViewer, NodeMessage> {
        let hello = hello(device_id, token, EncodingType::H264, Definition::P540);
        RustViewer::connect_with(&self.ws_url, hello, true).await
    }

    pub(crate) async fn shutdown(mut self) {
        self.stop_task().await;
    }

    /// Stops the in-process node gracefully and waits for it (at most 20 s).
    async fn stop_task(&mut self) {
        self.inner
            .stop(Duration::from_secs(20))
            .await
            .expect("node stops in time");
    }
}

fn instance_ref(instance: &str) -> pb::InstanceRef {
    pb::InstanceRef {
        instance_id: instance.into(),
    }
}

pub(crate) fn hello(
    device_id: &str,
    token: &str,
    codec: EncodingType,
    definition: Definition,
) -> Hello {
    Hello {
        device_id: device_id.into(),
        device_token: token.into(),
        network_type: NetworkType::Wifi,
        encoding_type: codec,
        definition,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A signaling WebSocket client.
pub(crate) struct Signaling {
    ws: Ws,
}

impl Signaling {
    pub(crate) async fn connect(url: &str) -> Signaling {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Signaling { ws }
    }

    pub(crate) async fn send(&mut self, m: &ClientMessage) {
        self.ws
            .send(Message::text(serde_json::to_string(m).unwrap()))
            .await
            .unwrap();
    }

    /// The next node message; `None` once the socket closed.
    pub(crate) async fn recv(&mut self) -> Option<NodeMessage> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a signaling message in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// What a viewer has received and decoded so far.
#[derive(Default)]
pub(crate) struct Counters {
    pub rtp_bytes: AtomicU64,
    /// RTP packets received, and the packets the sequence numbers say were sent.
    pub rtp_packets: AtomicU64,
    pub rtp_expected: AtomicU64,
    pub frames: AtomicU64,
    pub width: AtomicU32,
    pub height: AtomicU32,
    /// What an audio viewer ([`RustViewer::connect_audio`]) decoded.
    pub audio: AudioCapture,
}

/// Decoded sound (mono S16 at 48 kHz) and, for the sync measurement, when each audio buffer and
/// each video frame came out of its decoder.
#[derive(Default)]
pub(crate) struct AudioCapture {
    pub packets: AtomicU64,
    pub samples: Mutex<Vec<i16>>,
    /// (decoded at, index of the buffer's first sample in `samples`).
    pub buffers: Mutex<Vec<(Instant, usize)>>,
    /// (decoded at, mean luma of the frame's centre row) of each video frame.
    pub luma: Mutex<Vec<(Instant, u8)>>,
}

/// Samples per second of [`AudioCapture::samples`].
pub(crate) const AUDIO_RATE: usize = 48_000;

/// A webrtc-rs viewer decoding with GStreamer.
pub(crate) struct RustViewer {
    pub signaling: Signaling,
    pub pc: Arc<RTCPeerConnection>,
    /// The `input` data channel, opened as the console player opens it so the offer carries
    /// an SCTP section; no test sends on it yet.
    #[allow(dead_code)]
    pub input: Arc<RTCDataChannel>,
    pub counters: Arc<Counters>,
    pub ready: NodeMessage,
    candidates: mpsc::UnboundedReceiver<Candidate>,
    /// Every local candidate this viewer offered.
    pub local_candidates: Vec<String>,
}

impl RustViewer {
    /// Says hello; returns the refusal instead when the node answers with an error.
    pub(crate) async fn connect(url: &str, hello: Hello) -> Result<RustViewer, NodeMessage> {
        Self::connect_with(url, hello, false).await
    }

    /// Like `connect`; with `relay_only`, ICE uses only the TURN servers from `ready`.
    pub(crate) async fn connect_with(
        url: &str,
        hello: Hello,
        relay_only: bool,
    ) -> Result<RustViewer, NodeMessage> {
        Self::connect_on(url, hello, relay_only, cloudphone_testkit::ice_interfaces()).await
    }

    /// Like `connect_with`, gathering ICE candidates only on `interfaces` (empty: all).
    pub(crate) async fn connect_on(
        url: &str,
        hello: Hello,
        relay_only: bool,
        interfaces: Vec<String>,
    ) -> Result<RustViewer, NodeMessage> {
        Self::connect_full(url, hello, relay_only, interfaces, false).await
    }

    /// Like `connect`, also receiving the audio track: its Opus is decoded into
    /// [`Counters::audio`], and each decoded video frame's luma is recorded there.
    pub(crate) async fn connect_audio(url: &str, hello: Hello) -> Result<RustViewer, NodeMessage> {
        Self::connect_full(
            url,
            hello,
            false,
            cloudphone_testkit::ice_interfaces(),
            true,
        )
        .await
    }

    async fn connect_full(
        url: &str,
        hello: Hello,
        relay_only: bool,
        interfaces: Vec<String>,
        audio: bool,
    ) -> Result<RustViewer, NodeMessage> {
        gst::init().unwrap();
        let mut signaling = Signaling::connect(url).await;
        signaling.send(&ClientMessage::Hello(hello)).await;
        let ready = signaling.recv().await.expect("a reply to hello");
        if !matches!(ready, NodeMessage::Ready { .. }) {
            return Err(ready);
        }
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        // Receiver reports only. webrtc-rs's NACK generator re-asks for every missing packet
        // every 100 ms without limit; under a real bottleneck that fills the link with
        // retransmissions (seen: 50 k dropped packets in 20 s under 1 Mbit/s) and measures the
        // client, not the node. Browsers cap their NACKs.
        let _ = &mut media;
        let registry = webrtc::api::interceptor_registry::configure_rtcp_reports(Registry::new());
        // Candidates from the default route's interface only, as the test node's (see
        // `cloudphone_testkit::default_route_interface`).
        let mut setting = webrtc::api::setting_engine::SettingEngine::default();
        let allowed = interfaces;
        if !allowed.is_empty() {
            setting.set_interface_filter(Box::new(move |name| allowed.iter().any(|i| i == name)));
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        let NodeMessage::Ready { ice_servers, .. } = &ready else {
            unreachable!()
        };
        let kinds: &[RTPCodecType] = if audio {
            &[RTPCodecType::Video, RTPCodecType::Audio]
        } else {
            &[RTPCodecType::Video]
        };
        let (cand_tx, candidates) = mpsc::unbounded_channel();
        let (pc, input) = receiving_peer(&api, ice_servers, relay_only, kinds, move |c| {
            let _ = cand_tx.send(c);
        })
        .await
        .unwrap();
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        pc.on_track(Box::new(move |track, receiver, _| {
            let c = Arc::clone(&c);
            // Incoming RTCP (the node's sender reports) only reaches the interceptors when
            // read; without this, receiver reports carry no LSR and the node gets no RTT.
            tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
            Box::pin(async move {
                let codec = track.codec();
                if track.kind() == RTPCodecType::Audio {
                    // Its own task: webrtc-rs awaits each on_track future before it reports
                    // the next track.
                    tokio::spawn(async move {
                        let (appsrc, pipeline) = opus_decoder(codec.payload_type, Arc::clone(&c));
                        forward_rtp(&track, &appsrc, |_, _| {
                            c.audio.packets.fetch_add(1, Ordering::Relaxed);
                        })
                        .await;
                        let _ = pipeline.set_state(gst::State::Null);
                    });
                    return;
                }
                let (name, depay, parse, dec) = if codec
                    .capability
                    .mime_type
                    .eq_ignore_ascii_case("video/H265")
                {
                    ("H265", "rtph265depay", "h265parse", "avdec_h265")
                } else {
                    ("H264", "rtph264depay", "h264parse", "avdec_h264")
                };
                // Its own task, like the audio track's (see there).
                tokio::spawn(async move {
                    let (appsrc, pipeline) = decoder(
                        name,
                        codec.payload_type,
                        (depay, parse, dec),
                        Arc::clone(&c),
                        audio,
                    );
                    let mut highest: Option<u16> = None;
                    forward_rtp(&track, &appsrc, |packet, size| {
                        let seq = packet.header.sequence_number;
                        c.rtp_packets.fetch_add(1, Ordering::Relaxed);
                        c.rtp_bytes.fetch_add(size as u64, Ordering::Relaxed);
                        match highest {
                            None => {
                                c.rtp_expected.fetch_add(1, Ordering::Relaxed);
                                highest = Some(seq);
                            }
                            Some(h) => {
                                let ahead = seq.wrapping_sub(h);
                                // Ahead by less than half the space: new packets (a gap is loss);
                                // otherwise a late or retransmitted one, already expected.
                                if ahead != 0 && ahead < 0x8000 {
                                    c.rtp_expected
                                        .fetch_add(u64::from(ahead), Ordering::Relaxed);
                                    highest = Some(seq);
                                }
                            }
                        }
                    })
                    .await;
                    let _ = pipeline.set_state(gst::State::Null);
                });
            })
        }));
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer.clone()).await.unwrap();
        signaling
            .send(&ClientMessage::Offer { sdp: offer.sdp })
            .await;
        let mut viewer = RustViewer {
            signaling,
            pc,
            input,
            counters,
            ready,
            candidates,
            local_candidates: Vec::new(),
        };
        // The answer comes first; candidates keep flowing in `pump_for`.
        match viewer.signaling.recv().await {
            Some(NodeMessage::Answer { sdp }) => {
                viewer
                    .pc
                    .set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
                    .await
                    .unwrap();
            }
            Some(other) => return Err(other),
            None => panic!("socket closed before the answer"),
        }
        Ok(viewer)
    }

    /// Forwards candidates both ways until `until` resolves; returns the first non-candidate
    /// node message, if one arrived.
    pub(crate) async fn pump_for(&mut self, duration: Duration) -> Option<NodeMessage> {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                Some(c) = self.candidates.recv() => {
                    self.local_candidates.push(c.candidate.clone());
                    self.signaling.send(&ClientMessage::Candidate(c)).await;
                }
                m = self.signaling.recv_quiet() => match m {
                    Some(NodeMessage::Candidate(c)) => {
                        let _ = self.pc.add_ice_candidate(remote_candidate(c)).await;
                    }
                    Some(other) => return Some(other),
                    None => return Some(NodeMessage::Bye { reason: cloudphone_signaling::ByeReason::Shutdown }),
                },
            }
        }
    }

    /// Pumps for up to 5 s and expects the node's bye, for `reason`.
    pub(crate) async fn expect_bye(&mut self, reason: cloudphone_signaling::ByeReason) {
        assert_eq!(
            self.pump_for(Duration::from_secs(5)).await,
            Some(NodeMessage::Bye { reason })
        );
    }

    /// Pumps until at least `frames` frames decoded.
    pub(crate) async fn wait_frames(&mut self, frames: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.counters.frames.load(Ordering::Relaxed) < frames {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} frames decoded in {within:?}",
                self.counters.frames.load(Ordering::Relaxed)
            );
            if let Some(m) = self.pump_for(Duration::from_millis(100)).await {
                panic!("unexpected node message while waiting for frames: {m:?}");
            }
        }
    }

    /// Average received RTP bitrate over `window`, in kbit/s.
    pub(crate) async fn measure_kbps(&mut self, window: Duration) -> f64 {
        let before = self.counters.rtp_bytes.load(Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        assert!(self.pump_for(window).await.is_none());
        let bytes = self.counters.rtp_bytes.load(Ordering::Relaxed) - before;
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1000.0
    }
}

impl Signaling {
    /// Like `recv`, without a timeout (for use inside `select!`).
    pub(crate) async fn recv_quiet(&mut self) -> Option<NodeMessage> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// appsrc (RTP) → depayloader → parser → software decoder → appsink, counting frames; with
/// `luma`, each frame's centre-row luma is recorded with when it was decoded.
fn decoder(
    encoding: &str,
    pt: u8,
    (depay, parse, dec): (&str, &str, &str),
    counters: Arc<Counters>,
    luma: bool,
) -> (gst_app::AppSrc, gst::Pipeline) {
    let format = if luma { ",format=I420" } else { "" };
    let line = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=application/x-rtp,media=video,encoding-name={encoding},clock-rate=90000,payload={pt} \
         ! rtpjitterbuffer latency=50 ! {depay} ! {parse} ! {dec} ! videoconvert \
         ! video/x-raw{format} ! appsink name=sink sync=false max-buffers=2 drop=true"
    );
    let pipeline = gst::parse::launch(&line)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let appsrc = element::<gst_app::AppSrc>(&pipeline, "src");
    let sink = element::<gst_app::AppSink>(&pipeline, "sink");
    if luma {
        sink.set_callbacks(record_luma(counters));
    } else {
        sink.set_callbacks(count_decoded(counters));
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    (appsrc, pipeline)
}

/// The element `name` of `bin`, as a `T`.
pub(crate) fn element<T: IsA<gst::Element>>(bin: &impl IsA<gst::Bin>, name: &str) -> T {
    bin.by_name(name).unwrap().downcast::<T>().unwrap()
}

/// Appsink callbacks that count decoded frames into `counters` and keep the last frame's size.
pub(crate) fn count_decoded(counters: Arc<Counters>) -> gst_app::AppSinkCallbacks {
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            if let Some(s) = sample.caps().and_then(|c| c.structure(0))
                && let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height"))
            {
                counters.width.store(w as u32, Ordering::Relaxed);
                counters.height.store(h as u32, Ordering::Relaxed);
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// Counts frames like [`count_decoded`] and records each I420 frame's centre-row mean luma.
fn record_luma(counters: Arc<Counters>) -> gst_app::AppSinkCallbacks {
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let at = Instant::now();
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let size = sample
                .caps()
                .and_then(|c| c.structure(0))
                .and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
            if let (Some((w, h)), Some(buffer)) = (size, sample.buffer())
                && let Ok(map) = buffer.map_readable()
            {
                counters.width.store(w as u32, Ordering::Relaxed);
                counters.height.store(h as u32, Ordering::Relaxed);
                let (w, h) = (w as usize, h as usize);
                // I420 rows are padded to 4 bytes.
                let stride = w.div_ceil(4) * 4;
                let row = map
                    .get(stride * (h / 2)..stride * (h / 2) + w)
                    .unwrap_or(&[]);
                let mean = row.iter().map(|&y| u64::from(y)).sum::<u64>() / row.len().max(1) as u64;
                counters.audio.luma.lock().unwrap().push((at, mean as u8));
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// appsrc (RTP) → Opus depayloader and decoder → mono S16 48 kHz into [`Counters::audio`].
fn opus_decoder(pt: u8, counters: Arc<Counters>) -> (gst_app::AppSrc, gst::Pipeline) {
    let line = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload={pt} \
         ! rtpjitterbuffer latency=50 ! rtpopusdepay ! opusdec ! audioconvert ! audioresample \
         ! audio/x-raw,format=S16LE,channels=1,rate=48000 \
         ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&line)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let appsrc = element::<gst_app::AppSrc>(&pipeline, "src");
    element::<gst_app::AppSink>(&pipeline, "sink").set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let at = Instant::now();
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(buffer) = sample.buffer()
                    && let Ok(map) = buffer.map_readable()
                {
                    let mut samples = counters.audio.samples.lock().unwrap();
                    counters
                        .audio
                        .buffers
                        .lock()
                        .unwrap()
                        .push((at, samples.len()));
                    samples.extend(
                        map.chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]])),
                    );
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    (appsrc, pipeline)
}

/// The StartSession a test's viewer is admitted with (no role: an owner, as before roles).
pub(crate) fn session_request(
    instance: &str,
    device_id: &str,
    token: &str,
    valid_for: Duration,
) -> pb::StartSessionRequest {
    pb::StartSessionRequest {
        instance_id: instance.into(),
        device_token_sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
        expires_at_unix_ms: cloudphone_node::unix_ms() + valid_for.as_millis() as i64,
        user_id: "user-1".into(),
        tenant_id: "tenant-1".into(),
        device_id: device_id.into(),
        role: pb::ViewerRole::Unspecified as i32,
        renew: false,
    }
}
