//! The per-host agent: runs phone instances through a runtime and serves control over gRPC.
//!
//! # Layout
//! - [`config`]: TOML + environment configuration.
//! - [`runtime`]: the `Runtime` trait and its x11 / synthetic / android implementations.
//! - [`instances`]: the instance manager: persistence under the state dir, lifecycle, re-adoption.
//! - [`grpc`]: the `NodeAgent` service and the report stream to control.
//! - `convert`: proto messages to and from the core's types.
//! - [`announce`]: telling control this node exists.
//! - `mtls`: the node's certificate (enrolled once with a join token) and the TLS of both
//!   gRPC directions.
//! - [`apps`]: downloading and checking application packages.
//! - [`usage_buffer`]: usage records on disk until control acknowledges them.
//! - [`clock`]: the clock usage is timed by (tokio's in paused-time tests).
//! - [`http`]: `/healthz`, `/metrics`.
//! - `metrics`: the Prometheus metrics' names and descriptions.
//! - [`streaming`]: sessions, signaling (`/v1/signaling`), WebRTC peers, encoders.
//! - `live`: the live edge (seed 003): RTMP ingest and the players of each stream.
//! - `testing` (feature `test-support`): an in-process node for the integration tests and
//!   the bench.
#![forbid(unsafe_code)]

mod announce;
mod apps;
mod clock;
pub mod config;
mod convert;
mod grpc;
mod http;
pub mod instances;
mod live;
mod metrics;
mod mtls;
mod phone;
pub mod runtime;
pub mod streaming;
#[cfg(feature = "test-support")]
pub mod testing;
mod usage_buffer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cloudphone_proto::node_v1::node_agent_server::NodeAgentServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::instances::InstanceManager;
use crate::runtime::Runtime;

pub use cloudphone_daemon::unix_ms;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("runtime: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error("instances: {0}")]
    Instances(#[from] instances::InstanceError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("webrtc: {0}")]
    Peer(#[from] streaming::peer::PeerError),
    #[error("signaling TLS: {0}")]
    Tls(#[from] streaming::signaling::TlsError),
    #[error("enrollment: {0}")]
    Enroll(#[from] mtls::EnrollError),
}

fn build_runtime(config: &NodeConfig) -> Result<Arc<dyn Runtime>, runtime::RuntimeError> {
    Ok(match config.runtime.as_str() {
        "x11" => {
            // Besides the state dir (always hidden) and the config file (added on load):
            // the signaling TLS files.
            let secrets: Vec<std::path::PathBuf> =
                [&config.webrtc.tls_cert, &config.webrtc.tls_key]
                    .into_iter()
                    .flatten()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                    .collect();
            let mut x11 = runtime::x11::X11Config {
                first_display: config.x11.first_display,
                sandbox: config.sandbox.to_runtime(&secrets),
                ..Default::default()
            };
            if !config.x11.launcher.is_empty() {
                x11.launcher = config.x11.launcher.clone();
            }
            if !config.x11.xvfb.is_empty() {
                x11.xvfb = config.x11.xvfb.clone().into();
            }
            Arc::new(runtime::x11::X11Runtime::new(x11)?)
        }
        "android" => Arc::new(runtime::android::AndroidRuntime::new(
            runtime::android::AndroidConfig {
                adb: config.android.adb.clone(),
                serials: config.android.serials.clone(),
                clean_snapshot: Some(config.android.clean_snapshot.clone())
                    .filter(|s| !s.is_empty()),
            },
        )),
        _ => Arc::new(runtime::synthetic::SyntheticRuntime::new(
            std::path::PathBuf::from("/usr/bin/bwrap"),
        )?),
    })
}

/// Runs the node on already-bound listeners until `shutdown` resolves; then stops taking
/// requests and stops the instances' processes (their desired state stays on disk, so the
/// next start re-adopts them).
pub async fn run(
    config: NodeConfig,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let mut config = config;
    let (grpc_addr, http_addr) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
    config.fill_advertised(grpc_addr, http_addr);
    // The live edge's RTMP listener, when configured (off by default, see `LiveSection`).
    let rtmp_listener = match config.live.rtmp_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            config.fill_live_advertised(listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    let live = match &rtmp_listener {
        Some(_) => live::Live::new(
            config.live.public_rtmp_base_url.clone(),
            config.live.public_http_base_url.clone(),
        ),
        // Control's admission calls still work; nothing can publish, and the empty URLs tell
        // control this node runs no live edge.
        None => live::Live::new(String::new(), String::new()),
    };
    std::fs::create_dir_all(&config.state_dir)?;
    // Before anything else: a node that cannot prove who it is serves nothing.
    let tls = mtls::load_or_enroll(&config).await?;
    let runtime = build_runtime(&config)?;
    let manager = InstanceManager::open(
        config.state_dir.clone(),
        Arc::clone(&runtime),
        config.capacity as usize,
    )
    .await?;
    let identity = grpc::NodeIdentity {
        node_id: config.node_id.clone(),
        grpc_endpoint: config.grpc.advertise.clone(),
        signaling_base_url: config.http.public_url.clone(),
        capacity: config.capacity,
        runtime: config.runtime.clone(),
        // The pipeline's own registry, so control sees exactly the encoders streams can use.
        encoders: tokio::task::spawn_blocking(streaming::pipeline::available_encoders)
            .await
            .unwrap_or_default(),
        region: config.region.clone(),
        heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
    };
    let peers = Arc::new(streaming::peer::PeerFactory::new(
        &streaming::peer::PeerSettings {
            stun_urls: config.webrtc.stun_urls.clone(),
            public_ip: config.webrtc.public_ip.clone(),
            udp_port_min: config.webrtc.udp_port_min,
            udp_port_max: config.webrtc.udp_port_max,
            ice_interfaces: config.webrtc.ice_interfaces.clone(),
        },
    )?);
    // Live players over WebRTC share the phones' peer setup (ports, NAT address, interfaces).
    let players = live::http::Players {
        hls: Arc::new(live::hls::Hls::new(
            Arc::clone(live.hub()),
            config.state_dir.join("live/hls"),
        )),
        whep: Arc::new(live::whep::Whep::new(
            Arc::clone(live.hub()),
            Arc::clone(&peers),
        )),
        live: Arc::clone(&live),
    };
    let usage = usage_buffer::UsageBuffer::open(&config.state_dir, unix_ms())?;
    let pipeline_options = streaming::pipeline::PipelineOptions {
        test_pattern: if config.webrtc.synthetic_pattern.is_empty() {
            streaming::pipeline::DEFAULT_TEST_PATTERN.to_owned()
        } else {
            config.webrtc.synthetic_pattern.clone()
        },
        adb: config.android.adb.clone(),
        realtime_priority: config.webrtc.encoder_realtime_priority,
        ..Default::default()
    };
    let sessions = streaming::sessions::Sessions::new(
        Arc::clone(&manager),
        Arc::clone(&peers),
        streaming::sessions::SessionSettings {
            public_url: config.http.public_url.clone(),
            ice: streaming::ice::IceSettings {
                stun_urls: config.webrtc.stun_urls.clone(),
                turn_urls: config.webrtc.turn_urls.clone(),
                turn_secret: config.webrtc.turn_secret.clone(),
                turn_ttl_secs: config.webrtc.turn_ttl_secs,
            },
            max_viewers_per_instance: config.webrtc.max_viewers_per_instance as usize,
            usage_interval: Duration::from_secs(config.webrtc.usage_interval_secs),
            clock: clock::Clock::System,
            grant_file: Some(Arc::new(streaming::sessions::GrantFile::in_state_dir(
                &config.state_dir,
            ))),
        },
        streaming::encoder_factory(pipeline_options.clone()),
        usage.spawn_keeper(clock::Clock::System),
    );
    sessions.set_audio_factory(streaming::audio_factory(&pipeline_options));
    let downloads = apps::Downloads::new(&config.apps).map_err(std::io::Error::other)?;
    let health_usage = usage.clone();
    let service = grpc::NodeService::new(
        Arc::clone(&manager),
        identity,
        Arc::clone(&sessions),
        usage,
        downloads,
        Arc::clone(&live),
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    let control_channel = match (&tls, config.control.endpoint.as_str()) {
        (Some(tls), endpoint) if !endpoint.is_empty() => Some(tls.control_channel(endpoint)?),
        _ => None,
    };
    let announcer = announce::Announcer {
        control: control_channel,
        node_id: config.node_id.clone(),
        grpc_endpoint: config.grpc.advertise.clone(),
        open_streams: service.open_streams(),
    };
    tokio::spawn(announcer.run(stop_rx.clone()));
    tokio::spawn(Arc::clone(&players.hls).reap_idle(stop_rx.clone()));

    let _ = http::metrics_handle();
    metrics::describe();
    let mut http_stop = stop_rx.clone();
    // The RTMP server; awaited (bounded) on shutdown like the other listeners.
    let rtmp_task = match rtmp_listener {
        Some(listener) => {
            tracing::info!(rtmp = %listener.local_addr()?, "live edge: RTMP listening");
            Some(tokio::spawn(live::rtmp::serve(
                listener,
                Arc::clone(&live),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let health = http::Health {
        runtime,
        manager: Arc::clone(&manager),
        sessions: Arc::clone(&sessions),
        usage: health_usage,
        report_streams: service.open_streams(),
    };
    let router = http::router(health)
        .merge(streaming::signaling::router(Arc::clone(&sessions)))
        .merge(live::http::router(players))
        .merge(phone::router(phone::PhoneState {
            sessions: Arc::clone(&sessions),
            max_upload: match config.sandbox.file_size_max_mib {
                0 => phone::DEFAULT_MAX_UPLOAD,
                mib => mib << 20,
            },
        }));
    let stopped = async move {
        let _ = http_stop.changed().await;
    };
    // With a certificate, the HTTP side (signaling included) is served as TLS only.
    let http_task = match (&config.webrtc.tls_cert, &config.webrtc.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = streaming::signaling::tls_acceptor(cert, key)?;
            let listener = streaming::signaling::TlsListener::new(http_listener, acceptor)?;
            let server = axum::serve(listener, router).with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
        _ => {
            let server = axum::serve(http_listener, router).with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
    };

    tracing::info!(
        node_id = %config.node_id,
        grpc = %grpc_addr,
        http = %http_addr,
        runtime = %config.runtime,
        "node listening"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut grpc_stop = stop_rx.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let require_control = mtls::RequireControl {
        enforce: tls.is_some(),
    };
    let grpc_server = builder
        .add_service(NodeAgentServer::with_interceptor(service, require_control))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_stop.changed().await;
        });
    let grpc_task = tokio::spawn(grpc_server);

    shutdown.await;
    tracing::info!("shutting down: draining");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Viewers first: they get a `bye` while their sockets are still served.
    sessions.drain(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    // Report streams never end by themselves; bound the wait for in-flight calls.
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    if let Some(rtmp_task) = rtmp_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), rtmp_task).await;
    }
    manager.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
