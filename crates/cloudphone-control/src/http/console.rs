//! The console: static pages served by control: instance list and actions, the player, and
//! transcode usage (chart, table, CSV) read from the Huawei Live usage API.

use axum::response::{Html, Redirect};

pub(super) async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/console.html"))
}

/// The player: log in, pick a phone, stream it over WebRTC, touch and type.
pub(super) async fn player() -> Html<&'static str> {
    Html(include_str!("../../assets/player.html"))
}

/// Usage: encode minutes per class per hour/day from `GET /v2/{project_id}/stats/transcode`,
/// chart, table and CSV download, all built in the browser.
pub(super) async fn usage() -> Html<&'static str> {
    Html(include_str!("../../assets/usage.html"))
}

pub(super) async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}
