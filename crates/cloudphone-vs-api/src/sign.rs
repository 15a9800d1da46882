//! The signatures real clients of this API send, verified byte for byte as they compute them:
//!
//! - **RPC HMAC-SHA1** (the document's "签名机制", `SignatureVersion` 1.0): every parameter but
//!   `Signature`, sorted by name, names and values percent-encoded (RFC 3986 unreserved kept,
//!   space as `%20`), joined with `&`; string to sign `METHOD&%2F&percentEncode(that)`; key
//!   `secret + "&"`; Base64. The document sends it as GET; the official SDK with
//!   `signature_algorithm='v2'` sends the same as POST with spaces as `+` on the wire, so the
//!   server decodes the parameters first ([`decode_form`]) and re-encodes them canonically.
//! - **`ACS3-HMAC-SHA256`** (the SDK's default), read from `alibabacloud_tea_openapi`'s
//!   `utils.py` (`get_authorization`, `get_canonical_query_string`,
//!   `get_canonicalized_headers`): canonical request = method, path (`/`), the query sorted by
//!   name with names as sent and values percent-encoded, every signed header as
//!   `name:value\n` (lower-case names, trimmed values, repeated headers' values sorted and
//!   joined with `,`), the `;`-joined signed header list, and the hex SHA-256 of the body;
//!   string to sign `ACS3-HMAC-SHA256\n` + hex SHA-256 of it; signature = hex HMAC-SHA256
//!   keyed with the secret itself. `Authorization: ACS3-HMAC-SHA256
//!   Credential=AK,SignedHeaders=a;b,Signature=hex`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Everything but RFC 3986's unreserved characters is encoded.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The ACS3 scheme's name, as it opens `Authorization` and the string to sign.
pub const ACS3: &str = "ACS3-HMAC-SHA256";

/// The document's `percentEncode`: UTF-8, RFC 3986 unreserved characters kept, everything
/// else `%XY` in upper-case hex (so space is `%20`, `*` is `%2A`, `~` stays).
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, ENCODED).to_string()
}

/// A query string or form body decoded as `application/x-www-form-urlencoded` (`+` is a
/// space, `%XY` a byte): the parameters as the client meant them, whichever encoding it used.
/// A value that is not UTF-8 after decoding keeps its replacement characters (and then cannot
/// match any signature).
pub fn decode_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(name), decode_component(value))
        })
        .collect()
}

fn decode_component(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// `name=value` pairs, already encoded, sorted and joined with `&` (both schemes' canonical
/// query).
fn sorted_query<N: Ord + std::fmt::Display>(mut pairs: Vec<(N, String)>) -> String {
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The RPC string to sign for `method` over `params` (any `Signature` among them is left out).
pub fn rpc_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let canonical = sorted_query(
        params
            .iter()
            .filter(|(name, _)| name != "Signature")
            .map(|(name, value)| (percent_encode(name), percent_encode(value)))
            .collect(),
    );
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode("/"),
        percent_encode(&canonical)
    )
}

/// The RPC signature (Base64 HMAC-SHA1 keyed with `secret&`) of a string to sign.
pub fn rpc_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is the RPC signature of `params` sent with `method` under `secret`.
pub fn verify_rpc(method: &str, params: &[(String, String)], secret: &str, given: &str) -> bool {
    let expected = rpc_signature(secret, &rpc_string_to_sign(method, params));
    constant_time_eq(expected.as_bytes(), given.as_bytes())
}

/// What an ACS3 `Authorization` header names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acs3Authorization {
    pub access_key_id: String,
    /// Lower-case header names, in the order the client listed them.
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
}

/// Parses `ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`; `None` for
/// anything else.
pub fn parse_acs3_authorization(value: &str) -> Option<Acs3Authorization> {
    let rest = value.trim().strip_prefix(ACS3)?.trim_start();
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value.to_string()),
            "SignedHeaders" => signed = Some(value.to_string()),
            "Signature" => signature = Some(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    let signed_headers: Vec<String> = signed?
        .split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    Some(Acs3Authorization {
        access_key_id: credential.filter(|c| !c.is_empty())?,
        signed_headers,
        signature: signature?,
    })
}

/// A request as the ACS3 verifier needs it.
#[derive(Debug, Clone, Copy)]
pub struct Acs3Request<'a> {
    pub method: &'a str,
    /// The request path (`/`).
    pub path: &'a str,
    /// The query's parameters, decoded.
    pub query: &'a [(String, String)],
    /// Every header received: lower-case names, values as received.
    pub headers: &'a [(String, String)],
    /// The body as received.
    pub body: &'a [u8],
}

/// Lower-case hex SHA-256 of `bytes` (the payload hash and `x-acs-content-sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical request the SDK signs, over the headers `signed_headers` names.
pub fn acs3_canonical_request(request: &Acs3Request<'_>, signed_headers: &[String]) -> String {
    let query = sorted_query(
        request
            .query
            .iter()
            .map(|(name, value)| (name.as_str(), percent_encode(value)))
            .collect(),
    );
    let mut names: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut canonical_headers = String::new();
    for name in &names {
        let mut values: Vec<&str> = request
            .headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.trim())
            .collect();
        values.sort_unstable();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        request.method.to_ascii_uppercase(),
        names.join(";"),
        sha256_hex(request.body)
    )
}

/// The hex ACS3 signature of `request` under `secret`.
pub fn acs3_signature(
    request: &Acs3Request<'_>,
    signed_headers: &[String],
    secret: &str,
) -> String {
    let canonical = acs3_canonical_request(request, signed_headers);
    let string_to_sign = format!("{ACS3}\n{}", sha256_hex(canonical.as_bytes()));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `authorization` signs `request` under `secret`. The signed headers must include
/// the ones that carry the Action, the time and the nonce, so none of them can be swapped.
pub fn verify_acs3(
    request: &Acs3Request<'_>,
    authorization: &Acs3Authorization,
    secret: &str,
) -> bool {
    let required = [
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
    ];
    if !required
        .iter()
        .all(|name| authorization.signed_headers.iter().any(|h| h == name))
    {
        return false;
    }
    let expected = acs3_signature(request, &authorization.signed_headers, secret);
    constant_time_eq(expected.as_bytes(), authorization.signature.as_bytes())
}

/// Equal-length comparison without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The document's worked example (签名机制, 示例).
    fn document_example() -> Vec<(String, String)> {
        pairs(&[
            ("Format", "JSON"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("Action", "DescribeGroup"),
            ("AccessKeyId", "testid"),
            ("SignatureNonce", "c2fe8fbb-2977-4414-8d39-348d02419c1c"),
            ("Version", "2018-12-12"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2019-02-28T00:00:00Z"),
        ])
    }

    #[test]
    fn the_documents_worked_example_verifies() {
        let params = document_example();
        assert_eq!(
            rpc_string_to_sign("GET", &params),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeGroup%26Format%3DJSON%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3Dc2fe8fbb-2977-4414-8d39-348d02419c1c%26SignatureVersion%3D1.0%26Timestamp%3D2019-02-28T00%253A00%253A00Z%26Version%3D2018-12-12"
        );
        assert_eq!(
            rpc_signature("testsecret", &rpc_string_to_sign("GET", &params)),
            "sgILSN6tpSSOFF3I1NKD+/z0Nos="
        );
        // The signed URL of the document, decoded as the server receives it.
        let url = "Format=JSON&SignatureMethod=HMAC-SHA1&Action=DescribeGroup&AccessKeyId=testid&SignatureNonce=c2fe8fbb-2977-4414-8d39-348d02419c1c&Version=2018-12-12&SignatureVersion=1.0&Timestamp=2019-02-28T00:00:00Z&Signature=sgILSN6tpSSOFF3I1NKD%2B%2Fz0Nos%3D";
        let received = decode_form(url);
        let given = &received.iter().find(|(n, _)| n == "Signature").unwrap().1;
        assert!(verify_rpc("GET", &received, "testsecret", given));
        assert!(!verify_rpc("GET", &received, "wrongsecret", given));
        assert!(!verify_rpc("POST", &received, "testsecret", given));
    }

    #[test]
    fn spaces_sent_as_plus_or_percent_20_sign_the_same() {
        let plus = decode_form("Name=a+b&Action=CreateGroup");
        let pct = decode_form("Name=a%20b&Action=CreateGroup");
        assert_eq!(plus, pct);
        assert!(rpc_string_to_sign("POST", &plus).contains("Name%3Da%2520b"));
        assert_eq!(percent_encode("a*b~c é"), "a%2Ab~c%20%C3%A9");
    }

    #[test]
    fn acs3_matches_the_sdks_canonical_request() {
        let query = pairs(&[("Name", "a b"), ("Id", "1")]);
        let headers = pairs(&[
            ("host", "127.0.0.1:9"),
            ("x-acs-action", "CreateGroup"),
            ("x-acs-version", "2018-12-12"),
            ("x-acs-date", "2019-02-28T00:00:00Z"),
            ("x-acs-signature-nonce", "n1"),
            ("x-acs-content-sha256", &sha256_hex(b"")),
        ]);
        let request = Acs3Request {
            method: "POST",
            path: "/",
            query: &query,
            headers: &headers,
            body: b"",
        };
        let signed: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
        let canonical = acs3_canonical_request(&request, &signed);
        assert_eq!(
            canonical,
            format!(
                "POST\n/\nId=1&Name=a%20b\nhost:127.0.0.1:9\nx-acs-action:CreateGroup\n\
                 x-acs-content-sha256:{e}\nx-acs-date:2019-02-28T00:00:00Z\n\
                 x-acs-signature-nonce:n1\nx-acs-version:2018-12-12\n\n\
                 host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n{e}",
                e = sha256_hex(b"")
            )
        );
        let signature = acs3_signature(&request, &signed, "sk");
        let header = format!(
            "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders={},Signature={signature}",
            signed.join(";")
        );
        let auth = parse_acs3_authorization(&header).unwrap();
        assert_eq!(auth.access_key_id, "AK1");
        assert!(verify_acs3(&request, &auth, "sk"));
        assert!(!verify_acs3(&request, &auth, "other"));
        let tampered = pairs(&[("Name", "a c"), ("Id", "1")]);
        let changed = Acs3Request {
            query: &tampered,
            ..request
        };
        assert!(!verify_acs3(&changed, &auth, "sk"));
        // A signature that leaves the nonce out is refused whatever it signs.
        let partial: Vec<String> = signed
            .iter()
            .filter(|h| *h != "x-acs-signature-nonce")
            .cloned()
            .collect();
        let weak = Acs3Authorization {
            signature: acs3_signature(&request, &partial, "sk"),
            signed_headers: partial,
            access_key_id: "AK1".into(),
        };
        assert!(!verify_acs3(&request, &weak, "sk"));
        assert_eq!(parse_acs3_authorization("HMAC-SHA1 x"), None);
    }
}
