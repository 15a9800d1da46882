//! Property-based run of the whole tenant API: schemathesis generates requests from
//! `/openapi.json` against a real control + node and checks that no answer is a 5xx and every
//! answer matches its documented status, content type and schema.

use cloudphone_testkit::fleet::Fleet;

/// Where `cargo xtask test` installed the CLI; a plain `cargo test` looks in the same place.
fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("CLOUDPHONE_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            cloudphone_testkit::process::workspace_root().join("target/venv-st/bin/st")
        });
    assert!(
        path.exists(),
        "schemathesis not found at {}: run `cargo xtask test`, which installs it",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_contract_holds_under_generated_requests() {
    let st = schemathesis();
    let fleet = Fleet::up("synthetic").await;
    let token = fleet.login("acme", "correct-horse-1").await;
    // Real instances give the generator ids that exist, so handlers run past the ownership check.
    fleet.running_instances(&token, 2).await;
    let schema = format!("{}/openapi.json", fleet.api);
    let out = tokio::process::Command::new(&st)
        .args(["run", &schema, "--header"])
        .arg(format!("X-Auth-Token: {token}"))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--generation-deterministic",
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(
        report.contains("22 passed"),
        "every documented operation was exercised:\n{report}"
    );
}
