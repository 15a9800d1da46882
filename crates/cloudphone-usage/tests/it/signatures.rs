//! Signature verification against requests the official SDKs signed themselves
//! (`tests/vectors/sdk.json`, captured by `tests/sdk/capture.py` with huaweicloudsdkcore 3.1.219 and
//! volcengine 1.0.229), and the refusals: wrong key, stale date, altered query/body.

use cloudphone_usage::sign::{self, RequestParts, SignError, huawei, volc};
use serde_json::Value;

struct Captured {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn set_header(&mut self, name: &str, value: &str) {
        for (k, v) in &mut self.headers {
            if k.eq_ignore_ascii_case(name) {
                *v = value.to_string();
            }
        }
    }
}

/// The key pair and the captured request `index` (0: Huawei, 1: Volcengine).
fn vector(index: usize) -> (String, String, Captured) {
    let v: Value = serde_json::from_str(include_str!("../vectors/sdk.json")).unwrap();
    let request = v["requests"]
        .as_array()
        .unwrap()
        .get(index)
        .map(|r| Captured {
            method: r["method"].as_str().unwrap().into(),
            path: r["path"].as_str().unwrap().into(),
            query: r["query"].as_str().unwrap().into(),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
                .collect(),
            body: r["body"].as_str().unwrap().as_bytes().to_vec(),
        })
        .unwrap();
    (
        v["ak"].as_str().unwrap().into(),
        v["sk"].as_str().unwrap().into(),
        request,
    )
}

fn signed_at(c: &Captured, header: &str) -> i64 {
    sign::parse_basic_date(c.parts().header(header).unwrap()).unwrap()
}

const MIN: i64 = 60_000;

/// `verify(now_ms)` accepts a signature up to 15 minutes either side of its date `at`, and
/// refuses it as stale a second past that.
fn fresh_within_15_minutes(verify: impl Fn(i64) -> Result<(), SignError>, at: i64) {
    for skew in [0, 15 * MIN, -15 * MIN] {
        assert_eq!(verify(at + skew), Ok(()), "{skew}");
    }
    for skew in [15 * MIN + 1000, -15 * MIN - 1000] {
        assert_eq!(verify(at + skew), Err(SignError::Stale), "{skew}");
    }
}

/// A request with only these headers, no query and no body.
fn bare<'a>(method: &'a str, headers: &'a [(String, String)]) -> RequestParts<'a> {
    RequestParts {
        method,
        path: "/",
        query: "",
        headers,
        body: b"",
    }
}

#[test]
fn huawei_sdk_request_verifies_within_15_minutes_only() {
    let (ak, sk, c) = vector(0);
    let auth = huawei::parse(&c.parts()).unwrap();
    assert_eq!(auth.access_key, ak);
    assert!(auth.signed_headers.contains(&"user-agent".to_string()));
    assert!(auth.signed_headers.contains(&"x-project-id".to_string()));
    fresh_within_15_minutes(
        |now| huawei::verify(&c.parts(), &auth, &sk, now),
        signed_at(&c, "x-sdk-date"),
    );
}

#[test]
fn huawei_refuses_wrong_key_and_altered_requests() {
    let (_, sk, mut c) = vector(0);
    let auth = huawei::parse(&c.parts()).unwrap();
    let at = signed_at(&c, "x-sdk-date");
    let wrong = format!("{sk}x");
    assert_eq!(
        huawei::verify(&c.parts(), &auth, &wrong, at),
        Err(SignError::Mismatch)
    );
    let original = c.query.clone();
    c.query = original.replace("stream=inst-1", "stream=inst-2");
    assert_eq!(
        huawei::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::Mismatch)
    );
    c.query = format!("{original}&extra=1");
    assert_eq!(
        huawei::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::Mismatch)
    );
    c.query = original;
    c.path = c.path.replace("0f1e", "0f1f");
    assert_eq!(
        huawei::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::Mismatch)
    );
    c.path = c.path.replace("0f1f", "0f1e");
    // Query order on the wire does not matter: the canonical form sorts it.
    let mut pairs: Vec<&str> = c.query.split('&').collect();
    pairs.reverse();
    c.query = pairs.join("&");
    assert_eq!(huawei::verify(&c.parts(), &auth, &sk, at), Ok(()));
    // A signed header changed (the date moved by a second) breaks it too.
    let moved = sign::parse_basic_date("20000101T000001Z").unwrap();
    c.set_header("x-sdk-date", "20000101T000001Z");
    assert_eq!(
        huawei::verify(&c.parts(), &auth, &sk, moved),
        Err(SignError::Mismatch)
    );
}

#[test]
fn huawei_our_signer_reproduces_the_sdk_and_an_unsigned_date_is_refused() {
    let (ak, sk, c) = vector(0);
    let auth = huawei::parse(&c.parts()).unwrap();
    let ours = huawei::sign(&c.parts(), &ak, &sk, &auth.signed_headers).unwrap();
    assert_eq!(Some(ours.as_str()), c.parts().header("authorization"));
    let without_date: Vec<String> = auth
        .signed_headers
        .iter()
        .filter(|h| *h != "x-sdk-date")
        .cloned()
        .collect();
    let forged = huawei::Authorization {
        signed_headers: without_date,
        ..auth
    };
    assert_eq!(
        huawei::verify(&c.parts(), &forged, &sk, signed_at(&c, "x-sdk-date")),
        Err(SignError::NotSigned("x-sdk-date"))
    );
}

#[test]
fn volcengine_sdk_request_verifies_within_15_minutes_only() {
    let (ak, sk, c) = vector(1);
    let auth = volc::parse(&c.parts()).unwrap();
    assert_eq!(auth.access_key, ak);
    assert_eq!(
        (auth.region.as_str(), auth.service.as_str()),
        ("cn-north-1", "live")
    );
    fresh_within_15_minutes(
        |now| volc::verify(&c.parts(), &auth, &sk, now),
        signed_at(&c, "x-date"),
    );
    let ours = volc::sign(&c.parts(), &ak, &sk, "cn-north-1", &auth.signed_headers).unwrap();
    assert_eq!(Some(ours.as_str()), c.parts().header("authorization"));
}

#[test]
fn volcengine_refuses_wrong_key_and_altered_body_or_query() {
    let (_, sk, mut c) = vector(1);
    let auth = volc::parse(&c.parts()).unwrap();
    let at = signed_at(&c, "x-date");
    assert_eq!(
        volc::verify(&c.parts(), &auth, "nope", at),
        Err(SignError::Mismatch)
    );
    let original_body = c.body.clone();
    c.body = String::from_utf8(original_body.clone())
        .unwrap()
        .replace("cloudphone", "otherapp")
        .into_bytes();
    assert_eq!(
        volc::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::BodyHash)
    );
    // Even with a matching X-Content-Sha256, the signature covers it.
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&c.body))
    };
    c.set_header("x-content-sha256", &digest);
    assert_eq!(
        volc::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::Mismatch)
    );
    c.body = original_body;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&c.body))
    };
    c.set_header("x-content-sha256", &digest);
    assert_eq!(volc::verify(&c.parts(), &auth, &sk, at), Ok(()));
    c.query = c.query.replace("2023-01-01", "2020-08-01");
    assert_eq!(
        volc::verify(&c.parts(), &auth, &sk, at),
        Err(SignError::Mismatch)
    );
}

fn malformed<T>(parsed: Result<T, SignError>) -> bool {
    matches!(parsed, Err(SignError::Malformed(_)))
}

#[test]
fn malformed_authorization_headers_are_refused() {
    let headers = |v: &str| vec![("Authorization".to_string(), v.to_string())];
    for value in [
        "SDK-HMAC-SHA256",
        "SDK-HMAC-SHA256 Access=a",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=x, Signature=",
        "Basic abc",
    ] {
        assert!(
            malformed(huawei::parse(&bare("GET", &headers(value)))),
            "{value}"
        );
    }
    for value in [
        "HMAC-SHA256 Credential=ak/20260101/r/live, SignedHeaders=x-date, Signature=00",
        "HMAC-SHA256 Credential=ak/2026010/r/live/request, SignedHeaders=x-date, Signature=00",
    ] {
        assert!(
            malformed(volc::parse(&bare("POST", &headers(value)))),
            "{value}"
        );
    }
    assert_eq!(huawei::parse(&bare("GET", &[])), Err(SignError::Missing));
}
