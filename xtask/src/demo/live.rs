//! The demo's live edge: a VS tenant opened with the operator key, an RTMP group and one stream
//! made with the tenant's key through control's live API (seed 003), their push and play URLs,
//! and (for `--no-wait`) a short push with one HTTP-FLV play counting bytes.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cloudphone_vs_api::{sign, timefmt};
use serde_json::{Value, json};

use super::{Http, REGION};
use crate::util;

/// The outputs the demo group offers, and so the play URLs the demo prints.
pub(super) const OUT_PROTOCOLS: &[&str] = &["flv", "hls", "rtmp", "webrtc"];
/// How long the demo's play URLs stay valid: a day, so a demo left running keeps working.
const PLAY_EXPIRE_SECS: &str = "86400";

/// An access key pair of the live API.
#[derive(Clone, Debug)]
pub(super) struct Key {
    pub(super) id: String,
    pub(super) secret: String,
}

/// What the demo made on the live edge.
#[derive(Debug)]
pub(super) struct Live {
    /// `http://127.0.0.1:PORT` of control's live API listener.
    pub(super) endpoint: String,
    pub(super) user_id: String,
    pub(super) tenant: Key,
    pub(super) group_id: String,
    pub(super) stream_id: String,
    pub(super) push_url: String,
    /// Output protocol → play URL.
    pub(super) play_urls: BTreeMap<String, String>,
}

impl Live {
    /// The `surveillance` object of `demo.json` plus the group, stream and URLs.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "access_key_id": self.tenant.id,
            "access_key_secret": self.tenant.secret,
            "user_id": self.user_id,
            "group_id": self.group_id,
            "stream_id": self.stream_id,
            "push_url": self.push_url,
            "play_urls": self.play_urls,
        })
    }
}

/// The document's signed GET query for `action` with `params`, signed with `key` at `at_ms`.
pub(super) fn signed_query(
    key: &Key,
    action: &str,
    params: &[(&str, &str)],
    at_ms: i64,
    nonce: &str,
) -> String {
    let mut all: Vec<(String, String)> = [
        ("Format", "JSON"),
        ("Version", "2018-12-12"),
        ("AccessKeyId", key.id.as_str()),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Action", action),
    ]
    .iter()
    .chain(params)
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    all.push(("Timestamp".into(), timefmt::format_unix_ms(at_ms)));
    let signature = sign::rpc_signature(&key.secret, &sign::rpc_string_to_sign("GET", &all));
    all.push(("Signature".into(), signature));
    all.iter()
        .map(|(n, v)| format!("{}={}", sign::percent_encode(n), sign::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One signed call; the answer's JSON when it is a 200, else an error naming its code.
fn call(
    http: &Http,
    endpoint: &str,
    key: &Key,
    action: &str,
    params: &[(&str, &str)],
) -> Result<Value> {
    let query = signed_query(key, action, params, now_ms(), &util::random_uuid());
    let reply = http.get(&format!("{endpoint}/?{query}"), &[])?;
    if reply.status != 200 {
        bail!("{action} answered {}: {}", reply.status, reply.body);
    }
    reply.json()
}

fn text(v: &Value, field: &str, action: &str) -> Result<String> {
    v[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("{action} answered no {field}: {v}"))
}

/// Opens a VS service for the demo with the operator key, then, as that tenant, an RTMP group
/// and one stream, and a play URL of each output. `wait` is how long the stream may wait for
/// a node offering a live edge (its push URL is empty until one announces).
pub(super) fn provision(
    http: &Http,
    endpoint: &str,
    operator: &Key,
    wait: Duration,
) -> Result<Live> {
    let user_id = format!("CIDC-U-{}", util::random_alnum(16).to_ascii_lowercase());
    let opened = call(
        http,
        endpoint,
        operator,
        "CreateMtsService",
        &[("UserId", &user_id)],
    )?;
    let tenant = Key {
        id: text(&opened, "UserAccessKeyId", "CreateMtsService")?,
        secret: text(&opened, "UserAccessKeySecret", "CreateMtsService")?,
    };
    let out = OUT_PROTOCOLS.join(",");
    let group = call(
        http,
        endpoint,
        &tenant,
        "CreateGroup",
        &[
            ("Name", "demo cameras"),
            ("Region", REGION),
            ("InProtocol", "rtmp"),
            ("OutProtocol", &out),
        ],
    )?;
    let group_id = text(&group, "Id", "CreateGroup")?;
    let stream = call(
        http,
        endpoint,
        &tenant,
        "CreateRtmpGroupStreamurl",
        &[("Id", &group_id), ("Name", "demo camera")],
    )?;
    let stream_id = text(&stream, "StreamId", "CreateRtmpGroupStreamurl")?;
    let mut push_url = stream["PushUrl"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + wait;
    while push_url.is_empty() {
        if Instant::now() > deadline {
            bail!("stream {stream_id} got no push URL: no node offers a live edge");
        }
        std::thread::sleep(Duration::from_millis(200));
        let described = call(
            http,
            endpoint,
            &tenant,
            "DescribeStream",
            &[("Id", &stream_id)],
        )?;
        push_url = described["PushUrl"].as_str().unwrap_or_default().to_owned();
    }
    // One play key for all of the demo's URLs, random per run.
    let auth_key = util::random_alnum(24);
    let mut play_urls = BTreeMap::new();
    for protocol in OUT_PROTOCOLS {
        let answer = call(
            http,
            endpoint,
            &tenant,
            "DescribeStreamURL",
            &[
                ("Id", &stream_id),
                ("OutProtocol", protocol),
                ("AuthKey", &auth_key),
                ("Expire", PLAY_EXPIRE_SECS),
            ],
        )?;
        play_urls.insert(
            (*protocol).to_owned(),
            text(&answer, "Url", "DescribeStreamURL")?,
        );
    }
    Ok(Live {
        endpoint: endpoint.to_owned(),
        user_id,
        tenant,
        group_id,
        stream_id,
        push_url,
        play_urls,
    })
}

/// A GStreamer test pattern (H.264 in FLV) pushed to `push_url`, ready to paste. The URL is
/// single-quoted for the shell (it has `?` and `&`-free but `-` heavy auth keys).
pub(super) fn gst_push_command(push_url: &str) -> String {
    format!(
        "gst-launch-1.0 -e videotestsrc is-live=true pattern=ball \\\n  \
         ! video/x-raw,width=640,height=360,framerate=30/1 \\\n  \
         ! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse \\\n  \
         ! flvmux streamable=true ! rtmp2sink location='{push_url}'"
    )
}

/// The same push with ffmpeg.
pub(super) fn ffmpeg_push_command(push_url: &str) -> String {
    format!(
        "ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=30 \\\n  \
         -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -pix_fmt yuv420p \\\n  \
         -f flv '{push_url}'"
    )
}

/// The push of [`gst_push_command`] as a child process (no shell), for the smoke check.
pub(super) fn spawn_push(push_url: &str, log: &std::path::Path) -> Result<Child> {
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse \
         ! flvmux streamable=true ! rtmp2sink location={push_url}"
    );
    let out = std::fs::File::create(log)?;
    Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("cannot run gst-launch-1.0")
}

/// Reads the HTTP-FLV play URL until `want` bytes came (an FLV header, metadata, sequence
/// headers and frames) or `timeout` passes; 404 (nobody publishes yet) is retried. Returns
/// the bytes read.
pub(super) fn flv_bytes(url: &str, want: usize, timeout: Duration) -> Result<usize> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match agent.get(url).call() {
            Ok(resp) if resp.status() == 200 => {
                let mut reader = resp.into_body().into_reader();
                let mut buf = [0u8; 16 * 1024];
                let mut total = 0;
                let mut ended = String::from("the stream ended");
                while total < want && Instant::now() < deadline {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) => {
                            ended = format!("reading failed: {e}");
                            break;
                        }
                    }
                }
                if total >= want {
                    return Ok(total);
                }
                last = format!("{ended} after {total} bytes");
            }
            Ok(resp) => last = format!("answered {}", resp.status()),
            Err(e) => last = format!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "no {want} bytes of FLV from {url} in {} s ({last})",
        timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signer is the document's: its worked example (read as GET) gives its signature.
    #[test]
    fn the_signed_query_carries_the_documents_signature() {
        let key = Key {
            id: "testid".into(),
            secret: "testsecret".into(),
        };
        let at = 1_551_312_000_000; // 2019-02-28T00:00:00Z
        let query = signed_query(
            &key,
            "DescribeGroup",
            &[],
            at,
            "c2fe8fbb-2977-4414-8d39-348d02419c1c",
        );
        assert!(
            query.ends_with("&Signature=sgILSN6tpSSOFF3I1NKD%2B%2Fz0Nos%3D"),
            "{query}"
        );
        assert!(
            query.contains("Timestamp=2019-02-28T00%3A00%3A00Z"),
            "{query}"
        );
    }

    #[test]
    fn push_commands_quote_the_url() {
        let url = "rtmp://127.0.0.1:1935/live/1624428150544871?auth_key=4102444800-0-0-abc";
        assert!(gst_push_command(url).ends_with(&format!("rtmp2sink location='{url}'")));
        assert!(ffmpeg_push_command(url).ends_with(&format!("-f flv '{url}'")));
    }
}
