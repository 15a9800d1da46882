//! Control ↔ node trust against real daemons (issue #13): who may call a node's `NodeAgent`,
//! what a join token is worth after its first use, and who may enroll or announce an enrolled
//! node id. Expiry of join tokens is ruled on control's clock in paused time (`node_api`'s
//! unit tests); a report stream speaking for another node's instances is `nodes`' unit test.

use cloudphone_proto::identity::{self, CONTROL_NAME, JoinToken};
use cloudphone_proto::node_v1::{
    self as pb, control_plane_client::ControlPlaneClient, node_agent_client::NodeAgentClient,
};
use cloudphone_testkit::fleet::{Fleet, NODE_ID};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A certificate (PEM) and its key.
type Pair = (String, String);

/// Calls `ListInstances` on the fleet's node, trusting `ca_pem` for the node's certificate and
/// presenting `client`; answers the refusal's code.
async fn call_node(fleet: &Fleet, ca_pem: &str, client: Option<&Pair>) -> Result<(), tonic::Code> {
    let endpoint = format!("https://127.0.0.1:{}", fleet.node_ports.0);
    let name = identity::node_name(NODE_ID).unwrap();
    let client = client.map(|(cert, key)| (cert.as_str(), key.as_str()));
    let channel = Fleet::tls_channel(&endpoint, &name, ca_pem, client);
    NodeAgentClient::new(channel)
        .list_instances(pb::ListInstancesRequest {})
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

/// Control's `ControlPlane`, trusting the fleet's CA, presenting `client`.
fn control_plane(
    fleet: &Fleet,
    client: Option<&Pair>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    let ca = fleet.control_client_cert().2;
    let client = client.map(|(cert, key)| (cert.as_str(), key.as_str()));
    ControlPlaneClient::new(Fleet::tls_channel(
        &fleet.nodes_endpoint(),
        CONTROL_NAME,
        &ca,
        client,
    ))
}

/// Enrolls `node_id` with the printed join token `token` and a fresh key, as a node would.
async fn enroll(fleet: &Fleet, token: &str, node_id: &str) -> Result<Pair, tonic::Code> {
    let token = JoinToken::parse(token).expect("a printed join token");
    let key = KeyPair::generate().unwrap();
    let csr_pem = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let answer = control_plane(fleet, None)
        .enroll(pb::EnrollRequest {
            join_token: token.secret,
            node_id: node_id.into(),
            csr_pem,
        })
        .await
        .map_err(|status| status.code())?
        .into_inner();
    Ok((answer.certificate_pem, key.serialize_pem()))
}

/// A control-role certificate from a CA that is not the fleet's.
fn foreign_control_cert() -> Pair {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "rogue CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![CONTROL_NAME.to_string()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The join token the fleet's node enrolled with, read from its config as a thief would.
fn stolen_join_token(fleet: &Fleet) -> String {
    let config = std::fs::read_to_string(fleet.path("node.toml")).unwrap();
    let line = config
        .lines()
        .find(|line| line.starts_with("join_token = "))
        .expect("the node's config names its join token");
    line.trim_start_matches("join_token = ")
        .trim_matches('"')
        .to_string()
}

/// A node answers control's certificate only: no certificate, another node's certificate
/// (same CA) and a control certificate from another CA are all refused. The node's key is
/// kept 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_only_control() {
    let fleet = Fleet::up("synthetic").await;
    let (cert, key, ca) = fleet.control_client_cert();
    assert_eq!(
        call_node(&fleet, &ca, Some(&(cert, key))).await,
        Ok(()),
        "control's own certificate works"
    );

    assert!(
        call_node(&fleet, &ca, None).await.is_err(),
        "no client certificate"
    );
    let other_node = enroll(&fleet, &fleet.join_token("10m"), "node-b")
        .await
        .unwrap();
    assert_eq!(
        call_node(&fleet, &ca, Some(&other_node)).await,
        Err(tonic::Code::PermissionDenied),
        "another node's certificate"
    );
    assert!(
        call_node(&fleet, &ca, Some(&foreign_control_cert()))
            .await
            .is_err(),
        "a control certificate from another CA"
    );

    use std::os::unix::fs::PermissionsExt;
    let key_file = fleet.node_identity_dir().join("node.key");
    let mode = std::fs::metadata(key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fleet.node_status().await.as_deref(), Some("up"));
}

/// A join token is spent by its first use (the node's, here) and useless to whoever steals it
/// afterwards; an enrolled id cannot be enrolled again nor announced under another node's
/// certificate; the node list needs a control certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_tokens_and_other_certificates_cannot_take_a_node_id() {
    let fleet = Fleet::up("synthetic").await;
    let stolen = stolen_join_token(&fleet);
    assert_eq!(
        enroll(&fleet, &stolen, "node-x").await.err(),
        Some(tonic::Code::Unauthenticated),
        "a spent token"
    );

    let fresh = fleet.join_token("10m");
    assert_eq!(
        enroll(&fleet, &fresh, NODE_ID).await.err(),
        Some(tonic::Code::FailedPrecondition),
        "an enrolled id cannot move to a new key"
    );
    // That refusal did not spend the token; its first use does.
    let node_b = enroll(&fleet, &fresh, "node-b").await.unwrap();
    assert_eq!(
        enroll(&fleet, &fresh, "node-c").await.err(),
        Some(tonic::Code::Unauthenticated)
    );

    let hijack = pb::AnnounceRequest {
        node_id: NODE_ID.into(),
        grpc_endpoint: "https://127.0.0.1:9".into(),
    };
    let refused = control_plane(&fleet, Some(&node_b))
        .announce(hijack.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let anonymous = control_plane(&fleet, None)
        .announce(hijack)
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let listed = control_plane(&fleet, Some(&node_b))
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(listed.code(), tonic::Code::PermissionDenied);

    // The node kept its place and its report stream.
    assert_eq!(fleet.node_status().await.as_deref(), Some("up"));
    let listed = fleet.list_nodes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].node_id, NODE_ID);
}
