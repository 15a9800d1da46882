//! The console: static pages served by control: instance list and actions, the player, and
//! transcode usage (chart, table, CSV) read from the Huawei Live usage API.
//!
//! Every page goes out with a Content-Security-Policy that allows exactly its own inline script
//! and style (by their SHA-256, computed once from the page's text, so an edit cannot leave a
//! stale hash), nothing from elsewhere, no framing (`frame-ancestors 'none'`), and `nosniff`.
//! A string that slipped into the page's HTML as markup could then still not run: the pages
//! also build rows from API data with DOM APIs (`textContent`), never inline handlers.

use std::sync::LazyLock;

use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// One console page and the policy it is served with.
struct Page {
    html: &'static str,
    csp: HeaderValue,
}

impl Page {
    /// `connect` is what the page may open connections to besides its own origin.
    fn new(html: &'static str, connect: &str) -> Page {
        let policy = policy(html, connect);
        Page {
            html,
            // The policy is ASCII (base64 hashes and fixed words); a failure would be a bug in
            // `policy`, and then the strictest policy still goes out rather than none.
            csp: HeaderValue::from_str(&policy)
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
        }
    }

    fn serve(&self) -> Response {
        (
            [
                (CONTENT_SECURITY_POLICY, self.csp.clone()),
                (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                // For browsers older than `frame-ancestors`.
                (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            ],
            Html(self.html),
        )
            .into_response()
    }
}

/// The policy for `html`: its inline `<script>` and `<style>` blocks by hash, `connect-src`
/// `'self'` plus `connect`, and nothing else.
fn policy(html: &str, connect: &str) -> String {
    let scripts = inline_hashes(html, "script").join(" ");
    let styles = inline_hashes(html, "style").join(" ");
    let connect = format!("'self' {connect}");
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; \
         connect-src {}; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
        connect.trim_end()
    )
}

/// `'sha256-…'` of the text of every `<tag>` block in `html` that has no `src`.
fn inline_hashes(html: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(head_end) = after.find('>') else {
            break;
        };
        let attributes = &after[..head_end];
        let body = &after[head_end + 1..];
        let Some(end) = body.find(&close) else {
            break;
        };
        if !attributes.contains("src=") {
            let digest = Sha256::digest(&body.as_bytes()[..end]);
            hashes.push(format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        rest = &body[end + close.len()..];
    }
    hashes
}

static CONSOLE: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("../../assets/console.html"), ""));
/// The player opens the node's signaling WebSocket, at whatever host and port the node
/// reports (`signaling_url`): any ws/wss origin. Media flows over WebRTC, which
/// `connect-src` does not govern.
static PLAYER: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("../../assets/player.html"), "ws: wss:"));
static USAGE: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("../../assets/usage.html"), ""));

pub(super) async fn page() -> Response {
    CONSOLE.serve()
}

/// The player: log in, pick a phone, stream it over WebRTC, touch and type.
pub(super) async fn player() -> Response {
    PLAYER.serve()
}

/// Usage: encode minutes per class per hour/day from `GET /v2/{project_id}/stats/transcode`,
/// chart, table and CSV download, all built in the browser.
pub(super) async fn usage() -> Response {
    USAGE.serve()
}

pub(super) async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_blocks_are_hashed_and_external_ones_are_not() {
        let html = "<style>a{}</style><script src=\"x.js\"></script><script>go()</script>";
        let hash = |text: &str| {
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text))
            )
        };
        assert_eq!(inline_hashes(html, "script"), [hash("go()")]);
        assert_eq!(inline_hashes(html, "style"), [hash("a{}")]);
        let csp = policy(html, "ws: wss:");
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(
            csp.contains(&format!("script-src {};", hash("go()"))),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self' ws: wss:;"), "{csp}");
        assert!(csp.ends_with("frame-ancestors 'none'"), "{csp}");
    }

    /// Every page has exactly one inline script and one inline style, both in its policy, and
    /// no inline event handler or style attribute (which hashes would not allow).
    #[test]
    fn every_page_allows_its_own_inline_code_only() {
        for page in [&*CONSOLE, &*PLAYER, &*USAGE] {
            let csp = page.csp.to_str().unwrap();
            assert_eq!(inline_hashes(page.html, "script").len(), 1, "{csp}");
            assert_eq!(inline_hashes(page.html, "style").len(), 1, "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            for attribute in [" onclick=", " onload=", " onerror=", " style=\""] {
                assert!(!page.html.contains(attribute), "{attribute} in a page");
            }
        }
    }
}
