//! Transcode usage on control's side: storing the nodes' usage records exactly once, the
//! tenant's streaming domains, AK/SK pairs and the sealing of their secrets, and reading usage
//! back as merged spans for the two usage APIs (the math lives in `cloudphone-usage`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use cloudphone_proto::node_v1 as pb;
use cloudphone_usage::class::parse_codec;
use cloudphone_usage::meter::{self, Span};
use rand::RngCore;

use crate::config::ControlConfig;
use crate::store::{AccessKeyRecord, DomainRecord, Store, StoreError, UsageRow};

/// App every cloud-phone session bills under (its stream is the instance id).
pub(crate) const CLOUDPHONE_APP: &str = "cloudphone";
/// An open session is billed up to now, but at most this long past its last record (nodes send
/// one every 30 s by default, so a live session always has a newer one before this runs out).
pub(crate) const OPEN_GRACE_MS: i64 = 60_000;
/// An explicit sealing key (64 hex digits) that overrides every other source: for containers
/// and tests; under systemd, prefer the credential.
pub(crate) const KEY_ENV: &str = "CLOUDPHONE_USAGE_SECRETS_KEY";
/// Set by systemd to the directory holding the unit's `LoadCredential=` files.
const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
const KEY_FILE: &str = "usage-secrets.key";
/// Marks a secret sealed with its access key as associated data; a sealed secret without it is
/// from before that binding and is re-sealed the first time it is opened.
const BOUND_PREFIX: &str = "v2:";

#[derive(Debug, thiserror::Error)]
pub(crate) enum UsageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("secrets key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("a stored secret could not be unsealed (wrong secrets key, or moved to another key?)")]
    Unseal,
}

/// Seals AK secrets with ChaCha20-Poly1305 under a key kept outside the database, each bound
/// to its access key id as associated data: a sealed secret copied into another key's row
/// does not open there.
pub(crate) struct SecretBox {
    cipher: ChaCha20Poly1305,
}

/// An opened secret, and whether its row still holds the unbound (pre-`v2:`) form.
pub(crate) struct Unsealed {
    pub(crate) secret: String,
    pub(crate) unbound: bool,
}

/// The associated data binding a sealed secret to `access_key`.
fn binding(access_key: &str) -> Vec<u8> {
    format!("cloudphone access key secret\0{access_key}").into_bytes()
}

impl SecretBox {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// `v2:` ‖ `hex(nonce ‖ ciphertext)`, with `access_key` as associated data.
    pub(crate) fn seal(&self, access_key: &str, secret: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = binding(access_key);
        // Encryption with a 12-byte nonce and a short plaintext cannot fail.
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        format!(
            "{BOUND_PREFIX}{}{}",
            hex::encode(nonce),
            hex::encode(sealed)
        )
    }

    /// Opens the secret sealed for `access_key`; a secret sealed for another key fails.
    pub(crate) fn open(&self, access_key: &str, sealed: &str) -> Result<Unsealed, UsageError> {
        let (hex_text, aad, unbound) = match sealed.strip_prefix(BOUND_PREFIX) {
            Some(rest) => (rest, binding(access_key), false),
            None => (sealed, Vec::new(), true),
        };
        let bytes = hex::decode(hex_text).map_err(|_| UsageError::Unseal)?;
        if bytes.len() < 12 {
            return Err(UsageError::Unseal);
        }
        let (nonce, data) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: data,
                    aad: &aad,
                },
            )
            .map_err(|_| UsageError::Unseal)?;
        let secret = String::from_utf8(plain).map_err(|_| UsageError::Unseal)?;
        Ok(Unsealed { secret, unbound })
    }
}

/// The secret of `record`; a secret still sealed without its binding (stored before it existed)
/// is re-sealed bound to its key in the same step, so it opens unbound once at most.
pub(crate) async fn open_access_key(
    store: &dyn Store,
    sealer: &SecretBox,
    record: &AccessKeyRecord,
) -> Result<String, UsageError> {
    let opened = sealer.open(&record.access_key, &record.secret_sealed)?;
    if opened.unbound {
        let bound = sealer.seal(&record.access_key, &opened.secret);
        store
            .reseal_access_key(&record.access_key, &record.secret_sealed, &bound)
            .await?;
        tracing::info!(access_key = %record.access_key, "access key secret re-sealed bound to its key");
    }
    Ok(opened.secret)
}

/// The demo's key file: next to an SQLite store, else in the working dir.
pub(crate) fn key_path(config: &ControlConfig) -> PathBuf {
    let url = &config.store.url;
    let dir = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default())
        .filter(|p| !p.is_empty() && *p != ":memory:")
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .unwrap_or_default();
    dir.join(KEY_FILE)
}

fn parse_key(text: &str, path: &str) -> Result<[u8; 32], UsageError> {
    let bytes = hex::decode(text.trim()).map_err(|_| UsageError::Key {
        path: path.to_string(),
        reason: "not hex".into(),
    })?;
    bytes.try_into().map_err(|_| UsageError::Key {
        path: path.to_string(),
        reason: "must be 32 bytes (64 hex digits)".into(),
    })
}

/// Loads the sealing key, from the first of: `CLOUDPHONE_USAGE_SECRETS_KEY`; under systemd
/// (`$CREDENTIALS_DIRECTORY` set), the credential `[usage].secrets_key_credential`, which must
/// then exist (no key is ever made next to the database there); else `[usage].secrets_key_file`
/// or the demo's file next to an SQLite store, created (mode 0600, random) on first use.
/// Every replica must see the same key. `env` is the process environment (tests pass their own).
pub(crate) fn load_key(
    config: &ControlConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<[u8; 32], UsageError> {
    if let Some(text) = env(KEY_ENV) {
        return parse_key(&text, KEY_ENV);
    }
    if let Some(dir) = env(CREDENTIALS_ENV) {
        let path = Path::new(&dir).join(&config.usage.secrets_key_credential);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| UsageError::Key {
            reason: format!(
                "{e} (the unit needs LoadCredential={}:<file>)",
                config.usage.secrets_key_credential
            ),
            path: shown.clone(),
        })?;
        return parse_key(&text, &shown);
    }
    let path = config
        .usage
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| key_path(config));
    read_or_create_key(&path)
}

/// The key in the file at `path`, or a new random one written there (mode 0600) first.
fn read_or_create_key(path: &Path) -> Result<[u8; 32], UsageError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| UsageError::Key {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            parse_key(&std::fs::read_to_string(path).map_err(io)?, &shown)
        }
        Err(e) => Err(io(e)),
    }
}

/// The process's secret box, loaded once.
pub(crate) fn secret_box(config: &ControlConfig) -> Result<&'static SecretBox, UsageError> {
    static BOX: OnceLock<SecretBox> = OnceLock::new();
    if let Some(b) = BOX.get() {
        return Ok(b);
    }
    let key = load_key(config, |name| std::env::var(name).ok())?;
    Ok(BOX.get_or_init(|| SecretBox::new(key)))
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // 256 is a multiple of neither alphabet length exactly; the bias is < 1 % per character
    // and irrelevant next to 40 characters of secret.
    bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect()
}

/// A new pair: a 20-character upper-case AK and a 40-character SK, Huawei's shapes.
pub(crate) fn new_key_pair() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (random_string(UPPER, 20), random_string(MIXED, 40))
}

/// Creates a pair for `user_id`; returns the record and the secret (shown once, then only
/// its sealed form exists).
pub(crate) async fn create_access_key(
    store: &dyn Store,
    sealer: &SecretBox,
    tenant_id: &str,
    user_id: &str,
    description: &str,
    now_ms: i64,
) -> Result<(AccessKeyRecord, String), UsageError> {
    let (access_key, secret) = new_key_pair();
    let record = AccessKeyRecord {
        secret_sealed: sealer.seal(&access_key, &secret),
        access_key,
        tenant_id: tenant_id.to_string(),
        user_id: user_id.to_string(),
        description: description.to_string(),
        created_at_ms: now_ms,
    };
    store.insert_access_key(&record).await?;
    Ok((record, secret))
}

/// The domain cloud-phone sessions of `tenant_id` bill under: its default (or oldest live)
/// domain; a tenant without any gets `<tenant_id>.live.cloudphone` as its default, so no
/// usage is ever unattributed.
pub(crate) async fn default_domain(
    store: &dyn Store,
    tenant_id: &str,
) -> Result<String, StoreError> {
    let domains = store.list_domains(tenant_id).await?;
    let live = domains.iter().filter(|d| d.deleted_at_ms.is_none());
    if let Some(d) = live.clone().find(|d| d.is_default).or(live.clone().next()) {
        return Ok(d.domain.clone());
    }
    let domain = format!("{tenant_id}.live.cloudphone");
    let created = store
        .create_domain(&DomainRecord {
            domain: domain.clone(),
            tenant_id: tenant_id.to_string(),
            is_default: true,
            created_at_ms: crate::unix_ms(),
            deleted_at_ms: None,
        })
        .await;
    match created {
        Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(domain),
        Err(e) => Err(e),
    }
}

/// Stores a node's usage record once. The tenant is the instance's as control knows it (a node
/// cannot bill another tenant), the instance must be one control placed on `node_id` (a node
/// cannot bill for another node's instances), and the record's times are cut to the instance's
/// life up to now (`cloudphone_usage::admit`). `Ok(false)` means the record is refused and
/// dropped (acknowledged, so the node stops resending it).
pub(crate) async fn ingest(
    store: &dyn Store,
    node_id: &str,
    record: &pb::UsageRecord,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let instance = match store.get_instance(&record.instance_id).await? {
        Some(instance) if instance.node_id == node_id => instance,
        Some(_) => {
            tracing::warn!(node_id, instance_id = %record.instance_id, "usage for an instance not placed on this node: dropped");
            return Ok(false);
        }
        None => return Ok(false),
    };
    let Some((start_ms, end_ms)) = cloudphone_usage::admit::clamp_span(
        record.start_unix_ms,
        record.end_unix_ms,
        instance.created_at_ms,
        now_ms,
    ) else {
        return Ok(false);
    };
    if parse_codec(&record.codec).is_none() {
        return Ok(false);
    }
    let tenant_id = instance.tenant_id;
    let domain = default_domain(store, &tenant_id).await?;
    let row = UsageRow {
        record_id: record.record_id.clone(),
        session_id: record.session_id.clone(),
        tenant_id,
        instance_id: record.instance_id.clone(),
        node_id: node_id.to_string(),
        domain,
        app: CLOUDPHONE_APP.to_string(),
        stream: record.instance_id.clone(),
        codec: record.codec.clone(),
        width: i64::from(record.width),
        height: i64::from(record.height),
        start_ms,
        end_ms,
        is_final: record.r#final,
        received_at_ms: now_ms,
    };
    store.store_usage(std::slice::from_ref(&row)).await?;
    Ok(true)
}

/// The tenant's encoding in `[from_ms, to_ms)` as merged spans, open sessions billed up to now.
pub(crate) async fn spans(
    store: &dyn Store,
    tenant_id: &str,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Result<Vec<Span>, StoreError> {
    let rows = store
        .usage_between(tenant_id, from_ms - OPEN_GRACE_MS, to_ms)
        .await?;
    let records: Vec<meter::Record> = rows
        .into_iter()
        .filter_map(|r| {
            Some(meter::Record {
                span: Span {
                    codec: parse_codec(&r.codec)?,
                    width: u32::try_from(r.width).ok()?,
                    height: u32::try_from(r.height).ok()?,
                    session_id: r.session_id,
                    domain: r.domain,
                    app: r.app,
                    stream: r.stream,
                    start_ms: r.start_ms,
                    end_ms: r.end_ms,
                },
                record_id: r.record_id,
                is_final: r.is_final,
            })
        })
        .collect();
    Ok(meter::merge_sessions(&records, now_ms, OPEN_GRACE_MS))
}

/// A usage record arrived on a node's report stream: store it, then acknowledge it so the node
/// drops it from its on-disk buffer. A record that could not be stored is not acknowledged; the
/// node sends it again.
pub(crate) async fn on_report(
    store: &dyn Store,
    client: Option<crate::nodes::NodeClient>,
    node_id: &str,
    record: pb::UsageRecord,
) {
    match ingest(store, node_id, &record, crate::unix_ms()).await {
        Ok(true) => metrics::counter!("cloudphone_usage_records_total").increment(1),
        Ok(false) => {
            tracing::warn!(record_id = %record.record_id, instance_id = %record.instance_id, "usage record of no known instance dropped")
        }
        Err(error) => {
            tracing::warn!(%error, record_id = %record.record_id, "could not store a usage record");
            return;
        }
    }
    let Some(mut client) = client else { return };
    let ack = pb::AckUsageRequest {
        record_ids: vec![record.record_id],
    };
    // Off the report loop: a slow node must not delay its own heartbeats' processing.
    tokio::spawn(async move {
        if let Err(status) = client.ack_usage(ack).await {
            tracing::debug!(%status, "usage ack failed; the node will resend");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_for_their_access_key() {
        let a = SecretBox::new([7; 32]);
        let sealed = a.seal("AK1", "top-secret");
        assert!(!sealed.contains("top-secret"));
        assert_ne!(sealed, a.seal("AK1", "top-secret"), "fresh nonce each time");
        let opened = a.open("AK1", &sealed).unwrap();
        assert_eq!(
            (opened.secret.as_str(), opened.unbound),
            ("top-secret", false)
        );
        assert!(SecretBox::new([8; 32]).open("AK1", &sealed).is_err());
        assert!(a.open("AK2", &sealed).is_err(), "bound to AK1");
        // Without its prefix it is not taken for an unbound secret either.
        assert!(a.open("AK1", &sealed["v2:".len()..]).is_err());
        assert!(a.open("AK1", "00").is_err());
    }

    /// A secret sealed the way control did before the binding: no prefix, no associated data.
    fn seal_unbound(sealer: &SecretBox, secret: &str) -> String {
        let nonce = [3u8; 12];
        let sealed = sealer
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.as_bytes())
            .unwrap();
        format!("{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    #[tokio::test]
    async fn unbound_secrets_open_once_and_are_resealed_bound_and_moved_ones_do_not_open() {
        let (store, _dir) = crate::store::test_store().await;
        let store = &*store;
        store
            .create_tenant(&crate::store::NewTenant {
                tenant_id: "t1".into(),
                domain_name: "acme".into(),
                user_id: "u1".into(),
                user_name: "acme".into(),
                password_hash: "x".into(),
                project_id: "p1".into(),
                project_name: "cn-north-7".into(),
                created_at_ms: 0,
            })
            .await
            .unwrap();
        let sealer = SecretBox::new([9; 32]);
        let record = |access_key: &str, secret_sealed: String| AccessKeyRecord {
            access_key: access_key.into(),
            tenant_id: "t1".into(),
            user_id: "u1".into(),
            secret_sealed,
            description: String::new(),
            created_at_ms: 0,
        };
        let old = record("OLDKEY", seal_unbound(&sealer, "old-secret"));
        store.insert_access_key(&old).await.unwrap();

        // A row from before the binding opens, and is re-sealed bound in the same step.
        assert_eq!(
            open_access_key(store, &sealer, &old).await.unwrap(),
            "old-secret"
        );
        let resealed = store.find_access_key("OLDKEY").await.unwrap().unwrap();
        assert!(resealed.secret_sealed.starts_with("v2:"));
        assert_eq!(
            open_access_key(store, &sealer, &resealed).await.unwrap(),
            "old-secret"
        );

        // The bound secret copied into another key's row does not open there.
        let (fresh, _) = create_access_key(store, &sealer, "t1", "u1", "", 0)
            .await
            .unwrap();
        let moved = record("MOVEDKEY", fresh.secret_sealed.clone());
        store.insert_access_key(&moved).await.unwrap();
        assert!(matches!(
            open_access_key(store, &sealer, &moved).await,
            Err(UsageError::Unseal)
        ));
        assert!(open_access_key(store, &sealer, &fresh).await.is_ok());
    }

    #[test]
    fn key_pairs_have_huawei_shapes() {
        let (ak, sk) = new_key_pair();
        assert_eq!((ak.len(), sk.len()), (20, 40));
        assert!(
            ak.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_ne!(new_key_pair().0, ak);
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::default();
        config.store.url = crate::store::test_url(dir.path());
        let a = load_key(&config, |_| None).unwrap();
        assert_eq!(load_key(&config, |_| None).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(&config))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn under_systemd_the_key_comes_from_the_credential_never_from_the_data_dir() {
        let data = tempfile::tempdir().unwrap();
        let credentials = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::default();
        config.store.url = crate::store::test_url(data.path());
        let dir = credentials.path().display().to_string();
        let env = |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| dir.clone());

        // No credential loaded: an error naming what the unit needs, and no key file made.
        let error = load_key(&config, env).unwrap_err().to_string();
        assert!(
            error.contains("LoadCredential=usage-secrets-key"),
            "{error}"
        );
        assert!(!key_path(&config).exists());

        std::fs::write(
            credentials.path().join("usage-secrets-key"),
            format!("{}\n", "ab".repeat(32)),
        )
        .unwrap();
        assert_eq!(load_key(&config, env).unwrap(), [0xab; 32]);
        assert!(
            !key_path(&config).exists(),
            "nothing written next to the store"
        );
        assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);

        // Another credential name, as configured.
        config.usage.secrets_key_credential = "sealing".into();
        std::fs::write(credentials.path().join("sealing"), "cd".repeat(32)).unwrap();
        assert_eq!(load_key(&config, env).unwrap(), [0xcd; 32]);
    }

    #[test]
    fn outside_systemd_a_configured_key_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::default();
        config.store.url = crate::store::test_url(dir.path());
        let file = dir.path().join("keys").join("sealing.key");
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        config.usage.secrets_key_file = Some(file.clone());
        let key = load_key(&config, |_| None).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), hex::encode(key));
        assert!(!key_path(&config).exists());
    }
}
