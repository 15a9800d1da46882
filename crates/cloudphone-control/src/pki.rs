//! Control's node CA: the key and self-signed certificate every control ↔ node certificate
//! chains to, created on first start (or read from `[nodes].ca_dir`), and what is signed with
//! it: control's own server and client certificates (fresh each start, never on disk) and the
//! nodes' certificates at enrollment. Names in the certificates are
//! `cloudphone_proto::identity`'s.

use std::io::Write;
use std::path::{Path, PathBuf};

use cloudphone_proto::identity::{self, CONTROL_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// How long a node's certificate lasts. Renewal is re-enrollment after `node revoke`.
const NODE_CERT_DAYS: i64 = 365 * 5;
/// How long control's own certificates last; they are made anew at every start.
const CONTROL_CERT_DAYS: i64 = 365;
/// How long the CA lasts.
const CA_DAYS: i64 = 365 * 20;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its key in PEM, ready for tonic's `Identity::from_pem`.
#[derive(Clone)]
pub struct IssuedPem {
    pub cert_pem: String,
    /// Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPem").finish_non_exhaustive()
    }
}

/// The CA, loaded.
pub struct Ca {
    /// The certificate as stored: what nodes trust and what join tokens carry the hash of.
    cert_pem: String,
    /// SHA-256 (hex) of the certificate's DER.
    fingerprint: String,
    /// The issuer form rcgen signs with (same subject and key as `cert_pem`).
    issuer: rcgen::Certificate,
    /// Never logged.
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `text` to a new file only its owner can read (0600), replacing none.
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(text.as_bytes()).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, so a peer whose clock runs a little behind accepts it at once.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// The DER of the first certificate in `pem`.
fn first_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    identity::first_certificate(pem)
        .ok_or_else(|| PkiError::Invalid("no certificate in PEM".into()))
}

impl Ca {
    /// Reads the CA from `dir`, creating it (and `dir`, 0700) when neither file exists yet.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if !cert_path.exists() && !key_path.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir))?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = named("cloudphone node CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, CA_DAYS);
            let cert = params.self_signed(&key)?;
            // The key first: a crash between the two leaves no certificate without its key.
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            tracing::info!(dir = %dir.display(), "created the node CA");
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        let fingerprint = identity::fingerprint(&first_der(&cert_pem)?);
        Ok(Self {
            cert_pem,
            fingerprint,
            issuer,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 (hex) of the CA certificate, as join tokens carry it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A fresh key and certificate of the control role, for both ends: control's server
    /// certificate on `[nodes].listen` and the client certificate it dials nodes with.
    pub fn issue_control(&self) -> Result<IssuedPem, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![CONTROL_NAME.to_string()])?;
        params.distinguished_name = named(CONTROL_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, CONTROL_CERT_DAYS);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs `csr_pem`'s public key into a certificate naming `node_id` (and nothing the CSR
    /// asked for: its subject and extensions are ignored). Answers the certificate's PEM and
    /// its fingerprint.
    pub fn issue_node(&self, node_id: &str, csr_pem: &str) -> Result<(String, String), PkiError> {
        let name = identity::node_name(node_id)
            .ok_or_else(|| PkiError::Invalid("node id cannot be named".into()))?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name = named(&name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, NODE_CERT_DAYS);
        let cert = params.signed_by(&csr.public_key, &self.issuer, &self.key)?;
        Ok((cert.pem(), identity::fingerprint(cert.der())))
    }
}

/// Where the CA lives: `[nodes].ca_dir`, or `pki/` next to an SQLite store (the working dir
/// otherwise), made absolute against `cwd`.
pub fn ca_dir(config: &crate::config::ControlConfig, cwd: &Path) -> PathBuf {
    if config.nodes.ca_dir.is_empty() {
        cwd.join(crate::config::sqlite_dir(&config.store.url).unwrap_or_default())
            .join("pki")
    } else {
        cwd.join(&config.nodes.ca_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_signs_only_the_csrs_key_under_the_nodes_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let again = Ca::load_or_create(&dir.path().join("pki")).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint(), "loaded, not remade");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let node_key = KeyPair::generate().unwrap();
        // The CSR asks to be control; the certificate names the node only.
        let csr = CertificateParams::new(vec![CONTROL_NAME.to_string()])
            .unwrap()
            .serialize_request(&node_key)
            .unwrap()
            .pem()
            .unwrap();
        let (pem, fingerprint) = again.issue_node("node-a", &csr).unwrap();
        let der = first_der(&pem).unwrap();
        assert_eq!(identity::fingerprint(&der), fingerprint);
        assert!(identity::certificate_names(
            &der,
            "node-a.node.cloudphone.internal"
        ));
        assert!(!identity::certificate_names(&der, CONTROL_NAME));
        assert!(again.issue_node("a b", &csr).is_err());
        assert!(again.issue_node("node-a", "not a csr").is_err());

        let control = ca.issue_control().unwrap();
        assert!(identity::certificate_names(
            &first_der(&control.cert_pem).unwrap(),
            CONTROL_NAME
        ));
        assert!(!format!("{control:?}").contains("PRIVATE"));
    }
}
