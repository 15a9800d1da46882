//! Who is who on the control ↔ node link: the names control's CA writes into certificates,
//! the check that a peer's certificate carries one, certificate fingerprints, and the join
//! token's printed form. Part of the wire contract, so both daemons read it from here.

use std::fmt;

use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

/// The DNS name in every certificate of the control role (control's server certificate on
/// `[nodes].listen`, and the client certificate it and operators' tools present to nodes).
pub const CONTROL_NAME: &str = "control.cloudphone.internal";

/// What follows a node id in the DNS name its certificate carries.
const NODE_SUFFIX: &str = ".node.cloudphone.internal";

/// The prefix of a printed join token; the version lets the format change later.
const JOIN_PREFIX: &str = "cpj1";

/// A node id that can be named in a certificate: 1–64 characters, dot-separated labels of
/// ASCII letters, digits, `-` and `_`, none empty and none starting or ending with `-`.
pub fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty()
        && node_id.len() <= 64
        && node_id.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The DNS name a node's certificate carries, or `None` for an id that cannot be named.
pub fn node_name(node_id: &str) -> Option<String> {
    valid_node_id(node_id).then(|| format!("{node_id}{NODE_SUFFIX}"))
}

/// Whether the DER certificate `der` is valid for the DNS name `name` (its subject
/// alternative names; the chain is checked by the TLS handshake, not here).
pub fn certificate_names(der: &[u8], name: &str) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// `endpoint` with an `http://` scheme made `https://`: the control ↔ node link is always TLS,
/// and tonic would speak plain HTTP/2 to an `http://` URI whatever its TLS settings.
pub fn tls_uri(endpoint: &str) -> String {
    match endpoint.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => endpoint.to_string(),
    }
}

/// The DER of the first certificate in `pem`, if there is one.
pub fn first_certificate(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

/// The lowercase hex SHA-256 of a DER certificate: what control pins per node id and what a
/// join token carries for control's CA.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What the operator hands a new node: the single-use secret and the SHA-256 of control's CA
/// certificate, so the node can check control's certificate on first contact without a
/// pre-shared CA file (as kubeadm's discovery hash does). Printed as
/// `cpj1.<secret>.<ca sha256 hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Never logged; control stores only its SHA-256.
    pub secret: String,
    /// Lowercase hex SHA-256 of control's CA certificate (DER).
    pub ca_sha256: String,
}

impl JoinToken {
    /// Reads the printed form; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let (prefix, secret, ca) = (parts.next()?, parts.next()?, parts.next()?);
        let well_formed = prefix == JOIN_PREFIX
            && parts.next().is_none()
            && (16..=128).contains(&secret.len())
            && secret.chars().all(|c| c.is_ascii_alphanumeric())
            && ca.len() == 64
            && ca.chars().all(|c| c.is_ascii_hexdigit());
        well_formed.then(|| Self {
            secret: secret.to_string(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}.{}.{}", self.secret, self.ca_sha256)
    }
}

/// The secret stays out of `Debug` (and so out of logs).
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("ca_sha256", &self.ca_sha256)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_dns_labels() {
        for good in ["node-a", "n1", "node_a", "rack-3.host-7", "A9"] {
            assert!(valid_node_id(good), "{good}");
            assert!(
                ServerName::try_from(node_name(good).unwrap()).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "a b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(!valid_node_id(bad), "{bad:?}");
            assert_eq!(node_name(bad), None);
        }
    }

    #[test]
    fn join_tokens_round_trip_and_hide_their_secret() {
        let token = JoinToken {
            secret: "abcdefghijklmnop0123".into(),
            ca_sha256: "ab".repeat(32),
        };
        let printed = token.to_string();
        assert_eq!(JoinToken::parse(&printed), Some(token.clone()));
        assert!(!format!("{token:?}").contains("abcdefgh"));
        for bad in [
            "",
            "cpj1.short.abab",
            &printed.replace("cpj1", "cpj2"),
            &format!("{printed}.x"),
            &printed.replace("ab", "zz"),
        ] {
            assert_eq!(JoinToken::parse(bad), None, "{bad:?}");
        }
    }
}
