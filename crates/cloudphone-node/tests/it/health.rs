//! `/healthz` and `/metrics` of a real node: healthy with a running instance and honest about
//! a broken runtime; the metrics follow a viewer (sessions, encoders, bitrate) and the usage
//! records control has not acknowledged.

use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::EncodingType;
use serde_json::Value;

use crate::streaming_webrtc::usage_within;
use crate::support::streaming::Node;

async fn healthz(node: &Node) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}/healthz", node.http))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn scrape(node: &Node) -> String {
    reqwest::get(format!("http://{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name` (with its labels, e.g. `x{state="running"}`), if present.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn healthz_and_metrics_follow_an_instance_and_a_viewer() {
    let mut node = Node::start("synthetic", |c| c.webrtc.usage_interval_secs = 1).await;
    let (status, body) = healthz(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["runtime"], "ok", "{body}");
    assert_eq!(body["usage_buffer"], "ok", "{body}");
    // Nothing opened a report stream: reported, and still healthy.
    assert_eq!(body["control"], "disconnected", "{body}");

    node.create_instance("h1", 360, 640).await;
    let (status, body) = healthz(&node).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["instances"]["running"], 1, "{body}");

    let before = scrape(&node).await;
    assert_eq!(
        value(&before, "cloudphone_node_sessions"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        value(&before, "cloudphone_node_encoders"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        value(&before, r#"cloudphone_node_instances{state="running"}"#),
        Some(1.0),
        "{before}"
    );

    node.open_session("h1", "dev-h", "tok-h").await;
    let mut viewer = node
        .viewer("dev-h", "tok-h", EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(5, Duration::from_secs(20)).await;
    // Bitrate is measured per second and usage written per second: poll a few seconds.
    let mut last = String::new();
    for _ in 0..20 {
        assert!(viewer.pump_for(Duration::from_millis(500)).await.is_none());
        last = scrape(&node).await;
        let ready = value(&last, "cloudphone_node_encoder_bitrate_kbps").unwrap_or(0.0) > 0.0
            && value(&last, "cloudphone_node_usage_buffer_records").unwrap_or(0.0) > 0.0;
        if ready {
            break;
        }
    }
    assert_eq!(
        value(&last, "cloudphone_node_sessions"),
        Some(1.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "cloudphone_node_encoders"),
        Some(1.0),
        "{last}"
    );
    assert!(
        value(&last, "cloudphone_node_encoder_bitrate_kbps").unwrap_or(0.0) > 0.0,
        "{last}"
    );
    assert!(
        value(&last, "cloudphone_node_encoder_bytes_total").unwrap_or(0.0) > 0.0,
        "{last}"
    );
    // No control acknowledges: the records stay on disk and the depth shows it.
    assert!(
        value(&last, "cloudphone_node_usage_buffer_records").unwrap_or(0.0) >= 1.0,
        "{last}"
    );
    assert_eq!(
        value(&last, "cloudphone_node_report_streams"),
        Some(0.0),
        "{last}"
    );
    assert!(
        value(&last, "cloudphone_node_frames_dropped_total").is_some(),
        "{last}"
    );

    // Control connects and acknowledges: the depth falls back to 0 once every record (the
    // encoder's final one included, after the viewer left) is acknowledged.
    drop(viewer);
    let mut reports = node.open_reports().await;
    let (status, body) = healthz(&node).await;
    assert_eq!(
        (status, &body["control"]),
        (200, &"connected".into()),
        "{body}"
    );
    let mut drained = false;
    for _ in 0..10 {
        let records = usage_within(&mut reports, Duration::from_secs(1)).await;
        let record_ids = records.into_iter().map(|r| r.record_id).collect();
        node.grpc
            .ack_usage(pb::AckUsageRequest { record_ids })
            .await
            .unwrap();
        last = scrape(&node).await;
        if value(&last, "cloudphone_node_encoders") == Some(0.0)
            && value(&last, "cloudphone_node_usage_buffer_records") == Some(0.0)
        {
            drained = true;
            break;
        }
    }
    assert!(drained, "{last}");
    assert_eq!(
        value(&last, "cloudphone_node_sessions"),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "cloudphone_node_report_streams"),
        Some(1.0),
        "{last}"
    );
    drop(reports);
    node.shutdown().await;
}

#[tokio::test]
async fn healthz_is_503_when_the_runtime_cannot_run_instances() {
    let node = Node::start("x11", |c| c.x11.xvfb = "/nonexistent/bin/Xvfb".into()).await;
    let (status, body) = healthz(&node).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["runtime"], "unavailable", "{body}");
    assert_eq!(body["usage_buffer"], "ok", "{body}");
    let problem = body["runtime_problem"].as_str().unwrap_or_default();
    assert!(problem.contains("Xvfb"), "{body}");
    // Unauthenticated: says what is missing, not where the node looked.
    assert!(!body.to_string().contains("/nonexistent"), "{body}");
    node.shutdown().await;
}
