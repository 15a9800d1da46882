//! The console: static pages served by control: instance list and actions, the player, and
//! transcode usage (chart, table, CSV) read from the Huawei Live usage API.
//!
//! Every page goes out with a Content-Security-Policy that allows exactly its own inline script
//! and style (by their SHA-256, computed once from the page's text, so an edit cannot leave a
//! stale hash), connections to its own origin only (the player also to the known nodes'
//! signaling origins), no framing (`frame-ancestors 'none'`), and `nosniff`.
//! A string that slipped into the page's HTML as markup could then still not run: the pages
//! also build rows from API data with DOM APIs (`textContent`), never inline handlers.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::AppStateRef;

/// One console page and the hashes of its inline code, computed once.
struct Page {
    html: &'static str,
    /// `'sha256-…'` of its inline scripts and of its inline styles.
    hashes: (String, String),
}

impl Page {
    fn new(html: &'static str) -> Page {
        Page {
            html,
            hashes: (
                inline_hashes(html, "script").join(" "),
                inline_hashes(html, "style").join(" "),
            ),
        }
    }

    /// The page with its policy; `connect` is what it may open connections to besides its own
    /// origin.
    fn serve(&self, connect: &str) -> Response {
        // The policy is ASCII (base64 hashes, checked origins and fixed words); a failure would
        // be a bug, and then the strictest policy still goes out rather than none.
        let csp = HeaderValue::from_str(&policy(&self.hashes, connect))
            .unwrap_or(HeaderValue::from_static("default-src 'none'"));
        (
            [
                (CONTENT_SECURITY_POLICY, csp),
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

/// The policy for a page whose inline `<script>` and `<style>` blocks have `hashes`:
/// those, `connect-src` `'self'` plus `connect`, and nothing else.
fn policy((scripts, styles): &(String, String), connect: &str) -> String {
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
    LazyLock::new(|| Page::new(include_str!("../../assets/console.html")));
static PLAYER: LazyLock<Page> =
    LazyLock::new(|| Page::new(include_str!("../../assets/player.html")));
static LIVE: LazyLock<Page> = LazyLock::new(|| Page::new(include_str!("../../assets/live.html")));
static USAGE: LazyLock<Page> = LazyLock::new(|| Page::new(include_str!("../../assets/usage.html")));

pub(super) async fn page() -> Response {
    CONSOLE.serve("")
}

/// The player: log in, pick a phone, stream it over WebRTC, touch and type. It opens a node's
/// signaling WebSocket (`signaling_url`, under the node's `signaling_base_url`), so its policy
/// names the origins of the nodes control knows; media flows over WebRTC, which `connect-src`
/// does not govern. Screenshots and files are `fetch`es to the same node over HTTP(S), so each
/// node's signaling origin is named in its `http(s)` form too.
pub(super) async fn player(State(state): AppStateRef) -> Response {
    let origins = state.store.list_nodes().await.map(|nodes| {
        nodes
            .iter()
            .filter_map(|n| ws_origin(&n.signaling_base_url))
            .flat_map(|ws| {
                let http = ws.replacen("ws", "http", 1);
                [ws, http]
            })
            .collect()
    });
    PLAYER.serve(&policy_origins(origins, "player"))
}

/// Usage: encode minutes per class per hour/day from `GET /v2/{project_id}/stats/transcode`,
/// chart, table and CSV download, all built in the browser.
pub(super) async fn usage() -> Response {
    USAGE.serve("")
}

/// Live: the tenant's VS groups and streams through `/console/vs` (requests signed in the
/// browser with the tenant's key), and one stream played over WebRTC by WHEP from its node. The
/// WHEP offer is a `fetch` to the node's live HTTP origin, so the policy names the origins of
/// the nodes that offer a live edge.
pub(super) async fn live_page(State(state): AppStateRef) -> Response {
    let origins = state.store.vs_live_nodes().await.map(|nodes| {
        nodes
            .iter()
            .filter_map(|(n, _)| http_origin(&n.http_base_url))
            .collect()
    });
    LIVE.serve(&policy_origins(origins, "live"))
}

/// A page's node origins for its policy, each once. When the store fails the page still
/// loads with none: it cannot stream until the store answers again.
fn policy_origins(
    origins: Result<std::collections::BTreeSet<String>, crate::store::StoreError>,
    page: &str,
) -> String {
    match origins {
        Ok(origins) => origins.into_iter().collect::<Vec<_>>().join(" "),
        Err(error) => {
            tracing::error!(%error, page, "listing nodes for a page's policy failed");
            String::new()
        }
    }
}

/// `http(s)://host:port` of a node's live HTTP base URL, under the rules of [`ws_origin`].
fn http_origin(base: &str) -> Option<String> {
    let (scheme, rest) = base.split_once("://")?;
    let ws = match scheme {
        "http" => "ws",
        "https" => "wss",
        _ => return None,
    };
    ws_origin(&format!("{ws}://{rest}")).map(|o| format!("{scheme}{}", &o[ws.len()..]))
}

/// `ws://host:port` of a node's signaling base URL, when it is a well-formed ws/wss URL whose
/// host and port hold only the characters a policy may carry.
fn ws_origin(base: &str) -> Option<String> {
    let (scheme, rest) = base.split_once("://")?;
    if scheme != "ws" && scheme != "wss" {
        return None;
    }
    let authority = rest.split('/').next()?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    (!authority.is_empty() && authority.chars().all(allowed))
        .then(|| format!("{scheme}://{authority}"))
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
        let csp = policy(&Page::new(html).hashes, "ws://10.0.0.2:8081");
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(
            csp.contains(&format!("script-src {};", hash("go()"))),
            "{csp}"
        );
        assert!(
            csp.contains("connect-src 'self' ws://10.0.0.2:8081;"),
            "{csp}"
        );
        assert!(csp.ends_with("frame-ancestors 'none'"), "{csp}");
    }

    /// What reaches each policy from a node's base URL: ws/wss origins the player's (from
    /// `signaling_base_url`), http/https ones the Live page's (from `http_base_url`).
    #[test]
    fn only_clean_origins_reach_the_policies() {
        for (base, ws, http) in [
            ("ws://127.0.0.1:8081", Some("ws://127.0.0.1:8081"), None),
            (
                "wss://node-7.example:443/some/path",
                Some("wss://node-7.example:443"),
                None,
            ),
            ("ws://[::1]:9000", Some("ws://[::1]:9000"), None),
            ("http://127.0.0.1:8081", None, Some("http://127.0.0.1:8081")),
            (
                "https://live-1.example:443/x",
                None,
                Some("https://live-1.example:443"),
            ),
            ("ws://evil; script-src *", None, None),
            ("http://evil; script-src *", None, None),
            ("ws://", None, None),
            ("http://", None, None),
            ("nonsense", None, None),
        ] {
            assert_eq!(ws_origin(base).as_deref(), ws, "{base}");
            assert_eq!(http_origin(base).as_deref(), http, "{base}");
        }
    }

    /// Every page has exactly one inline script and one inline style, both in its policy, and
    /// no inline event handler or style attribute (which hashes would not allow).
    #[test]
    fn every_page_allows_its_own_inline_code_only() {
        for page in [&*CONSOLE, &*PLAYER, &*USAGE, &*LIVE] {
            let csp = policy(&page.hashes, "");
            assert_eq!(inline_hashes(page.html, "script").len(), 1, "{csp}");
            assert_eq!(inline_hashes(page.html, "style").len(), 1, "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            for attribute in [" onclick=", " onload=", " onerror=", " style=\""] {
                assert!(!page.html.contains(attribute), "{attribute} in a page");
            }
        }
    }
}
