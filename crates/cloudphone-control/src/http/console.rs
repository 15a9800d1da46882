//! The console: static pages served by control: instance list and actions, and the player.

use axum::response::{Html, Redirect};

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/console.html"))
}

/// The player: log in, pick a phone, stream it over WebRTC, touch and type.
pub async fn player() -> Html<&'static str> {
    Html(include_str!("../../assets/player.html"))
}

pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}
