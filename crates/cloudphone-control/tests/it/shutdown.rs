//! SIGTERM stops the real control binary cleanly: requests drain, every background task `run`
//! started (token purger, node monitor, restore worker) stops and is awaited, exit status 0.

use std::time::{Duration, Instant};

use cloudphone_testkit::fleet::Fleet;
use cloudphone_testkit::wait_for;

#[tokio::test]
async fn sigterm_stops_control_and_its_background_tasks() {
    let mut fleet = Fleet::new(None, "synthetic");
    fleet.start_control();
    let health = format!("{}/healthz", fleet.api);
    let http = fleet.http.clone();
    wait_for("control healthy", Duration::from_secs(30), || {
        let (http, health) = (http.clone(), health.clone());
        async move {
            let response = http.get(&health).send().await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
    let control = fleet.control.as_mut().expect("control started");
    // The restore worker runs from start-up; give it a turn or two of its loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let status = control
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("control was running");
    let took = sent.elapsed();
    let log = control.log_text();
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} to stop\n{log}"
    );
    assert!(
        log.contains("background tasks stopped"),
        "no task left running is logged\n{log}"
    );
    assert!(!log.contains("background task panicked"), "{log}");
}
