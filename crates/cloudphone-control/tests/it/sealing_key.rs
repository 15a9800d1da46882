//! The sealing key of AK secrets under systemd: the real control binary reads it from
//! `$CREDENTIALS_DIRECTORY/<[usage].secrets_key_credential>` (what `LoadCredential=` provides)
//! and never makes one in its data dir; without the credential it refuses, saying what the unit
//! needs. (Binding each secret to its access key, and re-sealing old rows, is tested in-process:
//! `usage::tests` in the library.)

use cloudphone_testkit::fleet::{Fleet, path_str};
use cloudphone_testkit::process::binary;

/// `cloudphone-control access-key create` for the fleet's tenant with `credentials` as the
/// credentials directory.
fn create_access_key(fleet: &Fleet, credentials: &std::path::Path) -> std::process::Output {
    let config = fleet.write_control_config();
    std::process::Command::new(binary("cloudphone-control"))
        .args(["access-key", "create", "--tenant", "acme", "--user", "dev"])
        .args(["--config", path_str(&config)])
        .env("CREDENTIALS_DIRECTORY", credentials)
        .env_remove("CLOUDPHONE_USAGE_SECRETS_KEY")
        .output()
        .unwrap()
}

#[test]
fn the_sealing_key_comes_from_the_systemd_credential_not_the_data_dir() {
    let fleet = Fleet::new(None, "synthetic");
    fleet.create_tenant("acme", "correct-horse-1");
    let credentials = tempfile::tempdir().unwrap();

    let refused = create_access_key(&fleet, credentials.path());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("LoadCredential=usage-secrets-key"),
        "{stderr}"
    );

    std::fs::write(
        credentials.path().join("usage-secrets-key"),
        "5a".repeat(32) + "\n",
    )
    .unwrap();
    let created = create_access_key(&fleet, credentials.path());
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(key["secret"].as_str().map(str::len), Some(40));
    // Nothing key-like next to the database.
    assert!(!fleet.path("usage-secrets.key").exists());
}
