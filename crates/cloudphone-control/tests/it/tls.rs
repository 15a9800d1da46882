//! `[http] tls_cert`/`tls_key`: the real control binary serves its tenant API over HTTPS only.
//! A client trusting the certificate logs in; a client that does not, and plain HTTP to the
//! same port, get no API answer; SIGTERM still drains and stops it cleanly.

use std::time::{Duration, Instant};

use cloudphone_testkit::fleet::Fleet;

/// A self-signed certificate for 127.0.0.1 written as PEM files into `dir`; returns the
/// certificate's PEM for clients to trust.
fn self_signed(dir: &std::path::Path) -> String {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = certified.cert.pem();
    std::fs::write(dir.join("api-cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("api-key.pem"), certified.key_pair.serialize_pem()).unwrap();
    cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_only_when_configured() {
    let mut fleet = Fleet::new(None, "synthetic");
    let cert = self_signed(fleet.dir.path());
    fleet.control_extra = format!(
        "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        fleet.path("api-cert.pem").display(),
        fleet.path("api-key.pem").display()
    );
    fleet.create_tenant("acme", "correct-horse-1");
    fleet.start_control();
    let plain = fleet.api.clone();
    // The trusting client becomes the fleet's, so its helpers speak HTTPS.
    fleet.api = plain.replace("http://", "https://");
    fleet.http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .build()
        .unwrap();
    fleet.wait_healthy(&fleet.api.clone()).await;

    // A client trusting the certificate gets API answers: a login and a listing.
    let token = fleet.login("acme", "correct-horse-1").await;
    // `list` asserts a 200 with a JSON body.
    fleet.list(&token).await;

    // Plain HTTP to the TLS port gets no HTTP answer at all.
    let over_http = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(over_http.is_err(), "plain HTTP answered: {over_http:?}");
    // Nor does a client that does not trust the certificate.
    let untrusting = reqwest::Client::new()
        .get(format!("{}/healthz", fleet.api))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(untrusting.is_err(), "untrusted certificate accepted");

    // Graceful shutdown still drains and stops the background tasks.
    let control = fleet.control.as_mut().expect("control started");
    let sent = Instant::now();
    let status = control
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("control was running");
    let log = control.log_text();
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(sent.elapsed() < Duration::from_secs(3), "slow stop\n{log}");
    assert!(log.contains("background tasks stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_stops_start_up() {
    let mut fleet = Fleet::new(None, "synthetic");
    fleet.control_extra = format!(
        "[http]\ntls_cert = \"{0}/none.pem\"\ntls_key = \"{0}/none-key.pem\"\n",
        fleet.dir.path().display()
    );
    let config = fleet.write_control_config();
    let out = std::process::Command::new(cloudphone_testkit::process::binary("cloudphone-control"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("none.pem"), "{stderr}");
}
