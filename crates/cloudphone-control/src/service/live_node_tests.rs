//! Control against the live edge's gRPC contract: a small `NodeAgent` of our own, served over
//! the same mutual TLS as a real node (its certificate from control's CA), announces a live
//! edge on its report stream and records the `SyncLiveStreams`, `PutLiveStream` and
//! `RemoveLiveStream` calls control makes as a tenant changes its streams; a `LiveStream`
//! report on the stream shows the stream on and meters its publish.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use cloudphone_proto::node_v1::node_agent_server::{NodeAgent, NodeAgentServer};
use cloudphone_proto::node_v1::node_report::Report;
use cloudphone_vs_api::model::Answer;
use cloudphone_vs_api::request::{
    Command, GroupChange, InProtocol, NewGroup, OutProtocol, StreamUrlRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::*;
use crate::clock::Clock;

/// A call control made to the fake node.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Sync(Vec<pb::LiveStream>),
    Put(pb::LiveStream),
    Remove(String),
}

struct FakeNode {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Reports to send on the next report stream (the first is the announcement).
    reports: Mutex<Option<mpsc::Receiver<Result<pb::NodeReport, Status>>>>,
}

impl FakeNode {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The `NodeAgent` impl: the calls given, the live-edge calls recorded as the `Call` each
/// request makes (answering the default response), and every other one `unimplemented`
/// (expanded before `async_trait` sees the impl, so the generated ones are rewritten like the
/// rest).
macro_rules! fake_agent {
    (
        { $($calls:tt)* }
        record { $($rname:ident($rrequest:ty) -> $rresponse:ty = $call:expr;)* }
        $($name:ident($request:ty) -> $response:ty;)*
    ) => {
        #[tonic::async_trait]
        impl NodeAgent for FakeNode {
            $($calls)*
            $(async fn $rname(&self, r: Request<$rrequest>) -> Reply<$rresponse> {
                let to_call: fn($rrequest) -> Call = $call;
                self.record(to_call(r.into_inner()));
                Ok(Response::new(<$rresponse>::default()))
            })*
            $(async fn $name(&self, _: Request<$request>) -> Reply<$response> {
                Err(Status::unimplemented("not part of the live edge"))
            })*
        }
    };
}

fake_agent! {
{
    type OpenReportsStream = ReceiverStream<Result<pb::NodeReport, Status>>;

    async fn open_reports(
        &self,
        _: Request<pb::OpenReportsRequest>,
    ) -> Reply<Self::OpenReportsStream> {
        let reports = self
            .reports
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Status::unavailable("one report stream only"))?;
        Ok(Response::new(ReceiverStream::new(reports)))
    }
}
record {
    sync_live_streams(pb::SyncLiveStreamsRequest) -> pb::SyncLiveStreamsResponse =
        |r| Call::Sync(r.streams);
    put_live_stream(pb::LiveStream) -> pb::PutLiveStreamResponse = Call::Put;
    remove_live_stream(pb::LiveStreamRef) -> pb::RemoveLiveStreamResponse =
        |r| Call::Remove(r.stream_id);
}
        ack_usage(pb::AckUsageRequest) -> pb::AckUsageResponse;
        create_instance(pb::CreateInstanceRequest) -> pb::InstanceStatus;
        delete_instance(pb::InstanceRef) -> pb::DeleteInstanceResponse;
        start_instance(pb::InstanceRef) -> pb::InstanceStatus;
        stop_instance(pb::InstanceRef) -> pb::InstanceStatus;
        reboot_instance(pb::InstanceRef) -> pb::InstanceStatus;
        reset_instance(pb::InstanceRef) -> pb::InstanceStatus;
        get_instance_status(pb::InstanceRef) -> pb::InstanceStatus;
        list_instances(pb::ListInstancesRequest) -> pb::ListInstancesResponse;
        run_command(pb::RunCommandRequest) -> pb::CommandResult;
        start_command(pb::RunCommandRequest) -> pb::CommandJob;
        get_command(pb::CommandJobRef) -> pb::CommandJob;
        install_app(pb::InstallAppRequest) -> pb::InstallAppResponse;
        backup_instance(pb::BackupInstanceRequest) -> pb::BackupInstanceResponse;
        restore_instance(pb::RestoreInstanceRequest) -> pb::InstanceStatus;
        set_video_config(pb::SetVideoConfigRequest) -> pb::SetVideoConfigResponse;
        start_session(pb::StartSessionRequest) -> pb::StartSessionResponse;
        stop_streaming(pb::InstanceRef) -> pb::StopStreamingResponse;
        release_session(pb::InstanceRef) -> pb::ReleaseSessionResponse;
        list_streaming(pb::ListStreamingRequest) -> pb::ListStreamingResponse;
}

const NODE: &str = "live-node-1";

/// Serves the fake node on 127.0.0.1:0 with a certificate from the CA in `dir/pki` (the one
/// control trusts); answers its endpoint.
async fn serve(dir: &std::path::Path, node: FakeNode) -> String {
    let ca = crate::pki::Ca::load_or_create(&dir.join("pki")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let (cert_pem, _) = ca.issue_node(NODE, &csr).unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            cert_pem,
            key.serialize_pem(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.cert_pem()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(NodeAgentServer::new(node))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    format!("http://{addr}")
}

/// Waits until `calls` holds `n` calls; answers them.
async fn wait_calls(calls: &Mutex<Vec<Call>>, n: usize) -> Vec<Call> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = calls.lock().unwrap().clone();
        if seen.len() >= n {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last_put(calls: &[Call]) -> pb::LiveStream {
    match calls.last() {
        Some(Call::Put(stream)) => stream.clone(),
        other => panic!("expected a PutLiveStream, got {other:?}"),
    }
}

#[tokio::test]
async fn control_keeps_the_nodes_view_of_streams_in_step() {
    let (store, dir) = crate::store::test_store().await;
    // Control's side of the mTLS from the CA the fake node's certificate comes from; the
    // stop sender lives as long as the test, so the connector keeps the report stream open.
    let ca = crate::pki::Ca::load_or_create(&dir.path().join("pki")).unwrap();
    let tls = crate::nodes::NodeTls::new(ca.cert_pem(), &ca.issue_control().unwrap());
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let registry = crate::nodes::Registry::new(Arc::clone(&store), 60_000, stop_rx, tls);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (reports, receiver) = mpsc::channel(8);
    let endpoint = serve(
        dir.path(),
        FakeNode {
            calls: Arc::clone(&calls),
            reports: Mutex::new(Some(receiver)),
        },
    )
    .await;
    let announcement = pb::NodeAnnouncement {
        node_id: NODE.into(),
        grpc_endpoint: endpoint.clone(),
        region: "cn-north-7".into(),
        live_rtmp_base_url: "rtmp://10.0.0.5:1935".into(),
        live_http_base_url: "http://10.0.0.5:8080".into(),
        ..pb::NodeAnnouncement::default()
    };
    reports
        .send(Ok(pb::NodeReport {
            report: Some(Report::Announcement(announcement)),
        }))
        .await
        .unwrap();
    registry.announce(NODE, &endpoint);
    // The announcement opens with the node's whole set: none yet.
    assert_eq!(wait_calls(&calls, 1).await, [Call::Sync(Vec::new())]);

    let mut config = crate::config::ControlConfig::default();
    config.store.url = crate::store::test_url(dir.path());
    let state = crate::AppState::new(config, Arc::clone(&store), registry, Clock::System);
    let tenant = VsTenant::active("u1".into(), "AK1".into(), "x".into(), 0);
    store.vs_put_tenant(&tenant).await.unwrap();
    let run = |command: Command| tenant_action(&state, &tenant, command);
    let Answer::Id(group) = run(Command::CreateGroup(NewGroup {
        name: "g".into(),
        description: String::new(),
        region: "cn-north-7".into(),
        app: "live".into(),
        in_protocol: InProtocol::Rtmp,
        out_protocol: "flv,hls".into(),
        lazy_pull: false,
        callback: String::new(),
    }))
    .await
    .unwrap() else {
        panic!("CreateGroup answers an Id")
    };
    let Answer::PushUrl(push) = run(Command::CreateRtmpGroupStreamurls {
        group_id: group.clone(),
        names: vec!["door".into()],
        plural: false,
    })
    .await
    .unwrap() else {
        panic!("CreateRtmpGroupStreamurl answers a PushUrl")
    };
    assert!(push.push_url.starts_with(&format!(
        "rtmp://10.0.0.5:1935/live/{}?auth_key=",
        push.stream_id
    )));
    let id = push.stream_id.clone();
    let created = last_put(&wait_calls(&calls, 2).await);
    assert_eq!(
        (
            created.stream_id.as_str(),
            created.app.as_str(),
            created.tenant_id.as_str(),
            created.group_id.as_str()
        ),
        (id.as_str(), "live", "u1", group.as_str())
    );
    assert!(created.admitted);
    assert_eq!(created.out_protocols, ["flv", "hls", "webrtc"]);
    // The push URL verifies with the key the node was given.
    let auth = push.push_url.split_once("?auth_key=").unwrap().1;
    let uri = format!("/live/{id}");
    assert!(
        cloudphone_core::play_auth::verify(&uri, auth, &[created.push_key.as_str()], 0).is_ok()
    );

    // Every switch reaches the node at once.
    run(Command::ForbidVsStream { id: id.clone() })
        .await
        .unwrap();
    assert!(!last_put(&wait_calls(&calls, 3).await).admitted);
    run(Command::ResumeVsStream { id: id.clone() })
        .await
        .unwrap();
    assert!(last_put(&wait_calls(&calls, 4).await).admitted);
    let url = run(Command::DescribeStreamUrl(StreamUrlRequest {
        id: id.clone(),
        out_protocol: OutProtocol::Flv,
        auth_key: "viewer-key".into(),
        expire_secs: 60,
    }))
    .await
    .unwrap();
    assert!(matches!(url, Answer::StreamUrl { .. }));
    assert!(
        last_put(&wait_calls(&calls, 5).await)
            .play_keys
            .contains(&"viewer-key".to_string())
    );
    let halt = GroupChange {
        id: group.clone(),
        enabled: Some(false),
        ..GroupChange::default()
    };
    run(Command::ModifyGroup(halt)).await.unwrap();
    assert!(!last_put(&wait_calls(&calls, 6).await).admitted);

    // The node reports a publisher: the stream is on and its publish metered.
    let status = pb::LiveStreamStatus {
        stream_id: id.clone(),
        on: true,
        codec: "H264".into(),
        width: 640,
        height: 360,
        bitrate_bps: 800_000,
        bytes_in: 123_456,
        frames_in: 250,
        started_unix_ms: 1_700_000_000_000,
        stopped_unix_ms: 0,
        publish_id: "publish-1".into(),
    };
    reports
        .send(Ok(pb::NodeReport {
            report: Some(Report::LiveStream(status)),
        }))
        .await
        .unwrap();
    // The report is recorded first and metered after: wait for both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.vs_stream("u1", &id).await.unwrap().unwrap().is_on
        || store.vs_publishes("u1").await.unwrap().is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the report was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metered = store.vs_publishes("u1").await.unwrap();
    assert_eq!((metered[0].bytes_in, metered[0].frames_in), (123_456, 250));

    // Deleting the (halted) group removes the stream from its node.
    run(Command::DeleteGroup { id: group }).await.unwrap();
    assert_eq!(wait_calls(&calls, 7).await.last(), Some(&Call::Remove(id)));
}
