//! `Secret`: a configured string (token, TURN secret, password) that `Debug` never prints, so a
//! config or a request logged with `{:?}` cannot leak it. Reading it takes an explicit
//! `expose()`, which makes every use easy to find.

use serde::Deserialize;

/// A secret string: deserialised like a plain string, printed by `Debug` as `<redacted>`
/// (or `<empty>`, so an operator can still see that it is unset).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: for comparing, signing or sending, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value_but_not_whether_it_is_set() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "<empty>");
        assert_eq!(secret.expose(), "hunter2");
        let parsed: Secret = serde_json::from_str("\"s3cr3t\"").unwrap();
        assert_eq!(parsed.expose(), "s3cr3t");
    }
}
