//! The `ControlPlane` gRPC service nodes (and operators' tools) call on control's own
//! node-facing listener (`[nodes].listen`, TLS with control's certificate), kept off the tenant
//! API's listener: enrollment (a single-use join token and a CSR for a certificate naming the
//! node id), a node's announcement ("I exist, dial me here", only under the certificate pinned
//! for that id) and the node list (control-role certificates only). Join tokens are minted here
//! too, for the admin CLI; only their SHA-256 is stored and none is ever logged.

use std::sync::Arc;
use std::time::Duration;

use cloudphone_core::liveness::NodeHealth;
use cloudphone_proto::identity::{self, CONTROL_NAME, JoinToken};
use cloudphone_proto::node_v1::{self as pb, control_plane_server::ControlPlane};
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::nodes::Registry;
use crate::pki::Ca;
use crate::store::{NodeRecord, Store, StoreError};

/// Serves `ControlPlane` for one control process.
pub(crate) struct ControlPlaneService {
    /// Signs enrolling nodes' certificates.
    ca: Arc<Ca>,
    /// Where an accepted announcement goes: the registry dials the node back.
    registry: Arc<Registry>,
    /// Join tokens, pinned node identities, and the node list (health as last recorded).
    store: Arc<dyn Store>,
    /// "Now" for join-token expiry: the system clock, or tokio's in tests.
    clock: Clock,
}

/// The stored form of a join token's secret.
fn token_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Mints a join token valid for `ttl` from `now_ms`: stores its digest, answers the printed
/// form (secret plus the CA's fingerprint).
pub(crate) async fn mint_join_token(
    store: &dyn Store,
    ca_fingerprint: &str,
    now_ms: i64,
    ttl: Duration,
) -> Result<JoinToken, StoreError> {
    let secret: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    store
        .insert_join_token(
            &token_digest(&secret),
            now_ms,
            now_ms.saturating_add(ttl_ms),
        )
        .await?;
    Ok(JoinToken {
        secret,
        ca_sha256: ca_fingerprint.to_string(),
    })
}

fn store_failed(error: StoreError) -> Status {
    tracing::error!(%error, "node identity store call failed");
    Status::internal("store unavailable")
}

/// The leaf certificate (DER) the caller presented, if any.
fn peer_leaf<T>(request: &Request<T>) -> Option<Vec<u8>> {
    let certs = request.peer_certs()?;
    certs.first().map(|der| der.to_vec())
}

impl ControlPlaneService {
    pub(crate) fn new(
        ca: Arc<Ca>,
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Self {
        Self {
            ca,
            registry,
            store,
            clock,
        }
    }

    /// Checks that the caller's certificate names `node_id` and is the one pinned for it.
    async fn authorize_node(&self, leaf: Option<Vec<u8>>, node_id: &str) -> Result<(), Status> {
        let leaf = leaf.ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        let name = identity::node_name(node_id)
            .ok_or_else(|| Status::invalid_argument("node_id invalid"))?;
        if !identity::certificate_names(&leaf, &name) {
            tracing::warn!(node_id, "announcement under another node's certificate");
            return Err(Status::permission_denied(
                "the certificate does not name this node",
            ));
        }
        let pinned = self
            .store
            .node_identity(node_id)
            .await
            .map_err(store_failed)?;
        if pinned.as_deref() != Some(identity::fingerprint(&leaf).as_str()) {
            tracing::warn!(
                node_id,
                "announcement under a certificate this id is not pinned to"
            );
            return Err(Status::permission_denied(
                "not the certificate this node id enrolled with (revoked, or never enrolled)",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let enroll = request.into_inner();
        if !identity::valid_node_id(&enroll.node_id) {
            return Err(Status::invalid_argument("node_id invalid"));
        }
        let node_id = enroll.node_id.as_str();
        // An id pinned to a live certificate is never moved to another: revoke it first.
        if self
            .store
            .node_identity(node_id)
            .await
            .map_err(store_failed)?
            .is_some()
        {
            tracing::warn!(node_id, "enrollment refused: the id is enrolled already");
            return Err(Status::failed_precondition(
                "node id already enrolled; `node revoke` it first",
            ));
        }
        // Signed before the token is spent, so a bad CSR does not waste the token.
        let (certificate_pem, fingerprint) = self
            .ca
            .issue_node(node_id, &enroll.csr_pem)
            .map_err(|_| Status::invalid_argument("csr_pem is not a valid signed CSR"))?;
        let now_ms = self.clock.now_ms();
        let spent = self
            .store
            .spend_join_token(&token_digest(&enroll.join_token), node_id, now_ms)
            .await
            .map_err(store_failed)?;
        if !spent {
            tracing::warn!(
                node_id,
                "enrollment refused: join token unknown, spent or expired"
            );
            return Err(Status::unauthenticated(
                "join token unknown, spent or expired",
            ));
        }
        match self
            .store
            .pin_node_identity(node_id, &fingerprint, now_ms)
            .await
        {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(Status::failed_precondition("node id already enrolled"));
            }
            Err(error) => return Err(store_failed(error)),
        }
        tracing::info!(node_id, %fingerprint, "node enrolled");
        Ok(Response::new(pb::EnrollResponse {
            certificate_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        }))
    }

    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceResponse>, Status> {
        let leaf = peer_leaf(&request);
        let announce = request.into_inner();
        self.authorize_node(leaf, &announce.node_id).await?;
        if !announce.grpc_endpoint.starts_with("http") {
            return Err(Status::invalid_argument("grpc_endpoint invalid"));
        }
        tracing::info!(node_id = %announce.node_id, endpoint = %announce.grpc_endpoint, "node announced itself");
        self.registry
            .announce(&announce.node_id, &announce.grpc_endpoint);
        Ok(Response::new(pb::AnnounceResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let leaf = peer_leaf(&request)
            .ok_or_else(|| Status::unauthenticated("a control certificate is required"))?;
        if !identity::certificate_names(&leaf, CONTROL_NAME) {
            return Err(Status::permission_denied(
                "only a control certificate may list nodes",
            ));
        }
        let nodes = self.store.list_nodes().await.map_err(|error| {
            tracing::error!(%error, "listing nodes failed");
            Status::internal("listing nodes failed")
        })?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_info).collect(),
        }))
    }
}

/// The wire form of a stored node.
pub(crate) fn node_info(node: NodeRecord) -> pb::NodeInfo {
    let health = if node.status == NodeHealth::Up.as_str() {
        pb::NodeHealth::Up
    } else if node.status == NodeHealth::Down.as_str() {
        pb::NodeHealth::Down
    } else {
        pb::NodeHealth::Unspecified
    };
    pb::NodeInfo {
        node_id: node.node_id,
        health: health.into(),
        region: node.region,
        capacity: u32::try_from(node.capacity).unwrap_or(0),
        runtimes: node.runtimes,
        encoders: node.encoders,
        version: node.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::jump;
    use tonic::Code;

    /// The service over a fresh store and CA, reading `clock`; both live as long as the
    /// returned directory.
    async fn make_service(clock: Clock) -> (ControlPlaneService, tempfile::TempDir) {
        let (store, dir) = crate::store::test_store().await;
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("pki")).unwrap());
        // The registry's TLS comes from the same CA (`test_registry` loads it from `pki/`).
        let registry = crate::nodes::tests::test_registry(Arc::clone(&store), 1_000, dir.path());
        (ControlPlaneService::new(ca, registry, store, clock), dir)
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn enroll_request(token: &JoinToken, node_id: &str) -> Request<pb::EnrollRequest> {
        Request::new(pb::EnrollRequest {
            join_token: token.secret.clone(),
            node_id: node_id.into(),
            csr_pem: csr(),
        })
    }

    fn code<T>(result: Result<T, Status>) -> Option<Code> {
        result.err().map(|status| status.code())
    }

    /// Enrolls `node_id` with `token` and checks the outcome: `None` accepted, else the
    /// refusal's code.
    async fn enroll(
        service: &ControlPlaneService,
        token: &JoinToken,
        node_id: &str,
        want: Option<Code>,
    ) {
        let got = code(service.enroll(enroll_request(token, node_id)).await);
        assert_eq!(got, want, "enrolling {node_id}");
    }

    /// A join token works once, only before its expiry (on control's `Clock`, in tokio time),
    /// and an enrolled id cannot be enrolled again under a new key until it is revoked.
    #[tokio::test]
    async fn join_tokens_are_single_use_and_expire() {
        let clock = Clock::tokio();
        let (service, _dir) = make_service(clock).await;
        let store = Arc::clone(&service.store);
        let ttl = Duration::from_secs(3600);
        let mint = || {
            mint_join_token(
                store.as_ref(),
                service.ca.fingerprint(),
                clock.now_ms(),
                ttl,
            )
        };

        let token = mint().await.unwrap();
        assert_eq!(token.ca_sha256, service.ca.fingerprint());
        let issued = service
            .enroll(enroll_request(&token, "node-a"))
            .await
            .unwrap()
            .into_inner();
        let der = identity::first_certificate(&issued.certificate_pem).unwrap();
        assert!(identity::certificate_names(
            &der,
            "node-a.node.cloudphone.internal"
        ));
        assert_eq!(issued.ca_pem, service.ca.cert_pem());
        assert_eq!(
            store.node_identity("node-a").await.unwrap(),
            Some(identity::fingerprint(&der))
        );

        // Spent: useless for another id too.
        enroll(&service, &token, "node-b", Some(Code::Unauthenticated)).await;
        // A fresh token cannot move an enrolled id to another key…
        let fresh = mint().await.unwrap();
        enroll(&service, &fresh, "node-a", Some(Code::FailedPrecondition)).await;
        // …until the operator revokes it; the refused attempt did not spend the token.
        assert!(store.revoke_node_identity("node-a").await.unwrap());
        enroll(&service, &fresh, "node-a", None).await;

        // Expiry on control's clock: usable just before, refused just after.
        let (early, late) = (mint().await.unwrap(), mint().await.unwrap());
        jump(ttl - Duration::from_secs(1)).await;
        enroll(&service, &early, "node-c", None).await;
        jump(Duration::from_secs(2)).await;
        enroll(&service, &late, "node-d", Some(Code::Unauthenticated)).await;

        // Bad input: an unnamed id, a broken CSR (and neither spends a token).
        let spare = mint().await.unwrap();
        enroll(&service, &spare, "a b", Some(Code::InvalidArgument)).await;
        let mut broken = enroll_request(&spare, "node-e");
        broken.get_mut().csr_pem = "garbage".into();
        assert_eq!(
            code(service.enroll(broken).await),
            Some(Code::InvalidArgument)
        );
        enroll(&service, &spare, "node-e", None).await;
    }

    /// Without a TLS client certificate, announcing and listing are refused.
    #[tokio::test]
    async fn announce_and_list_need_a_certificate() {
        let (service, _dir) = make_service(Clock::System).await;
        let announce = pb::AnnounceRequest {
            node_id: "n1".into(),
            grpc_endpoint: "https://127.0.0.1:1".into(),
        };
        assert_eq!(
            code(service.announce(Request::new(announce)).await),
            Some(Code::Unauthenticated)
        );
        assert_eq!(
            code(
                service
                    .list_nodes(Request::new(pb::ListNodesRequest {}))
                    .await
            ),
            Some(Code::Unauthenticated)
        );
    }
}
