//! The console: one static page served by control that logs in and lists instances live.

use axum::response::{Html, Redirect};

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/console.html"))
}

pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}
