//! Signed live URLs: Alibaba's `auth_key` "Type A", which live players and encoders already carry.
//!
//! `auth_key = {timestamp}-{rand}-{uid}-{md5hash}` with
//! `md5hash = md5("{uri}-{timestamp}-{rand}-{uid}-{key}")` in lower-case hex, where `uri` is the
//! URL's path (`/live/1624428150544871.flv`) and `timestamp` the Unix second the URL expires.
//! Control signs (push URLs and `DescribeStreamURL`), the node verifies; both are pure here.

use md5::{Digest, Md5};

/// Why an `auth_key` was refused (every case is a 403 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlayAuthError {
    #[error("auth_key is missing or not timestamp-rand-uid-md5hash")]
    Malformed,
    #[error("auth_key has expired")]
    Expired,
    #[error("auth_key does not match any key of this stream")]
    Mismatch,
}

/// The `auth_key` value for `uri`, valid until `expires_unix` (inclusive).
pub fn sign(uri: &str, key: &str, expires_unix: i64, rand: &str, uid: &str) -> String {
    let hash = digest(uri, expires_unix, rand, uid, key);
    format!("{expires_unix}-{rand}-{uid}-{hash}")
}

/// Checks `auth_key` for `uri` against any of `keys` at `now_unix`.
pub fn verify(
    uri: &str,
    auth_key: &str,
    keys: &[&str],
    now_unix: i64,
) -> Result<(), PlayAuthError> {
    // rand and uid are free text without '-' in Alibaba's scheme; the hash is always last.
    let mut parts = auth_key.splitn(4, '-');
    let (Some(ts), Some(rand), Some(uid), Some(hash)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlayAuthError::Malformed);
    };
    let expires: i64 = ts.parse().map_err(|_| PlayAuthError::Malformed)?;
    if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PlayAuthError::Malformed);
    }
    if now_unix > expires {
        return Err(PlayAuthError::Expired);
    }
    let given = hash.to_ascii_lowercase();
    let matches = keys
        .iter()
        .any(|key| constant_time_eq(&digest(uri, expires, rand, uid, key), &given));
    if matches {
        Ok(())
    } else {
        Err(PlayAuthError::Mismatch)
    }
}

fn digest(uri: &str, expires: i64, rand: &str, uid: &str, key: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(format!("{uri}-{expires}-{rand}-{uid}-{key}").as_bytes());
    hex::encode(md5.finalize())
}

/// Equal-length comparison without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "/live/1624428150544871.flv";

    #[test]
    fn matches_alibabas_published_construction() {
        // md5("/live/1624428150544871.flv-1700000000-0-0-secret") computed independently with
        // `printf '%s' ... | md5sum`.
        let signed = sign(URI, "secret", 1_700_000_000, "0", "0");
        assert_eq!(signed, "1700000000-0-0-c4c54343707029c045a6911aa5b4a2b4");
        assert_eq!(verify(URI, &signed, &["secret"], 1_700_000_000), Ok(()));
    }

    #[test]
    fn refuses_expired_wrong_key_other_uri_and_garbage() {
        let signed = sign(URI, "k1", 100, "r4nd", "7");
        assert_eq!(verify(URI, &signed, &["k1"], 100), Ok(()));
        assert_eq!(
            verify(URI, &signed, &["k1"], 101),
            Err(PlayAuthError::Expired)
        );
        assert_eq!(
            verify(URI, &signed, &["k2"], 50),
            Err(PlayAuthError::Mismatch)
        );
        assert_eq!(verify(URI, &signed, &["k2", "k1"], 50), Ok(()));
        assert_eq!(
            verify("/live/other.flv", &signed, &["k1"], 50),
            Err(PlayAuthError::Mismatch)
        );
        assert_eq!(verify(URI, &signed, &[], 50), Err(PlayAuthError::Mismatch));
        for bad in [
            "",
            "100-0-0",
            "x-0-0-0123456789abcdef0123456789abcdef",
            "100-0-0-zz",
        ] {
            assert_eq!(
                verify(URI, bad, &["k1"], 50),
                Err(PlayAuthError::Malformed),
                "{bad}"
            );
        }
    }
}
