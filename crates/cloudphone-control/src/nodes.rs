//! The node registry: one report stream per node, liveness from its heartbeats, and the gRPC
//! clients API handlers use to act on instances.
//!
//! Nodes announce themselves through `ControlPlane.Announce` (`node_api`); control then dials
//! the node's gRPC endpoint and keeps `OpenReports` open, reconnecting with backoff. A broken
//! stream marks the node down at once; a silent one is marked down by the monitor within
//! 1.25 × `heartbeat_timeout_ms`.
//!
//! Every channel to a node is mutual TLS ([`NodeTls`]): control presents its control-role
//! certificate and accepts only a certificate from its CA naming the node id it dials, so a
//! report stream is always the named node's. Every call carries a deadline ([`deadline_for`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudphone_core::instance::ControlState;
use cloudphone_core::liveness::{Liveness, NodeHealth};
use cloudphone_proto::node_v1::node_agent_client::NodeAgentClient;
use cloudphone_proto::node_v1::{self as pb, node_report::Report};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{Instrument, info, info_span, warn};

use crate::store::{NodeRecord, Store};

/// Control's view of a node-reported instance state; one this control does not know is
/// `Unknown`.
pub(crate) fn reported_state(state: i32) -> ControlState {
    use cloudphone_core::lifecycle::InstanceState as S;
    let node = match pb::InstanceState::try_from(state).unwrap_or(pb::InstanceState::Unspecified) {
        pb::InstanceState::Stopped => S::Stopped,
        pb::InstanceState::Starting => S::Starting,
        pb::InstanceState::Running => S::Running,
        pb::InstanceState::Resetting => S::Resetting,
        pb::InstanceState::Failed => S::Failed,
        pb::InstanceState::BackingUp => S::BackingUp,
        pb::InstanceState::Restoring => S::Restoring,
        pb::InstanceState::Unspecified => return ControlState::Unknown,
    };
    ControlState::Node(node)
}

/// How long dialing a node may take before a call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The deadline of each control → node call, by method: the one place they are set.
/// Long-running operations get minutes; a stream's deadline covers only its opening.
fn deadline_for(method: &str) -> Duration {
    match method {
        "InstallApp" | "BackupInstance" | "RestoreInstance" => Duration::from_secs(600),
        // A synchronous command runs up to 30 s on the node, plus the answer's way back.
        "RunCommand" => Duration::from_secs(45),
        "CreateInstance" | "DeleteInstance" | "StartInstance" | "StopInstance"
        | "RebootInstance" | "ResetInstance" => Duration::from_secs(60),
        _ => Duration::from_secs(15),
    }
}

/// Sets every outgoing call's deadline from [`deadline_for`] (unless the caller set one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Deadline;

impl tonic::service::Interceptor for Deadline {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key("grpc-timeout") {
            let method = request
                .extensions()
                .get::<tonic::GrpcMethod<'static>>()
                .map_or("", |m| m.method());
            let deadline = deadline_for(method);
            request.set_timeout(deadline);
        }
        Ok(request)
    }
}

/// A gRPC client of one node, with [`Deadline`] on every call.
pub(crate) type NodeClient = NodeAgentClient<InterceptedService<Channel, Deadline>>;

/// Control's side of the mTLS to nodes: its control-role certificate and the CA a node's
/// certificate must chain to. No `Debug`: the identity holds control's private key.
#[derive(Clone)]
pub(crate) struct NodeTls {
    identity: Identity,
    ca: Certificate,
}

impl NodeTls {
    pub(crate) fn new(ca_pem: &str, control: &crate::pki::IssuedPem) -> Self {
        Self {
            identity: Identity::from_pem(&control.cert_pem, &control.key_pem),
            ca: Certificate::from_pem(ca_pem),
        }
    }

    /// A lazily connecting channel to `node_id` at `endpoint` that accepts only a certificate
    /// naming `node_id` (an `http://` endpoint is dialed as `https://`).
    fn channel(&self, node_id: &str, endpoint: &str) -> Result<Channel, String> {
        let name = cloudphone_proto::identity::node_name(node_id)
            .ok_or_else(|| "node id cannot be named in a certificate".to_string())?;
        let endpoint = cloudphone_proto::identity::tls_uri(endpoint);
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(name);
        Ok(Endpoint::from_shared(endpoint)
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

/// What the registry keeps per node in memory.
struct NodeEntry {
    /// Where the connector dials.
    endpoint: String,
    /// Heartbeat tracking against the configured timeout.
    liveness: Liveness,
    /// Health last written to the store, so the monitor writes only on change.
    recorded: NodeHealth,
    /// A lazily connecting mTLS channel for API calls.
    client: Option<NodeClient>,
}

/// Tracks every node control knows.
pub struct Registry {
    store: Arc<dyn Store>,
    timeout_ms: u64,
    control_id: String,
    /// Monotonic origin for liveness times: tokio's clock, so liveness runs in paused time in
    /// tests (unix time from [`crate::clock::Clock`] could step back with the wall clock).
    epoch: Instant,
    nodes: Mutex<HashMap<String, NodeEntry>>,
    shutdown: watch::Receiver<bool>,
    /// How every node is dialed.
    tls: NodeTls,
}

impl Registry {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        timeout_ms: u64,
        shutdown: watch::Receiver<bool>,
        tls: NodeTls,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            timeout_ms,
            control_id: format!("control-{}", std::process::id()),
            epoch: Instant::now(),
            nodes: Mutex::new(HashMap::new()),
            shutdown,
            tls,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts connectors for every node in the store. The liveness monitor is [`Self::monitor`],
    /// which `run` spawns and awaits.
    pub async fn start(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        for node in self.store.list_nodes().await? {
            self.ensure_connector(&node.node_id, &node.grpc_endpoint);
        }
        Ok(())
    }

    /// Dials the nodes that joined through another replica (a node announces itself to one
    /// control; its announcement reaches the database through that replica's report stream):
    /// re-reads the node list every `period` until shutdown. A node that joined anywhere is
    /// dialed here within `period` of its row being written.
    pub(crate) async fn refresh(self: Arc<Self>, period: Duration) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
            match self.store.list_nodes().await {
                Ok(nodes) => {
                    for node in nodes {
                        self.ensure_connector(&node.node_id, &node.grpc_endpoint);
                    }
                }
                Err(error) => warn!(%error, "could not re-read the node list"),
            }
        }
    }

    /// Records a node's announcement and makes sure control is connected to it.
    pub fn announce(self: &Arc<Self>, node_id: &str, grpc_endpoint: &str) {
        self.ensure_connector(node_id, grpc_endpoint);
    }

    /// A client for API calls to `node_id`, if the node is known.
    pub(crate) fn client(&self, node_id: &str) -> Option<NodeClient> {
        self.lock().get(node_id).and_then(|e| e.client.clone())
    }

    /// How many known nodes the liveness rule sees up and down right now (for `/metrics`).
    pub(crate) fn health_counts(&self) -> (usize, usize) {
        let now = self.now_ms();
        let nodes = self.lock();
        let up = nodes
            .values()
            .filter(|e| e.liveness.health(now) == NodeHealth::Up)
            .count();
        (up, nodes.len() - up)
    }

    /// Current health of `node_id` as the liveness rule sees it.
    pub fn health(&self, node_id: &str) -> NodeHealth {
        let now = self.now_ms();
        self.lock()
            .get(node_id)
            .map_or(NodeHealth::Down, |e| e.liveness.health(now))
    }

    fn ensure_connector(self: &Arc<Self>, node_id: &str, endpoint: &str) {
        let channel = match self.tls.channel(node_id, endpoint) {
            Ok(channel) => channel,
            Err(error) => {
                warn!(node_id, endpoint, %error, "cannot dial the announced endpoint");
                return;
            }
        };
        if !self.track(node_id, endpoint, channel) {
            return;
        }
        let registry = Arc::clone(self);
        let (node_id, endpoint) = (node_id.to_string(), endpoint.to_string());
        let span = info_span!("node", node_id = %node_id);
        tokio::spawn(async move { registry.connector(node_id, endpoint).await }.instrument(span));
    }

    /// Starts tracking `node_id` at `endpoint` (down until it reports); false when it is already
    /// tracked at that endpoint, so no second connector is needed.
    fn track(&self, node_id: &str, endpoint: &str, channel: Channel) -> bool {
        let mut nodes = self.lock();
        if nodes
            .get(node_id)
            .is_some_and(|entry| entry.endpoint == endpoint)
        {
            return false;
        }
        let liveness = Liveness::new(self.timeout_ms);
        nodes.insert(
            node_id.to_string(),
            NodeEntry {
                endpoint: endpoint.to_string(),
                liveness,
                recorded: NodeHealth::Down,
                client: Some(NodeAgentClient::with_interceptor(channel, Deadline)),
            },
        );
        true
    }

    /// Keeps the node's report stream open until shutdown or until the node's endpoint changes.
    async fn connector(self: Arc<Self>, node_id: String, endpoint: String) {
        let mut backoff = Duration::from_millis(200);
        let mut shutdown = self.shutdown.clone();
        loop {
            let still_current = self
                .lock()
                .get(&node_id)
                .is_some_and(|e| e.endpoint == endpoint);
            if !still_current || *shutdown.borrow() {
                return;
            }
            let Some(mut client) = self.client(&node_id) else {
                return;
            };
            let stream = client
                .open_reports(pb::OpenReportsRequest {
                    control_id: self.control_id.clone(),
                })
                .await;
            match stream {
                Ok(response) => {
                    backoff = Duration::from_millis(200);
                    let mut reports = response.into_inner();
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            message = reports.message() => match message {
                                Ok(Some(report)) => self.handle_report(&node_id, report).await,
                                Ok(None) => { info!("report stream ended"); break; }
                                Err(status) => { warn!(%status, "report stream broke"); break; }
                            }
                        }
                    }
                    self.mark_disconnected(&node_id).await;
                }
                Err(status) => {
                    self.mark_disconnected(&node_id).await;
                    tracing::debug!(%status, "node unreachable");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn mark_disconnected(&self, node_id: &str) {
        let changed = {
            let mut nodes = self.lock();
            match nodes.get_mut(node_id) {
                Some(entry) => {
                    entry.liveness.disconnect();
                    std::mem::replace(&mut entry.recorded, NodeHealth::Down) == NodeHealth::Up
                }
                None => false,
            }
        };
        if changed {
            warn!(node_id, "node down: report stream lost");
            self.record_health(node_id, NodeHealth::Down).await;
        }
    }

    async fn record_health(&self, node_id: &str, health: NodeHealth) {
        metrics::counter!("cloudphone_node_health_changes_total", "health" => health.as_str())
            .increment(1);
        if let Err(error) = self
            .store
            .set_node_status(node_id, health.as_str(), crate::unix_ms())
            .await
        {
            warn!(node_id, %error, "could not record node health");
        }
    }

    /// Counts a report from `node_id` received now as a heartbeat; answers whether the node just
    /// came up, or `None` when the node is not tracked.
    fn beat(&self, node_id: &str) -> Option<bool> {
        let now = self.now_ms();
        let mut nodes = self.lock();
        let entry = nodes.get_mut(node_id)?;
        entry.liveness.beat(now);
        Some(std::mem::replace(&mut entry.recorded, NodeHealth::Up) == NodeHealth::Down)
    }

    async fn handle_report(&self, node_id: &str, report: pb::NodeReport) {
        let Some(became_up) = self.beat(node_id) else {
            return;
        };
        match report.report {
            Some(Report::Announcement(mut a)) => {
                info!(capacity = a.capacity, runtimes = ?a.runtimes, instances = a.instances.len(), "node announced");
                // What the live edge (seed 003) needs of it, taken before the record takes the rest.
                let live = pb::NodeAnnouncement {
                    region: a.region.clone(),
                    live_rtmp_base_url: std::mem::take(&mut a.live_rtmp_base_url),
                    live_http_base_url: std::mem::take(&mut a.live_http_base_url),
                    live_streams: std::mem::take(&mut a.live_streams),
                    ..pb::NodeAnnouncement::default()
                };
                let record = NodeRecord {
                    node_id: node_id.to_string(),
                    grpc_endpoint: a.grpc_endpoint,
                    signaling_base_url: a.signaling_base_url,
                    region: a.region,
                    capacity: i64::from(a.capacity),
                    runtimes: a.runtimes,
                    encoders: a.encoders,
                    version: a.version,
                    status: NodeHealth::Up.as_str().to_string(),
                    last_seen_ms: crate::unix_ms(),
                };
                // The live streams first: a node shows as up only once it holds control's set, so
                // a stream admitted after that (PutLiveStream) is not undone by this sync.
                if let Err(error) = crate::service::live::on_announcement(
                    self.store.as_ref(),
                    self.client(node_id),
                    node_id,
                    &live,
                    crate::unix_ms(),
                )
                .await
                {
                    warn!(%error, "could not sync the node's live streams");
                }
                if let Err(error) = self.store.upsert_node(&record).await {
                    warn!(%error, "could not store node announcement");
                }
                for instance in a.instances {
                    self.reconcile_instance(node_id, &instance).await;
                }
                return;
            }
            Some(Report::InstanceEvent(instance)) => self.record_instance(node_id, &instance).await,
            Some(Report::Usage(record)) => {
                crate::usage::on_report(self.store.as_ref(), self.client(node_id), node_id, record)
                    .await
            }
            Some(Report::LiveStream(status)) => {
                if let Err(error) =
                    crate::service::live::on_report(self.store.as_ref(), node_id, &status).await
                {
                    warn!(stream_id = %status.stream_id, %error, "could not record a live stream report");
                }
            }
            Some(Report::Heartbeat(_)) | None => {}
        }
        if became_up {
            info!(node_id, "node up");
            self.record_health(node_id, NodeHealth::Up).await;
        }
    }

    /// An announced instance control does not know was deleted while its node was away: the
    /// node is told to delete it too. Known ones just get their state recorded.
    async fn reconcile_instance(&self, node_id: &str, instance: &pb::InstanceStatus) {
        match self.store.get_instance(&instance.instance_id).await {
            Ok(Some(_)) => self.record_instance(node_id, instance).await,
            Ok(None) => {
                let Some(mut client) = self.client(node_id) else {
                    return;
                };
                let target = pb::InstanceRef {
                    instance_id: instance.instance_id.clone(),
                };
                info!(instance_id = %instance.instance_id, "deleting an instance control no longer has");
                tokio::spawn(async move {
                    if let Err(status) = client.delete_instance(target).await {
                        warn!(%status, "could not delete an orphaned instance");
                    }
                });
            }
            Err(error) => warn!(%error, "could not look up an announced instance"),
        }
    }

    /// Stores a reported state, only for an instance control placed on `node_id` (the store
    /// ignores reports about other nodes' instances).
    async fn record_instance(&self, node_id: &str, instance: &pb::InstanceStatus) {
        let state = reported_state(instance.state);
        if let Err(error) = self
            .store
            .set_reported_state(
                node_id,
                &instance.instance_id,
                state,
                &instance.message,
                crate::unix_ms(),
                instance.changed_at_unix_ms,
            )
            .await
        {
            warn!(instance_id = %instance.instance_id, %error, "could not record instance state");
        }
    }

    /// Marks silent nodes down. Checks every quarter timeout, so a dead node is marked down
    /// at most 1.25 × timeout after its last beat.
    pub(crate) async fn monitor(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let newly_down = tokio::select! {
                _ = shutdown.changed() => return,
                down = self.next_silent() => down,
            };
            for node_id in newly_down {
                warn!(node_id, "node down: heartbeats missed");
                self.record_health(&node_id, NodeHealth::Down).await;
            }
        }
    }

    /// The monitor's clock: checks every quarter timeout (on tokio's clock, so tests run it in
    /// paused time) until some node recorded up has been silent past the timeout, marks those
    /// down in memory and answers them. Cancel-safe: a check either completes or never starts.
    async fn next_silent(&self) -> Vec<String> {
        let period = Duration::from_millis((self.timeout_ms / 4).max(25));
        loop {
            tokio::time::sleep(period).await;
            let now = self.now_ms();
            let newly_down: Vec<String> = self
                .lock()
                .iter_mut()
                .filter(|(_, e)| {
                    e.recorded == NodeHealth::Up && e.liveness.health(now) == NodeHealth::Down
                })
                .map(|(id, e)| {
                    e.recorded = NodeHealth::Down;
                    id.clone()
                })
                .collect();
            if !newly_down.is_empty() {
                return newly_down;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1_000);

    /// A registry over `store` whose node TLS comes from a fresh CA under `dir` (`dir/pki`);
    /// nobody ever asks it to stop.
    pub(crate) fn test_registry(
        store: Arc<dyn Store>,
        timeout_ms: u64,
        dir: &std::path::Path,
    ) -> Arc<Registry> {
        let ca = crate::pki::Ca::load_or_create(&dir.join("pki")).unwrap();
        let tls = NodeTls::new(ca.cert_pem(), &ca.issue_control().unwrap());
        let (_stop, stop_rx) = watch::channel(false);
        Registry::new(store, timeout_ms, stop_rx, tls)
    }

    /// Each call kind gets its deadline from the one table; streams and unknown calls a short one.
    #[test]
    fn every_call_has_a_deadline() {
        assert_eq!(deadline_for("BackupInstance"), Duration::from_secs(600));
        assert_eq!(deadline_for("RunCommand"), Duration::from_secs(45));
        assert_eq!(deadline_for("CreateInstance"), Duration::from_secs(60));
        assert_eq!(deadline_for("OpenReports"), Duration::from_secs(15));
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "cloudphone.node.v1.NodeAgent",
            "RunCommand",
        ));
        let request = tonic::service::Interceptor::call(&mut Deadline, request).unwrap();
        assert!(request.metadata().contains_key("grpc-timeout"));
    }

    /// A registry tracking `nodes` (down until they report), with no connector dialing them:
    /// reports are fed through [`Registry::beat`], the call every report on the stream makes.
    async fn registry(nodes: &[&str]) -> (Arc<Registry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/control.db?mode=rwc", dir.path().display());
        let store: Arc<dyn Store> = Arc::new(crate::store::open(&url).await.unwrap());
        let timeout_ms = u64::try_from(TIMEOUT.as_millis()).unwrap();
        let registry = test_registry(store, timeout_ms, dir.path());
        for node in nodes {
            let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
            assert!(registry.track(node, "http://127.0.0.1:9", channel));
        }
        (registry, dir)
    }

    /// A report stream speaks only for its own node: an instance event or a usage record about
    /// an instance control placed on another node is not stored, and a record's times are cut
    /// to the instance's life up to now.
    #[tokio::test]
    async fn reports_count_only_for_instances_placed_on_the_reporting_node() {
        use crate::store::InstanceRecord;
        let (registry, dir) = registry(&["n1", "n2"]).await;
        let store = Arc::clone(&registry.store);
        let mut config = crate::config::ControlConfig::default();
        config.store.url = format!("sqlite://{}/control.db?mode=rwc", dir.path().display());
        let tenant = crate::admin::create_tenant(&config, "acme", "dev", "long-enough", "p")
            .await
            .unwrap();
        for node_id in ["n1", "n2"] {
            store
                .upsert_node(&NodeRecord {
                    node_id: node_id.into(),
                    grpc_endpoint: "https://127.0.0.1:9".into(),
                    signaling_base_url: "ws://127.0.0.1:9".into(),
                    region: "cn-north-7".into(),
                    capacity: 4,
                    runtimes: vec!["synthetic".into()],
                    encoders: vec![],
                    version: "test".into(),
                    status: "up".into(),
                    last_seen_ms: 0,
                })
                .await
                .unwrap();
        }
        let created_at_ms = 1_000_000;
        store
            .insert_instances(&[InstanceRecord {
                sku_id: "kp.synthetic.720p".into(),
                runtime: "synthetic".into(),
                created_at_ms,
                updated_at_ms: created_at_ms,
                ..InstanceRecord::sample("i1", &tenant.tenant_id, &tenant.project_id, "n1")
            }])
            .await
            .unwrap();
        let event = |state: pb::InstanceState| pb::NodeReport {
            report: Some(Report::InstanceEvent(pb::InstanceStatus {
                instance_id: "i1".into(),
                state: state.into(),
                message: "from a node".into(),
                ..Default::default()
            })),
        };
        let state = || async { store.get_instance("i1").await.unwrap().unwrap().state };

        registry
            .handle_report("n2", event(pb::InstanceState::Failed))
            .await;
        assert_eq!(state().await, ControlState::Creating, "n2 cannot write i1");
        registry
            .handle_report("n1", event(pb::InstanceState::Running))
            .await;
        assert_eq!(state().await, ControlState::RUNNING);

        let now_ms = created_at_ms + 3_600_000;
        let record = |id: &str, start: i64, end: i64| pb::UsageRecord {
            record_id: id.into(),
            session_id: "s1".into(),
            instance_id: "i1".into(),
            codec: "H264".into(),
            width: 720,
            height: 1280,
            start_unix_ms: start,
            end_unix_ms: end,
            ..Default::default()
        };
        let ingest = |node: &'static str, r: pb::UsageRecord| {
            let store = Arc::clone(&store);
            async move {
                crate::usage::ingest(store.as_ref(), node, &r, now_ms)
                    .await
                    .unwrap()
            }
        };
        // Another node's record about i1 is refused; so is one wholly before i1 existed.
        assert!(!ingest("n2", record("r-forged", created_at_ms, now_ms)).await);
        assert!(!ingest("n1", record("r-early", 0, created_at_ms - 1)).await);
        // Its own record is stored, cut to [created, now + skew].
        assert!(ingest("n1", record("r1", 0, now_ms + 86_400_000)).await);
        let rows = store
            .usage_between(&tenant.tenant_id, 0, i64::MAX)
            .await
            .unwrap();
        let stored: Vec<_> = rows
            .iter()
            .map(|r| (r.record_id.as_str(), r.start_ms, r.end_ms))
            .collect();
        assert_eq!(
            stored,
            [(
                "r1",
                created_at_ms,
                now_ms + cloudphone_usage::admit::MAX_FUTURE_SKEW_MS
            )]
        );
    }

    /// The monitor's check, in paused time: a node that stops reporting is marked down after
    /// `heartbeat_timeout` of silence, never before and within the documented 1.25 × timeout;
    /// a node that keeps reporting every half timeout stays up however long the monitor runs.
    /// The store is opened before time is paused and the decision under test never touches it
    /// (the sqlx pool's own timers would fire under paused time while SQLite works).
    #[tokio::test]
    async fn a_silent_node_goes_down_after_the_timeout_and_a_beating_one_stays_up() {
        let (registry, _dir) = registry(&["silent", "steady"]).await;
        tokio::time::pause();
        let monitor = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move {
                let down = registry.next_silent().await;
                (down, Instant::now())
            }
        });
        let steady = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move {
                loop {
                    assert_eq!(registry.beat("steady"), Some(false));
                    tokio::time::sleep(TIMEOUT / 2).await;
                }
            }
        });
        assert_eq!(registry.beat("steady"), Some(true), "first report: up");
        // Three reports 300 ms apart, out of phase with the monitor's quarter-timeout checks.
        assert_eq!(registry.beat("silent"), Some(true));
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(registry.beat("silent"), Some(false));
        }
        let last_report = Instant::now();

        let (down, at) = monitor.await.unwrap();
        let silent_for = at - last_report;
        assert_eq!(down, ["silent"], "after {silent_for:?} of silence");
        assert!(
            silent_for > TIMEOUT && silent_for <= TIMEOUT * 5 / 4,
            "marked down after {silent_for:?} of silence, timeout {TIMEOUT:?}"
        );
        assert_eq!(registry.health("silent"), NodeHealth::Down);

        // Twenty timeouts later the steady node has never been found silent.
        let more = tokio::time::timeout(TIMEOUT * 20, registry.next_silent()).await;
        assert!(more.is_err(), "marked down while reporting: {more:?}");
        assert_eq!(registry.health("steady"), NodeHealth::Up);
        // A report revives the silent node.
        assert_eq!(registry.beat("silent"), Some(true));
        assert_eq!(registry.beat("unknown"), None);
        steady.abort();
    }
}
