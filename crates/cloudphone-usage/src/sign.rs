//! Request signatures of the two official SDKs, verified over the request exactly as received.
//!
//! Both are "canonical request → hash → HMAC" schemes:
//! - **Huawei** `SDK-HMAC-SHA256` (huaweicloudsdkcore's `Signer`): the key is the secret itself;
//!   the canonical URI always ends in `/`; query pairs are sorted by (key, value) and encoded with
//!   only `A-Za-z0-9-_.~` left bare; every header the client lists in `SignedHeaders` is signed
//!   (the Python SDK lists `user-agent` too); the date is `X-Sdk-Date`.
//! - **Volcengine** `HMAC-SHA256` (volcengine's `SignerV4`): the key is derived from the secret,
//!   the date, region and service; the body hash travels in `X-Content-Sha256` and is recomputed
//!   here, so an altered body is refused even if the header was left alone.
//!
//! The secret is needed to verify an HMAC, so callers keep it (encrypted at rest, see
//! `docs/usage.md`); this module never logs or formats it.

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Largest accepted difference between the signing time and now: 15 minutes.
pub const MAX_SKEW_MS: i64 = 15 * 60_000;

/// Everything of a request a signature covers, as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path, still percent-encoded as sent.
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// Header names (any case) and values, in arrival order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl RequestParts<'_> {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a signature was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("no Authorization header")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("the signing date header is missing or malformed")]
    BadDate,
    #[error("the request was signed more than 15 minutes away from now")]
    Stale,
    #[error("header {0} must be signed")]
    NotSigned(&'static str),
    #[error("signed header {0} is absent from the request")]
    SignedHeaderAbsent(String),
    #[error("X-Content-Sha256 does not match the body")]
    BodyHash,
    #[error("the signature does not match")]
    Mismatch,
}

/// Unreserved characters (RFC 3986) stay bare; everything else is percent-encoded. This is
/// Python's `quote(s, safe='~')` and `quote(s, safe='-_.~')` alike.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Python's `quote(path)`: unreserved plus `/`.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

fn encode(text: &str, set: &'static AsciiSet) -> String {
    utf8_percent_encode(text, set).to_string()
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The raw query as decoded (key, value) pairs in arrival order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Compares the expected MAC with the presented hex signature in constant time.
fn check_signature(key: &[u8], data: &[u8], presented_hex: &str) -> Result<(), SignError> {
    let presented = hex::decode(presented_hex).map_err(|_| SignError::Mismatch)?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| SignError::Mismatch)?;
    mac.update(data);
    mac.verify_slice(&presented)
        .map_err(|_| SignError::Mismatch)
}

/// Parses the SDKs' basic date `YYYYMMDDThhmmssZ` to Unix milliseconds.
pub fn parse_basic_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let month = time::Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
        .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(s).ok()?,
    )
    .ok()?;
    let dt = time::PrimitiveDateTime::new(date, t).assume_utc();
    Some(dt.unix_timestamp() * 1000)
}

/// The request's date header `name`: present, within [`MAX_SKEW_MS`] of `now_ms`, and among
/// the signed headers (an unsigned date could be replaced to replay an old request).
fn signed_date(
    req: &RequestParts<'_>,
    signed_headers: &[String],
    name: &'static str,
    now_ms: i64,
) -> Result<String, SignError> {
    let text = req.header(name).ok_or(SignError::BadDate)?.trim();
    let at = parse_basic_date(text).ok_or(SignError::BadDate)?;
    if (now_ms - at).abs() > MAX_SKEW_MS {
        return Err(SignError::Stale);
    }
    if !signed_headers.iter().any(|h| h == name) {
        return Err(SignError::NotSigned(name));
    }
    Ok(text.to_string())
}

/// Whether the request's Authorization header names `algorithm` (e.g. [`huawei::ALGORITHM`]):
/// whether it carries that kind of signature at all.
pub fn names_algorithm(req: &RequestParts<'_>, algorithm: &str) -> bool {
    req.header("authorization")
        .is_some_and(|a| a.trim_start().starts_with(algorithm))
}

/// Splits the request's `Authorization: ALGO k1=v1, k2=v2, …` into its fields.
fn auth_fields<'a>(
    req: &'a RequestParts<'_>,
    algorithm: &str,
) -> Result<Vec<(&'a str, &'a str)>, SignError> {
    let header = req.header("authorization").ok_or(SignError::Missing)?;
    let rest = header
        .trim()
        .strip_prefix(algorithm)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(SignError::Malformed("unknown algorithm"))?;
    rest.split(',')
        .map(|field| {
            field
                .trim()
                .split_once('=')
                .ok_or(SignError::Malformed("field without ="))
        })
        .collect()
}

fn field<'a>(fields: &[(&'a str, &'a str)], name: &'static str) -> Result<&'a str, SignError> {
    fields
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .filter(|v| !v.is_empty())
        .ok_or(SignError::Malformed(name))
}

/// Query pairs in the order given, each side percent-encoded, as `k=v&…`.
fn canonical_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k, UNRESERVED), encode(v, UNRESERVED)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `name:value\n` for each signed header, with the value as `value` makes it of the trimmed
/// header; a signed header the request lacks is an error.
fn canonical_headers(
    req: &RequestParts<'_>,
    signed_headers: &[String],
    value: impl Fn(&str, &str) -> String,
) -> Result<String, SignError> {
    let mut headers = String::new();
    for name in signed_headers {
        let raw = req
            .header(name)
            .ok_or_else(|| SignError::SignedHeaderAbsent(name.clone()))?;
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&value(name, raw.trim()));
        headers.push('\n');
    }
    Ok(headers)
}

fn signed_header_list(text: &str) -> Vec<String> {
    text.split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Huawei `SDK-HMAC-SHA256`.
pub mod huawei {
    use super::*;

    pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
    const EMPTY_HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The fields of `Authorization: SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Authorization {
        pub access_key: String,
        pub signed_headers: Vec<String>,
        pub signature: String,
    }

    pub fn parse(req: &RequestParts<'_>) -> Result<Authorization, SignError> {
        let fields = auth_fields(req, ALGORITHM)?;
        Ok(Authorization {
            access_key: field(&fields, "Access")?.to_string(),
            signed_headers: signed_header_list(field(&fields, "SignedHeaders")?),
            signature: field(&fields, "Signature")?.to_string(),
        })
    }

    /// The canonical request the SDK signs.
    pub fn canonical_request(
        req: &RequestParts<'_>,
        signed_headers: &[String],
    ) -> Result<String, SignError> {
        let segments: Vec<String> = decode(req.path)
            .split('/')
            .map(|s| encode(s, UNRESERVED))
            .collect();
        let mut uri = segments.join("/");
        if !uri.ends_with('/') {
            uri.push('/');
        }
        let mut pairs = query_pairs(req.query);
        pairs.sort();
        let query = canonical_query(&pairs);
        let headers = canonical_headers(req, signed_headers, |_, value| value.to_string())?;
        let payload = if req.body.is_empty() {
            EMPTY_HASH.to_string()
        } else if let Some(declared) = req.header("x-sdk-content-sha256") {
            // The SDK declares UNSIGNED-PAYLOAD for non-JSON bodies; any other value is a
            // digest it claims, which must then be the body's.
            if declared != "UNSIGNED-PAYLOAD" && declared != sha256_hex(req.body) {
                return Err(SignError::BodyHash);
            }
            declared.to_string()
        } else {
            sha256_hex(req.body)
        };
        // `headers` ends in a newline of its own, as the SDK's canonical headers do.
        Ok(format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method.to_ascii_uppercase(),
            uri,
            query,
            headers,
            signed_headers.join(";"),
            payload
        ))
    }

    /// Verifies the signature with `secret`, and that it was made within 15 min of `now_ms`.
    pub fn verify(
        req: &RequestParts<'_>,
        auth: &Authorization,
        secret: &str,
        now_ms: i64,
    ) -> Result<(), SignError> {
        let date = signed_date(req, &auth.signed_headers, "x-sdk-date", now_ms)?;
        let canonical = canonical_request(req, &auth.signed_headers)?;
        let to_sign = format!("{ALGORITHM}\n{date}\n{}", sha256_hex(canonical.as_bytes()));
        check_signature(secret.as_bytes(), to_sign.as_bytes(), &auth.signature)
    }

    /// Signs like the SDK does (tests and our own clients): returns the Authorization value.
    pub fn sign(
        req: &RequestParts<'_>,
        ak: &str,
        secret: &str,
        signed: &[String],
    ) -> Result<String, SignError> {
        let date = req.header("x-sdk-date").ok_or(SignError::BadDate)?;
        let canonical = canonical_request(req, signed)?;
        let to_sign = format!("{ALGORITHM}\n{date}\n{}", sha256_hex(canonical.as_bytes()));
        Ok(format!(
            "{ALGORITHM} Access={ak}, SignedHeaders={}, Signature={}",
            signed.join(";"),
            hex::encode(hmac(secret.as_bytes(), to_sign.as_bytes()))
        ))
    }
}

/// Volcengine `HMAC-SHA256` (signature V4 style).
pub mod volc {
    use super::*;

    pub const ALGORITHM: &str = "HMAC-SHA256";

    /// The fields of `Authorization: HMAC-SHA256 Credential=AK/date/region/service/request, …`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Authorization {
        pub access_key: String,
        /// `yyyymmdd` of the credential scope.
        pub date: String,
        pub region: String,
        pub service: String,
        pub signed_headers: Vec<String>,
        pub signature: String,
    }

    pub fn parse(req: &RequestParts<'_>) -> Result<Authorization, SignError> {
        let fields = auth_fields(req, ALGORITHM)?;
        let credential = field(&fields, "Credential")?;
        let parts: Vec<&str> = credential.split('/').collect();
        let [ak, date, region, service, terminator] = parts.as_slice() else {
            return Err(SignError::Malformed("Credential"));
        };
        if *terminator != "request" || ak.is_empty() || date.len() != 8 {
            return Err(SignError::Malformed("Credential"));
        }
        Ok(Authorization {
            access_key: (*ak).to_string(),
            date: (*date).to_string(),
            region: (*region).to_string(),
            service: (*service).to_string(),
            signed_headers: signed_header_list(field(&fields, "SignedHeaders")?),
            signature: field(&fields, "Signature")?.to_string(),
        })
    }

    /// The canonical request `SignerV4` hashes; the body hash is recomputed from the body.
    pub fn canonical_request(
        req: &RequestParts<'_>,
        signed_headers: &[String],
    ) -> Result<String, SignError> {
        let body_hash = sha256_hex(req.body);
        if let Some(declared) = req.header("x-content-sha256")
            && !declared.trim().eq_ignore_ascii_case(&body_hash)
        {
            return Err(SignError::BodyHash);
        }
        let uri = encode(&decode(req.path), PATH);
        let uri = if uri.is_empty() { "/".to_string() } else { uri };
        let mut pairs = query_pairs(req.query);
        // Sorted by key; repeated keys keep their order, as the SDK's dict does.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let query = canonical_query(&pairs);
        let headers = canonical_headers(req, signed_headers, |name, value| {
            // The SDK signs `host` without a default port.
            let bare = (name == "host")
                .then(|| {
                    value
                        .strip_suffix(":80")
                        .or_else(|| value.strip_suffix(":443"))
                })
                .flatten();
            bare.unwrap_or(value).to_string()
        })?;
        Ok([
            req.method.to_ascii_uppercase(),
            uri,
            query,
            headers,
            signed_headers.join(";"),
            body_hash,
        ]
        .join("\n"))
    }

    fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
        let k_date = hmac(secret.as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, service.as_bytes());
        hmac(&k_service, b"request")
    }

    fn string_to_sign(auth: &Authorization, date: &str, canonical: &str) -> String {
        format!(
            "{ALGORITHM}\n{date}\n{}/{}/{}/request\n{}",
            auth.date,
            auth.region,
            auth.service,
            sha256_hex(canonical.as_bytes())
        )
    }

    /// Verifies the signature with `secret`, and that it was made within 15 min of `now_ms`.
    pub fn verify(
        req: &RequestParts<'_>,
        auth: &Authorization,
        secret: &str,
        now_ms: i64,
    ) -> Result<(), SignError> {
        let date = signed_date(req, &auth.signed_headers, "x-date", now_ms)?;
        if !date.starts_with(&auth.date) {
            return Err(SignError::Malformed("Credential date differs from X-Date"));
        }
        let canonical = canonical_request(req, &auth.signed_headers)?;
        let to_sign = string_to_sign(auth, &date, &canonical);
        let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
        check_signature(&key, to_sign.as_bytes(), &auth.signature)
    }

    /// Signs like `SignerV4` does (tests): returns the Authorization value.
    pub fn sign(
        req: &RequestParts<'_>,
        ak: &str,
        secret: &str,
        region: &str,
        signed: &[String],
    ) -> Result<String, SignError> {
        let date = req.header("x-date").ok_or(SignError::BadDate)?.to_string();
        let auth = Authorization {
            access_key: ak.to_string(),
            date: date.get(..8).ok_or(SignError::BadDate)?.to_string(),
            region: region.to_string(),
            service: "live".to_string(),
            signed_headers: signed.to_vec(),
            signature: String::new(),
        };
        let canonical = canonical_request(req, signed)?;
        let to_sign = string_to_sign(&auth, &date, &canonical);
        let key = signing_key(secret, &auth.date, region, "live");
        Ok(format!(
            "{ALGORITHM} Credential={ak}/{}/{region}/live/request, SignedHeaders={}, Signature={}",
            auth.date,
            signed.join(";"),
            hex::encode(hmac(&key, to_sign.as_bytes()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_dates_parse_and_bad_ones_do_not() {
        assert_eq!(parse_basic_date("19700101T000001Z"), Some(1000));
        assert_eq!(
            parse_basic_date("20200818T072040Z"),
            Some(1_597_735_240_000)
        );
        for bad in [
            "2020081T072040Z",
            "20201318T072040Z",
            "20200818 072040Z",
            "20200818T072040",
            "+0200818T072040Z",
        ] {
            assert_eq!(parse_basic_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_encoding_matches_python_quote() {
        assert_eq!(
            encode("2020-08-18T07:20:40Z", UNRESERVED),
            "2020-08-18T07%3A20%3A40Z"
        );
        assert_eq!(encode("a b+~", UNRESERVED), "a%20b%2B~");
        assert_eq!(encode("/a b/", PATH), "/a%20b/");
        assert_eq!(
            query_pairs("a=1&b&c=%3A"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), ":".into())
            ]
        );
    }
}
