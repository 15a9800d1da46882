//! ICE servers handed to viewers: STUN URLs as they are, TURN URLs with time-limited REST
//! credentials in coturn's `use-auth-secret` scheme.
//!
//! # Credentials
//! `username = "<expiry-unix-seconds>:<device_id>"`, `credential = base64(HMAC-SHA1(secret,
//! username))`. coturn recomputes the HMAC with its `static-auth-secret` and refuses the
//! username once the expiry has passed, so the node never has to tell coturn about a session.
//!
//! # String form
//! StartSession (and so GetDeviceToken) carries ICE servers as strings: `stun:host:port` and
//! `turn:<username>:<credential>@host:port[?transport=udp]`. The username itself contains a
//! `:`, and the base64 credential never contains `:` or `@`, so a reader splits the part
//! before the **last** `@` at its **last** `:` (as `parse_ice_server` in the tests does).

use base64::Engine as _;
use cloudphone_daemon::Secret;
use cloudphone_signaling::IceServer;
use hmac::{Hmac, Mac};

/// Everything needed to build a viewer's ICE server list.
#[derive(Debug, Clone, Default)]
pub(crate) struct IceSettings {
    pub stun_urls: Vec<String>,
    /// `turn:` / `turns:` URLs without credentials, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret`. Never logged.
    pub turn_secret: Secret,
    /// Longest lifetime of issued TURN credentials (a session's grant may cut it shorter).
    pub turn_ttl_secs: u64,
}

/// coturn REST credentials for `device_id`, valid until the Unix second `expires_unix`.
pub(crate) fn turn_credentials(
    secret: &str,
    device_id: &str,
    expires_unix: u64,
) -> (String, String) {
    let username = format!("{expires_unix}:{device_id}");
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty credential
    // (refused by coturn) rather than panic.
    let credential = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, credential)
}

impl IceSettings {
    /// The viewer's ICE servers in browser shape. The TURN credential expires `turn_ttl_secs`
    /// after `now_unix`, but never after `not_after_unix` (the session's device token expiry):
    /// a relay must not outlive the right to watch.
    pub(crate) fn servers(
        &self,
        device_id: &str,
        now_unix: u64,
        not_after_unix: u64,
    ) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.turn_urls.is_empty() && !self.turn_secret.is_empty() {
            let expires = now_unix
                .saturating_add(self.turn_ttl_secs)
                .min(not_after_unix);
            let (username, credential) =
                turn_credentials(self.turn_secret.expose(), device_id, expires);
            out.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        out
    }
}

/// The string form (see the module docs) of a server list.
pub(crate) fn to_strings(servers: &[IceServer]) -> Vec<String> {
    let mut out = Vec::new();
    for server in servers {
        for url in &server.urls {
            match (&server.username, &server.credential, url.split_once(':')) {
                (Some(user), Some(cred), Some((scheme, rest))) => {
                    out.push(format!("{scheme}:{user}:{cred}@{rest}"))
                }
                _ => out.push(url.clone()),
            }
        }
    }
    out
}

/// Parses one string of the form [`to_strings`] writes back into a server: how a client reads
/// the list; the node itself only writes it.
#[cfg(test)]
fn parse_ice_server(s: &str) -> Option<IceServer> {
    let (scheme, rest) = s.split_once(':')?;
    match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, cred) = userinfo.rsplit_once(':')?;
            Some(IceServer {
                urls: vec![format!("{scheme}:{hostport}")],
                username: Some(user.to_owned()),
                credential: Some(cred.to_owned()),
            })
        }
        None => Some(IceServer {
            urls: vec![s.to_owned()],
            username: None,
            credential: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturn_rest_scheme() {
        // Reference value computed with: printf '%s' '1700003600:dev-1' |
        //   openssl dgst -sha1 -hmac s3cret -binary | base64
        let (user, cred) = turn_credentials("s3cret", "dev-1", 1_700_003_600);
        assert_eq!(user, "1700003600:dev-1");
        let expected = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "printf '%s' '1700003600:dev-1' | openssl dgst -sha1 -hmac s3cret -binary | base64",
            )
            .output()
            .unwrap();
        assert_eq!(cred, String::from_utf8_lossy(&expected.stdout).trim());
    }

    #[test]
    fn string_form_round_trips() {
        let settings = IceSettings {
            stun_urls: vec!["stun:10.0.0.1:3478".into()],
            turn_urls: vec!["turn:10.0.0.1:3478?transport=udp".into()],
            turn_secret: "k".into(),
            turn_ttl_secs: 60,
        };
        let servers = settings.servers("dev:1", 100, u64::MAX);
        let strings = to_strings(&servers);
        assert_eq!(strings[0], "stun:10.0.0.1:3478");
        assert!(strings[1].starts_with("turn:160:dev:1:"));
        assert!(strings[1].ends_with("@10.0.0.1:3478?transport=udp"));
        let parsed: Vec<IceServer> = strings.iter().filter_map(|s| parse_ice_server(s)).collect();
        assert_eq!(parsed, servers);
        assert!(!format!("{settings:?}").contains("\"k\""));
        assert!(format!("{settings:?}").contains("<redacted>"));
    }

    #[test]
    fn no_turn_without_secret() {
        let settings = IceSettings {
            turn_urls: vec!["turn:h:1".into()],
            ..Default::default()
        };
        assert!(settings.servers("d", 0, u64::MAX).is_empty());
    }

    #[test]
    fn a_turn_credential_expires_no_later_than_the_device_token() {
        let settings = IceSettings {
            turn_urls: vec!["turn:10.0.0.1:3478".into()],
            turn_secret: "k".into(),
            turn_ttl_secs: 86_400,
            ..Default::default()
        };
        let expiry = |servers: Vec<IceServer>| -> u64 {
            let username = servers[0].username.clone().unwrap();
            username.split(':').next().unwrap().parse().unwrap()
        };
        // A one-hour token cuts the 24 h TTL to its own expiry...
        assert_eq!(expiry(settings.servers("d", 1_000, 4_600)), 4_600);
        // ...and a token outliving the TTL leaves it as configured.
        assert_eq!(expiry(settings.servers("d", 1_000, 900_000)), 87_400);
    }
}
