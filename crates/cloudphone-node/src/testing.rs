//! An in-process node for the node's integration tests and the bench (feature `test-support`):
//! [`crate::run`] on real loopback listeners, driven over plaintext gRPC without control.
//! Each caller wraps it with its own state directory, process guard and error style.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cloudphone_proto::node_v1 as pb;
use cloudphone_proto::node_v1::node_agent_client::NodeAgentClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::NodeError;
use crate::config::NodeConfig;

/// The node's two listeners: gRPC on loopback, signaling (HTTP) on a chosen address.
pub struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
}

impl Listeners {
    /// Both on port 0: gRPC on 127.0.0.1, HTTP on `http_ip` (e.g. an impaired link's address,
    /// so that a viewer in the link's namespace reaches it).
    pub async fn bind(http_ip: IpAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
            http: TcpListener::bind((http_ip, 0)).await?,
        })
    }

    /// The addresses `config` listened on before, for a restart on the same addresses.
    pub async fn rebind(config: &NodeConfig) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(config.grpc.listen).await?,
            http: TcpListener::bind(config.http.listen).await?,
        })
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The default configuration for a node `node_id` on these listeners with its state in
    /// `state_dir`, with gRPC in plaintext (no control, so no certificates).
    pub fn config(&self, node_id: &str, state_dir: &Path) -> anyhow::Result<NodeConfig> {
        let grpc = self.grpc.local_addr()?;
        let http = self.http.local_addr()?;
        let mut config = NodeConfig::load(None, |_| None)?;
        config.node_id = node_id.into();
        config.state_dir = state_dir.to_path_buf();
        config.grpc.listen = grpc;
        config.grpc.advertise = format!("http://{grpc}");
        config.grpc.plaintext = true;
        config.http.listen = http;
        config.http.public_url = format!("ws://{http}");
        Ok(config)
    }
}

/// A node running on this process's runtime, with a gRPC client to it.
pub struct InProcessNode {
    pub grpc: NodeAgentClient<tonic::transport::Channel>,
    pub http: SocketAddr,
    /// The signaling WebSocket's URL.
    pub ws_url: String,
    /// What it was started with (for a restart on the same addresses).
    pub config: NodeConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl InProcessNode {
    /// Starts `config` on `listeners` and waits up to `within` for its gRPC to answer.
    pub async fn launch(
        config: NodeConfig,
        listeners: Listeners,
        within: Duration,
    ) -> anyhow::Result<InProcessNode> {
        let grpc_addr = listeners.grpc.local_addr()?;
        let http = listeners.http.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(
            config.clone(),
            listeners.grpc,
            listeners.http,
            async move {
                let _ = stopped.await;
            },
        ));
        let deadline = tokio::time::Instant::now() + within;
        let grpc = loop {
            match NodeAgentClient::connect(format!("http://{grpc_addr}")).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e).context("node gRPC");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        Ok(InProcessNode {
            grpc,
            http,
            ws_url: format!("ws://{http}/v1/signaling"),
            config,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// CreateInstance `id` for `tenant_id` at `width`×`height` on the node's runtime, then
    /// waits up to `within` for it to run.
    pub async fn create_running(
        &mut self,
        (id, tenant_id): (&str, &str),
        (width, height): (u32, u32),
        within: Duration,
    ) -> anyhow::Result<()> {
        self.grpc
            .create_instance(pb::CreateInstanceRequest {
                instance_id: id.into(),
                tenant_id: tenant_id.into(),
                runtime: String::new(),
                width,
                height,
                os: String::new(),
            })
            .await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self
                .grpc
                .get_instance_status(pb::InstanceRef {
                    instance_id: id.into(),
                })
                .await?
                .into_inner();
            if status.state == pb::InstanceState::Running as i32 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("instance {id} not running after {within:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the node gracefully and waits up to `within` for it; its error, if it failed.
    /// Stopping twice does nothing.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(within, task)
                .await
                .with_context(|| format!("node did not stop in {within:?}"))???;
        }
        Ok(())
    }
}

/// webrtc-rs receivers of the node's stream (the tests' viewer and the bench's), the parts
/// they share: the peer, the candidates both ways, RTP into a GStreamer decoder.
pub mod viewer {
    use std::sync::Arc;

    use cloudphone_signaling::{Candidate, IceServer};
    use gstreamer as gst;
    use gstreamer_app as gst_app;
    use webrtc::api::API;
    use webrtc::data_channel::RTCDataChannel;
    use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
    use webrtc::ice_transport::ice_server::RTCIceServer;
    use webrtc::peer_connection::RTCPeerConnection;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
    use webrtc::rtp::packet::Packet;
    use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
    use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
    use webrtc::track::track_remote::TrackRemote;
    use webrtc::util::Marshal;

    /// A peer that only receives: a recvonly transceiver per kind in `kinds`, and the `input`
    /// data channel opened as the console's player opens it (so the offer carries an SCTP
    /// section). ICE over the `ice_servers` of `ready` (only relayed with `relay_only`); each
    /// local candidate goes to `on_candidate`.
    pub async fn receiving_peer(
        api: &API,
        ice_servers: &[IceServer],
        relay_only: bool,
        kinds: &[RTPCodecType],
        on_candidate: impl Fn(Candidate) + Send + Sync + 'static,
    ) -> Result<(Arc<RTCPeerConnection>, Arc<RTCDataChannel>), webrtc::Error> {
        let config = RTCConfiguration {
            ice_servers: ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
                .collect(),
            ice_transport_policy: if relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::default()
            },
            ..Default::default()
        };
        let pc = Arc::new(api.new_peer_connection(config).await?);
        for kind in kinds {
            let recvonly = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            };
            pc.add_transceiver_from_kind(*kind, Some(recvonly)).await?;
        }
        let input = pc.create_data_channel("input", None).await?;
        let on_candidate = Arc::new(on_candidate);
        pc.on_ice_candidate(Box::new(move |c| {
            let on_candidate = Arc::clone(&on_candidate);
            Box::pin(async move {
                if let Some(init) = c.and_then(|c| c.to_json().ok()) {
                    on_candidate(Candidate {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                    });
                }
            })
        }));
        Ok((pc, input))
    }

    /// The node's candidate as webrtc-rs takes it.
    pub fn remote_candidate(c: Candidate) -> RTCIceCandidateInit {
        RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: None,
        }
    }

    /// Pushes `track`'s RTP packets into `appsrc` until the track ends or the pipeline stops
    /// taking them; `each` sees every packet and its size on the wire first.
    pub async fn forward_rtp(
        track: &TrackRemote,
        appsrc: &gst_app::AppSrc,
        mut each: impl FnMut(&Packet, usize),
    ) {
        while let Ok((packet, _)) = track.read_rtp().await {
            let Ok(bytes) = packet.marshal() else {
                continue;
            };
            each(&packet, bytes.len());
            if appsrc.push_buffer(gst::Buffer::from_slice(bytes)).is_err() {
                break;
            }
        }
    }
}
