//! This node's identity on the control link: its key and certificate from control's CA (in
//! `<state_dir>/identity/`, key 0600), got once by enrolling with a single-use join token, and
//! the TLS both gRPC directions use with them: `NodeAgent` served only to control-role client
//! certificates of that CA ([`RequireControl`]), `ControlPlane` called only on a server
//! certificate of that CA naming control.
//!
//! First contact: the join token carries the SHA-256 of control's CA certificate. The node
//! reads the chain control's listener presents (aborting that handshake: nothing is sent on
//! it), keeps the certificate with that hash, and enrolls over a connection that trusts only
//! it, so no CA file has to be copied to the host beforehand.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cloudphone_proto::identity::{self, CONTROL_NAME, JoinToken};
use cloudphone_proto::node_v1::{self as pb, control_plane_client::ControlPlaneClient};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::NodeConfig;

/// Files under the identity dir. The certificate is written last: its presence means enrolled.
const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.pem";
const CA_FILE: &str = "ca.pem";

/// How long one call to control may take while enrolling.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep trying while control is not reachable yet (it may start after the node).
const ENROLL_ATTEMPTS: u32 = 30;
const ENROLL_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "no node certificate in {0} and no [control] join_token and endpoint to enroll with \
         (`cloudphone-control node join-token` prints one)"
    )]
    NotEnrolled(PathBuf),
    #[error("[control] join_token is not a join token (cpj1.<secret>.<ca sha256>)")]
    BadToken,
    #[error("control's listener presents no certificate with the join token's CA hash")]
    CaMismatch,
    #[error("control refused the enrollment: {0}")]
    Refused(String),
    #[error("control unreachable: {0}")]
    Unreachable(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The node's certificate, key and control's CA, in PEM. No `Debug`: it holds the key.
#[derive(Clone)]
pub(crate) struct NodeTls {
    cert_pem: String,
    /// Never logged.
    key_pem: String,
    ca_pem: String,
}

impl NodeTls {
    /// The server side of `NodeAgent`: this node's certificate; client certificates required,
    /// from control's CA (which role they name is [`RequireControl`]'s check).
    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// A lazily connecting channel to control's `ControlPlane` at `endpoint`, presenting this
    /// node's certificate and accepting only control's.
    pub(crate) fn control_channel(
        &self,
        endpoint: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(CONTROL_NAME);
        Ok(Endpoint::from_shared(identity::tls_uri(endpoint))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_lazy())
    }
}

/// Lets through only calls whose client certificate names the control role (the handshake
/// already required one from control's CA; another node's certificate is refused here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequireControl {
    /// False only for a `grpc.plaintext` node, which has no certificates to check.
    pub(crate) enforce: bool,
}

impl tonic::service::Interceptor for RequireControl {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.enforce {
            return Ok(request);
        }
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|der| der.to_vec()));
        match leaf {
            Some(der) if identity::certificate_names(&der, CONTROL_NAME) => Ok(request),
            Some(_) => {
                tracing::warn!("NodeAgent call with a certificate that is not control's");
                Err(tonic::Status::permission_denied(
                    "only control may call a node",
                ))
            }
            None => Err(tonic::Status::unauthenticated(
                "a control client certificate is required",
            )),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node's TLS: `None` with `grpc.plaintext`; else its stored identity, or a new one from
/// enrolling with `[control].join_token` (retried while control is unreachable).
pub(crate) async fn load_or_enroll(config: &NodeConfig) -> Result<Option<NodeTls>, EnrollError> {
    if config.grpc.plaintext {
        tracing::warn!("grpc.plaintext: NodeAgent is served without TLS or authentication");
        return Ok(None);
    }
    let dir = config.state_dir.join("identity");
    if dir.join(CERT_FILE).exists() {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(io_error(&path))
        };
        return Ok(Some(NodeTls {
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
            ca_pem: read(CA_FILE)?,
        }));
    }
    if config.control.join_token.is_empty() || config.control.endpoint.is_empty() {
        return Err(EnrollError::NotEnrolled(dir));
    }
    let token = JoinToken::parse(&config.control.join_token).ok_or(EnrollError::BadToken)?;
    let mut attempt = 0;
    let tls = loop {
        attempt += 1;
        match enroll(&config.control.endpoint, &config.node_id, &token).await {
            Ok(tls) => break tls,
            Err(EnrollError::Unreachable(why)) if attempt < ENROLL_ATTEMPTS => {
                tracing::info!(%why, "control not reachable yet; enrolling again shortly");
                tokio::time::sleep(ENROLL_RETRY).await;
            }
            Err(error) => return Err(error),
        }
    };
    store(&dir, &tls)?;
    tracing::info!(node_id = %config.node_id, "enrolled with control");
    Ok(Some(tls))
}

/// Writes the identity: the dir 0700, the key 0600 first, the certificate last.
fn store(dir: &Path, tls: &NodeTls) -> Result<(), EnrollError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    for (name, text) in [
        (KEY_FILE, &tls.key_pem),
        (CA_FILE, &tls.ca_pem),
        (CERT_FILE, &tls.cert_pem),
    ] {
        let path = dir.join(name);
        let staged = dir.join(format!("{name}.new"));
        let _ = std::fs::remove_file(&staged);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, text.as_bytes())?;
                file.sync_all()
            })
            .map_err(io_error(&staged))?;
        std::fs::rename(&staged, &path).map_err(io_error(&path))?;
    }
    Ok(())
}

/// One enrollment: find control's CA by the token's hash, then trade token and CSR for a
/// certificate over a connection that trusts only that CA.
async fn enroll(endpoint: &str, node_id: &str, token: &JoinToken) -> Result<NodeTls, EnrollError> {
    let ca_pem = discover_ca(endpoint, &token.ca_sha256).await?;
    let key = rcgen::KeyPair::generate()?;
    let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(CONTROL_NAME);
    let unreachable = |e: tonic::transport::Error| EnrollError::Unreachable(e.to_string());
    let channel = Endpoint::from_shared(identity::tls_uri(endpoint))
        .and_then(|e| e.tls_config(tls))
        .map_err(unreachable)?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(unreachable)?;
    let answer = ControlPlaneClient::new(channel)
        .enroll(pb::EnrollRequest {
            join_token: token.secret.clone(),
            node_id: node_id.to_string(),
            csr_pem,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => EnrollError::Unreachable(status.message().to_string()),
            code => EnrollError::Refused(format!("{code:?}: {}", status.message())),
        })?
        .into_inner();
    // Control's answer must be what was asked: a certificate naming this node, and the CA
    // the token named.
    let names_node = identity::first_certificate(&answer.certificate_pem).is_some_and(|der| {
        identity::node_name(node_id).is_some_and(|name| identity::certificate_names(&der, &name))
    });
    let same_ca = identity::first_certificate(&answer.ca_pem)
        .is_some_and(|der| identity::fingerprint(&der) == token.ca_sha256);
    if !names_node || !same_ca {
        return Err(EnrollError::Refused(
            "control answered with a certificate for another name or CA".into(),
        ));
    }
    Ok(NodeTls {
        cert_pem: answer.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_pem: answer.ca_pem,
    })
}

/// The PEM of the certificate in the chain control's listener presents whose SHA-256 is
/// `ca_sha256`. The handshake is aborted as soon as the chain is seen.
async fn discover_ca(endpoint: &str, ca_sha256: &str) -> Result<String, EnrollError> {
    let uri: axum::http::Uri = identity::tls_uri(endpoint)
        .parse()
        .map_err(|_| EnrollError::Unreachable(format!("{endpoint:?} is not a URI")))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| EnrollError::Unreachable("connect timed out".into()))?
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    let capture = Arc::new(CaptureChain::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&capture) as _)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(CONTROL_NAME)
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // Fails by design: the verifier refuses once it has seen the chain.
    let _ = tokio::time::timeout(CALL_TIMEOUT, connector.connect(name, tcp)).await;
    let chain = capture
        .chain
        .lock()
        .map(|chain| chain.clone())
        .unwrap_or_default();
    if chain.is_empty() {
        return Err(EnrollError::Unreachable(
            "no TLS certificate from control's listener".into(),
        ));
    }
    chain
        .iter()
        .find(|der| identity::fingerprint(der) == ca_sha256)
        .map(|der| pem_certificate(der))
        .ok_or(EnrollError::CaMismatch)
}

/// A DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The probe never gets as far as a signature: the chain is refused first.
fn probe_only() -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("probe only".into()))
}

/// A verifier that records the server's chain and refuses it, so the probe's handshake ends
/// there: it only reads what control presents to everyone.
#[derive(Debug, Default)]
struct CaptureChain {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|der| der.to_vec())
                .collect();
        }
        Err(rustls::Error::General("chain captured; probe ends".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        probe_only()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = pem_certificate(&der);
        assert!(pem.lines().all(|line| line.len() <= 64));
        assert_eq!(identity::first_certificate(&pem), Some(der));
    }
}
