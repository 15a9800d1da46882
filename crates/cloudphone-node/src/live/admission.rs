//! Which pushes and plays this node accepts: control's table of streams, and the pure rules that
//! check an `/{app}/{id}` request and its `auth_key` against it (time is an input).
//!
//! The table lives in memory only (part 1 of issue 15): control sends the whole set with
//! `SyncLiveStreams` each time it opens the node's report stream, so a restarted node admits
//! nothing until control has reconnected, which is the safe side.

use std::collections::HashMap;

use cloudphone_core::play_auth::{self, PlayAuthError};

/// An output a group may allow (its `OutProtocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Rtmp,
    Flv,
    Hls,
    Webrtc,
}

impl Output {
    /// The names control sends in `LiveStream.out_protocols`; unknown names are ignored.
    pub(crate) fn parse(name: &str) -> Option<Output> {
        match name.to_ascii_lowercase().as_str() {
            "rtmp" => Some(Output::Rtmp),
            "flv" => Some(Output::Flv),
            "hls" => Some(Output::Hls),
            "webrtc" => Some(Output::Webrtc),
            _ => None,
        }
    }
}

/// One stream control says this node may serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamRule {
    /// The document's stream Id: the stream key of the push URL.
    pub(crate) stream_id: String,
    /// The group's App: the first path segment of every URL.
    pub(crate) app: String,
    /// The owner, for logs and metering.
    pub(crate) tenant_id: String,
    pub(crate) group_id: String,
    /// False while forbidden, stopped, halted or suspended: nothing is served.
    pub(crate) admitted: bool,
    /// The outputs players may use.
    pub(crate) outputs: Vec<Output>,
    /// What push URLs are signed with.
    pub(crate) push_key: String,
    /// What play URLs may be signed with.
    pub(crate) play_keys: Vec<String>,
}

/// Why a push or play is refused. [`Refusal::NotFound`] is a 404 to an HTTP player, every other
/// case a 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no such stream on this node")]
    NotFound,
    #[error("auth_key refused: {0}")]
    Auth(PlayAuthError),
    #[error("the stream is not admitted (forbidden, stopped, or its group halted)")]
    NotAdmitted,
    #[error("the stream's group does not allow this output")]
    OutputNotAllowed,
}

/// Control's streams on this node, by stream id.
#[derive(Default)]
pub(crate) struct Admission {
    streams: HashMap<String, StreamRule>,
}

impl Admission {
    /// Replaces the whole table (SyncLiveStreams).
    pub(crate) fn replace(&mut self, rules: Vec<StreamRule>) {
        self.streams = rules
            .into_iter()
            .map(|r| (r.stream_id.clone(), r))
            .collect();
    }

    /// Adds or changes one stream (PutLiveStream).
    pub(crate) fn put(&mut self, rule: StreamRule) {
        self.streams.insert(rule.stream_id.clone(), rule);
    }

    /// Drops one stream (RemoveLiveStream); true when it was known.
    pub(crate) fn remove(&mut self, stream_id: &str) -> bool {
        self.streams.remove(stream_id).is_some()
    }

    /// True while `stream_id` may keep a publisher.
    pub(crate) fn admits(&self, stream_id: &str) -> bool {
        self.streams.get(stream_id).is_some_and(|r| r.admitted)
    }

    /// A push to `/{app}/{id}` with `auth_key`, signed with the stream's push key over that URI.
    pub(crate) fn check_publish(
        &self,
        app: &str,
        id: &str,
        auth_key: Option<&str>,
        now_unix: i64,
    ) -> Result<&StreamRule, Refusal> {
        let rule = self.known(app, id)?;
        let uri = format!("/{app}/{id}");
        play_auth::verify(
            &uri,
            auth_key.unwrap_or_default(),
            &[rule.push_key.as_str()],
            now_unix,
        )
        .map_err(Refusal::Auth)?;
        if !rule.admitted {
            return Err(Refusal::NotAdmitted);
        }
        Ok(rule)
    }

    /// A play request, its `auth_key` signed with any play key over its `uri`.
    pub(crate) fn check_play(
        &self,
        play: &PlayRequest<'_>,
        now_unix: i64,
    ) -> Result<&StreamRule, Refusal> {
        let rule = self.known(play.app, play.id)?;
        let keys: Vec<&str> = rule.play_keys.iter().map(String::as_str).collect();
        play_auth::verify(play.uri, play.auth_key.unwrap_or_default(), &keys, now_unix)
            .map_err(Refusal::Auth)?;
        if !rule.admitted {
            return Err(Refusal::NotAdmitted);
        }
        if !rule.outputs.contains(&play.output) {
            return Err(Refusal::OutputNotAllowed);
        }
        Ok(rule)
    }

    /// The stream, when it exists under this app. Another app's stream is "not found", so a
    /// URL cannot probe which ids exist elsewhere.
    fn known(&self, app: &str, id: &str) -> Result<&StreamRule, Refusal> {
        self.streams
            .get(id)
            .filter(|r| r.app == app)
            .ok_or(Refusal::NotFound)
    }
}

/// A player asking for `/{app}/{id}` through `output`. `uri` is what its `auth_key` signs: the
/// request's path (`/{app}/{id}.flv`), or the playlist's for HLS segments, or the offer's for a
/// WHEP session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlayRequest<'a> {
    pub(crate) app: &'a str,
    pub(crate) id: &'a str,
    pub(crate) output: Output,
    pub(crate) uri: &'a str,
    pub(crate) auth_key: Option<&'a str>,
}

/// Splits an RTMP stream key or app name as OBS, ffmpeg and GStreamer send it (`ID?auth_key=…`)
/// into the name and its `auth_key` parameter, if any.
pub(crate) fn split_query(name: &str) -> (&str, Option<String>) {
    match name.split_once('?') {
        Some((name, query)) => (name, auth_key_of(query)),
        None => (name, None),
    }
}

/// The `auth_key` parameter of a URL query (percent-decoded).
pub(crate) fn auth_key_of(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "auth_key")
        .map(|(_, v)| v.into_owned())
}

/// The stream the live tests use: FLV and RTMP allowed, play keys `old` and `play`, push key
/// `push`.
#[cfg(test)]
pub(crate) fn test_rule(admitted: bool) -> StreamRule {
    StreamRule {
        stream_id: "1624428150544871".into(),
        app: "live".into(),
        tenant_id: "t".into(),
        group_id: "g".into(),
        admitted,
        outputs: vec![Output::Flv, Output::Rtmp],
        push_key: "push".into(),
        play_keys: vec!["old".into(), "play".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::test_rule as rule;
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn table(admitted: bool) -> Admission {
        let mut a = Admission::default();
        a.put(rule(admitted));
        a
    }

    fn push_key(uri: &str, key: &str, expires: i64) -> String {
        play_auth::sign(uri, key, expires, "0", "0")
    }

    #[test]
    fn publish_needs_the_stream_its_app_an_admission_and_the_push_key() {
        let uri = "/live/1624428150544871";
        let good = push_key(uri, "push", 4_000_000_000);
        let a = table(true);
        let check = |a: &Admission, app, id, key: Option<&str>| {
            a.check_publish(app, id, key, NOW)
                .map(|r| r.stream_id.clone())
        };
        assert_eq!(
            check(&a, "live", "1624428150544871", Some(&good)),
            Ok("1624428150544871".into())
        );
        assert_eq!(
            check(&a, "other", "1624428150544871", Some(&good)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            check(&a, "live", "9999", Some(&good)),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            check(&a, "live", "1624428150544871", None),
            Err(Refusal::Auth(PlayAuthError::Malformed))
        );
        // A play key does not push.
        let play = push_key(uri, "play", 4_000_000_000);
        assert_eq!(
            check(&a, "live", "1624428150544871", Some(&play)),
            Err(Refusal::Auth(PlayAuthError::Mismatch))
        );
        let expired = push_key(uri, "push", NOW - 1);
        assert_eq!(
            check(&a, "live", "1624428150544871", Some(&expired)),
            Err(Refusal::Auth(PlayAuthError::Expired))
        );
        assert_eq!(
            check(&table(false), "live", "1624428150544871", Some(&good)),
            Err(Refusal::NotAdmitted)
        );
    }

    #[test]
    fn play_needs_a_play_key_over_the_request_uri_and_an_allowed_output() {
        let a = table(true);
        let flv = "/live/1624428150544871.flv";
        let signed = push_key(flv, "old", NOW + 60);
        let check = |a: &Admission, output, uri, key: &str| {
            let play = PlayRequest {
                app: "live",
                id: "1624428150544871",
                output,
                uri,
                auth_key: Some(key),
            };
            a.check_play(&play, NOW).map(drop)
        };
        assert_eq!(check(&a, Output::Flv, flv, &signed), Ok(()));
        assert_eq!(
            check(&a, Output::Flv, flv, &push_key(flv, "push", NOW + 60)),
            Err(Refusal::Auth(PlayAuthError::Mismatch)),
            "the push key does not play"
        );
        assert_eq!(
            check(&a, Output::Flv, "/live/1624428150544871.m3u8", &signed),
            Err(Refusal::Auth(PlayAuthError::Mismatch)),
            "signed for another URI"
        );
        let hls = "/live/1624428150544871.m3u8";
        assert_eq!(
            check(&a, Output::Hls, hls, &push_key(hls, "play", NOW + 60)),
            Err(Refusal::OutputNotAllowed)
        );
        assert_eq!(
            check(&table(false), Output::Flv, flv, &signed),
            Err(Refusal::NotAdmitted)
        );
    }

    #[test]
    fn sync_replaces_put_changes_remove_drops() {
        let mut a = table(true);
        assert!(a.admits("1624428150544871"));
        a.put(rule(false));
        assert!(!a.admits("1624428150544871"));
        a.replace(vec![]);
        assert!(
            !a.remove("1624428150544871"),
            "gone after a sync without it"
        );
        a.replace(vec![rule(true)]);
        assert!(a.remove("1624428150544871"));
        assert!(!a.remove("1624428150544871"));
    }

    #[test]
    fn stream_keys_carry_their_auth_key_after_a_question_mark() {
        assert_eq!(
            split_query("1624428150544871?auth_key=1-0-0-ab&x=1"),
            ("1624428150544871", Some("1-0-0-ab".into()))
        );
        assert_eq!(split_query("1624428150544871"), ("1624428150544871", None));
        assert_eq!(split_query("live?x=1"), ("live", None));
        assert_eq!(
            auth_key_of("auth_key=1-a%2Db-0-ff"),
            Some("1-a-b-0-ff".into())
        );
    }
}
