//! The control plane: tenant REST API, IAM, durable state and scheduling; a gRPC client of the
//! node agents. No media ever flows through it.
//!
//! # Layout
//! - [`config`]: TOML + environment configuration.
//! - [`store`]: durable state behind the `Store` trait (SQLite or PostgreSQL).
//! - [`iam`]: password logins, tokens, token checks.
//! - [`nodes`]: the node registry: report streams, liveness, gRPC clients.
//! - `node_api`: the `ControlPlane` gRPC service on the node-facing listener (enrollment,
//!   announcements, the node list), over TLS.
//! - [`pki`]: control's node CA: the certificates of control and of enrolled nodes.
//! - [`replica`]: one serving process per SQLite file.
//! - `leader`: the PostgreSQL advisory-lock leader the fleet-wide background jobs run under.
//! - [`admin`]: the operator CLI (`tenant create`).
//! - [`usage`]: transcode usage records, streaming domains, access keys.
//! - `service`: the application layer: one function per operation, typed commands in, one
//!   error enum out (private).
//! - `metrics`: the Prometheus metrics' names and descriptions.
//! - `http`: routes and handlers that parse into service calls (private; the router is the
//!   interface).
#![forbid(unsafe_code)]

pub mod admin;
mod clock;
pub mod config;
mod http;
mod iam;
mod leader;
mod limits;
mod metrics;
mod node_api;
mod nodes;
pub mod pki;
pub mod replica;
mod service;
pub mod store;
mod usage;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use cloudphone_proto::node_v1::control_plane_server::ControlPlaneServer;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::ControlConfig;
use crate::nodes::Registry;
use crate::store::{Store, StoreError};

pub use cloudphone_daemon::unix_ms;

/// See [`AppState::placement_permits`]: a few, well under the smallest pool (SQLite's 4).
const PLACEMENTS_AT_ONCE: usize = 2;

/// What every handler shares.
pub struct AppState {
    pub config: ControlConfig,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// Orders placing at once in this process. Not what keeps slots apart (the database's
    /// locks do, `store::placement`): it keeps orders waiting on those locks from holding
    /// every pooled connection, which node reports and other requests need meanwhile.
    pub(crate) placement_permits: tokio::sync::Semaphore,
    /// Volcengine DescribeLiveTranscodeData's per-user request budget.
    pub volcengine_limiter: std::sync::Mutex<cloudphone_usage::ratelimit::RateLimiter>,
    /// The live edge API's per-key request budget (`[live_api] rate_limit`; `None`: none).
    pub(crate) live_limiter: Option<std::sync::Mutex<cloudphone_usage::ratelimit::RateLimiter>>,
    /// Wakes the restore worker when the prepare queue changed or a slot may have freed; the
    /// worker also looks on its own every second, so a lost wake-up only delays it.
    pub(crate) restore_wake: Notify,
    /// SyncCommand runs in flight per tenant, against `[quotas] concurrent_commands_per_tenant`.
    pub(crate) commands_in_flight: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The bounded password-check pool and the login backoff.
    pub(crate) login_guard: iam::LoginGuard,
    /// "Now" for token expiry and purging, the Volcengine rate window and the usage queries'
    /// time windows: the system clock, or tokio's in tests.
    pub(crate) clock: Clock,
    /// Whether this process leads the replicas (`leader`): the restore worker and the token
    /// purge run only while it does. Always true on SQLite.
    pub(crate) leader: watch::Sender<bool>,
    /// Replicas on PostgreSQL: request budgets and login backoff are counted in the database
    /// (`limits`), so all of them together allow what one process would.
    pub(crate) shared_limits: bool,
}

impl AppState {
    /// The state handlers share, over an opened store and a registry.
    pub(crate) fn new(
        config: ControlConfig,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Clock,
    ) -> Arc<Self> {
        let volcengine_limiter =
            std::sync::Mutex::new(cloudphone_usage::ratelimit::RateLimiter::new(
                config.usage.volcengine_rate_limit,
                i64::try_from(config.usage.volcengine_rate_window_ms).unwrap_or(i64::MAX),
            ));
        let shared_limits = leader::is_postgres(&config.store.url);
        let login_guard =
            iam::LoginGuard::new(&config.iam).shared_in_database(&config.iam, shared_limits);
        let leader = watch::Sender::new(leader::always_leads(&config.store.url));
        let live_limiter = (config.live_api.rate_limit > 0).then(|| {
            std::sync::Mutex::new(cloudphone_usage::ratelimit::RateLimiter::new(
                config.live_api.rate_limit,
                i64::try_from(config.live_api.rate_window_ms).unwrap_or(i64::MAX),
            ))
        });
        Arc::new(AppState {
            config,
            store,
            registry,
            volcengine_limiter,
            live_limiter,
            restore_wake: Notify::new(),
            login_guard,
            placement_permits: tokio::sync::Semaphore::new(PLACEMENTS_AT_ONCE),
            commands_in_flight: std::sync::Mutex::default(),
            clock,
            leader,
            shared_limits,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("serving the node-facing gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the API's TLS certificate: {0}")]
    Tls(#[from] cloudphone_daemon::tls::TlsError),
    #[error("node CA: {0}")]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Replica(#[from] replica::ReplicaError),
}

/// Runs control on already-bound listeners (the tenant API's, the node-facing gRPC one of
/// `[nodes].listen`, and the live edge's API of `[live_api].listen` when configured) until
/// `shutdown` resolves, then drains requests and waits for its background tasks (token
/// purger, node monitor, restore worker) to stop.
pub async fn run(
    config: ControlConfig,
    listener: TcpListener,
    node_listener: TcpListener,
    live_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    // A bad certificate stops start-up before anything is served.
    let api_tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(cloudphone_daemon::tls::tls_acceptor(cert, key)?),
        _ => None,
    };
    // Before anything touches the database: a second process on one SQLite file stops here.
    let _serving = replica::lock_store(&config.store.url)?;
    let store: Arc<dyn Store> = Arc::new(store::open(&config.store.url).await?);
    store.migrate().await?;
    let ca = Arc::new(pki::Ca::load_or_create(&pki::ca_dir(
        &config,
        &std::env::current_dir()?,
    ))?);
    // Control's own certificate, made anew each start: the server side of `[nodes].listen`
    // and the client side of every call to a node.
    let control_cert = ca.issue_control()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Registry::new(
        Arc::clone(&store),
        config.nodes.heartbeat_timeout_ms,
        stop_rx.clone(),
        nodes::NodeTls::new(ca.cert_pem(), &control_cert),
    );
    registry.start().await?;
    let _ = http::metrics_handle();
    metrics::describe();
    let store_url = config.store.url.clone();
    let timing = leader::Timing::new(config.replicas.leader_retry_ms);
    let refresh = std::time::Duration::from_millis(config.replicas.registry_refresh_ms);
    let state = AppState::new(config, store, registry, Clock::System);
    let node_api = node_api::ControlPlaneService::new(
        Arc::clone(&ca),
        Arc::clone(&state.registry),
        Arc::clone(&state.store),
        state.clock,
    );
    let mut grpc_stop = stop_rx.clone();
    let grpc_addr = node_listener.local_addr()?;
    // A client certificate is optional at the handshake only because Enroll is made without
    // one; every other call checks the certificate it needs (`node_api`).
    // The chain includes the CA so that a node on first contact can find the certificate its
    // join token's hash names (and from then on trust only it).
    let node_tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            format!("{}{}", control_cert.cert_pem, ca.cert_pem()),
            &control_cert.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    let grpc_server = tonic::transport::Server::builder()
        .tls_config(node_tls)?
        .add_service(ControlPlaneServer::new(node_api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(node_listener), async move {
            let _ = grpc_stop.changed().await;
        });
    let grpc_task = tokio::spawn(grpc_server.instrument(tracing::info_span!("node_api")));
    let mut background = vec![
        spawn_background(
            "token_purger",
            purge_tokens(
                Arc::clone(&state.store),
                state.clock,
                state.config.iam.backoff_rules().forget_ms,
                state.leader.subscribe(),
                stop_rx.clone(),
            ),
        ),
        spawn_background("node_monitor", Arc::clone(&state.registry).monitor()),
        spawn_background(
            "restore_worker",
            service::lifecycle_data::worker(Arc::clone(&state), stop_rx.clone()),
        ),
        spawn_background("node_refresh", Arc::clone(&state.registry).refresh(refresh)),
        spawn_background(
            "creation_resender",
            service::instances::resend_stale_creations(Arc::clone(&state), stop_rx.clone()),
        ),
    ];
    // On PostgreSQL the replicas elect the one that runs the fleet-wide jobs; SQLite's one
    // process leads from the start.
    if !leader::always_leads(&store_url) {
        background.push(spawn_background(
            "leader",
            leader::elect(store_url, timing, state.leader.clone(), stop_rx.clone()),
        ));
    }
    // The live edge's API (seed 003) on its own listener, stopped with the rest.
    let live_task = live_listener.map(|live_listener| {
        let app = http::live::router(Arc::clone(&state));
        let mut live_stop = stop_rx.clone();
        let served = axum::serve(live_listener, app).with_graceful_shutdown(async move {
            let _ = live_stop.changed().await;
        });
        tokio::spawn(
            served
                .into_future()
                .instrument(tracing::info_span!("live_api")),
        )
    });
    let app = http::router(state);
    tracing::info!(http = %listener.local_addr()?, tls = api_tls.is_some(), grpc = %grpc_addr, "control listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let stop_background = stop_tx.clone();
    // Connection addresses reach the login backoff (per-address lockout) as `ConnectInfo`.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let drained = async move {
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        // Node connectors and background tasks stop now; `run` awaits the tasks below
        // once the last request drained.
        let _ = stop_background.send(true);
    };
    // With a certificate the API is served as TLS only: a plain-HTTP request gets no answer.
    let served = match api_tls {
        Some(acceptor) => {
            // `tap_io` (doing nothing) is how axum hands a custom listener's peer address to
            // `ConnectInfo`, which the login backoff reads.
            let listener =
                cloudphone_daemon::tls::TlsListener::new(listener, acceptor)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(drained)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(drained)
                .await
        }
    };
    // Also when serving failed: nothing may outlive `run`.
    let _ = stop_tx.send(true);
    for (name, task) in background {
        if let Err(error) = task.await {
            tracing::error!(task = name, %error, "background task panicked");
        }
    }
    // Announcements are short unary calls; bound the wait anyway.
    let grpc_served = match tokio::time::timeout(std::time::Duration::from_secs(5), grpc_task).await
    {
        Ok(Ok(served)) => served,
        Ok(Err(join)) => {
            tracing::error!(%join, "node-facing gRPC server panicked");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("node-facing gRPC calls still open after 5 s; leaving them");
            Ok(())
        }
    };
    if let Some(task) = live_task {
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "live API listener failed"),
            Ok(Err(join)) => tracing::error!(%join, "live API listener panicked"),
            Err(_) => tracing::warn!("live API requests still open after 5 s; leaving them"),
        }
    }
    tracing::info!("background tasks stopped");
    served?;
    grpc_served?;
    Ok(())
}

/// Spawns one of `run`'s background tasks in a span named after it; `run` awaits the handle.
fn spawn_background(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> (&'static str, JoinHandle<()>) {
    let span = tracing::info_span!("background", task = name);
    (name, tokio::spawn(task.instrument(span)))
}

/// How long the shared request budgets' windows are kept: longer than any budget's window.
const LIMIT_WINDOWS_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Drops expired tokens hourly so the table does not grow without bound; returns on shutdown.
/// Only the leader purges (once per fleet is enough); a new leader purges at once. Also drops
/// the shared rate windows and login failures nobody needs any more.
async fn purge_tokens(
    store: Arc<dyn Store>,
    clock: Clock,
    forget_ms: i64,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if !leader::until_leading(&mut leader, &mut stop).await {
            return;
        }
        match store.purge_expired_tokens(clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired tokens removed"),
            Err(error) => tracing::warn!(%error, "token purge failed"),
        }
        // The shared budgets' past windows and forgotten login failures (empty on SQLite).
        let now = clock.now_ms();
        if let Err(error) = store
            .purge_limits(now - LIMIT_WINDOWS_KEPT_MS, now - forget_ms, now)
            .await
        {
            tracing::warn!(%error, "purging rate windows and login failures failed");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}
