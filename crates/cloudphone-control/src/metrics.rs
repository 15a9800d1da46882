//! Control's Prometheus metrics: every name in one place, each described once at start (the
//! list operators read is docs/deploy.md § Health and metrics).

use std::time::Duration;

/// Requests served, by method, route template and status.
const HTTP_REQUESTS: &str = "cloudphone_http_requests_total";
/// Request latency in seconds, by method and route template.
const HTTP_SECONDS: &str = "cloudphone_http_request_seconds";
/// Nodes the liveness rule sees up / down right now (set when `/metrics` is read).
const NODES_UP: &str = "cloudphone_control_nodes_up";
const NODES_DOWN: &str = "cloudphone_control_nodes_down";
/// Node health transitions (counted where they happen, in `nodes`).
const NODE_HEALTH_CHANGES: &str = "cloudphone_node_health_changes_total";
/// 1 while this replica leads (runs the fleet-wide jobs, `leader`), else 0.
const LEADER: &str = "cloudphone_control_leader";
/// Usage records stored (counted in `usage`).
const USAGE_RECORDS: &str = "cloudphone_usage_records_total";

/// Describes every metric; call once the recorder is installed.
pub(crate) fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by method, route template and status"
    );
    metrics::describe_histogram!(
        HTTP_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency, by method and route template"
    );
    metrics::describe_gauge!(NODES_UP, "Nodes whose report stream is alive");
    metrics::describe_gauge!(
        NODES_DOWN,
        "Known nodes whose report stream is lost or late"
    );
    metrics::describe_counter!(
        NODE_HEALTH_CHANGES,
        "Node health transitions, by the health entered"
    );
    metrics::describe_counter!(USAGE_RECORDS, "Usage records stored (each record id once)");
    metrics::describe_gauge!(
        LEADER,
        "1 while this replica leads (runs the prepare queue and purges), else 0"
    );
}

/// Counts one served request and its latency.
pub(crate) fn request_served(method: String, route: String, status: u16, elapsed: Duration) {
    metrics::histogram!(HTTP_SECONDS, "method" => method.clone(), "route" => route.clone())
        .record(elapsed.as_secs_f64());
    metrics::counter!(
        HTTP_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
}

/// The node gauges, as the registry sees them now.
pub(crate) fn set_nodes(up: usize, down: usize) {
    metrics::gauge!(NODES_UP).set(up as f64);
    metrics::gauge!(NODES_DOWN).set(down as f64);
}

/// The leader gauge, as the election sees it now.
pub(crate) fn set_leader(leads: bool) {
    metrics::gauge!(LEADER).set(if leads { 1.0 } else { 0.0 });
}
