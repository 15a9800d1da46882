//! InstallApp (seed 001 §4.4.1): the request body, its rules, and the answer's shape.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::management::{CmdJob, validate_instance_ids};

/// Largest package, in MB (seed: 2G).
pub const MAX_APP_SIZE_MB: f64 = 2048.0;

/// A field the tables type as String that the seed's example sends as a number.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Loose {
    Text(String),
    Number(f64),
}

impl Loose {
    pub fn text(&self) -> String {
        match self {
            Loose::Text(t) => t.clone(),
            Loose::Number(n) => n.to_string(),
        }
    }
}

/// The request body (table 4-126).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct InstallAppRequest {
    pub fast_install: Option<Loose>,
    pub object_name: Option<String>,
    pub file_name: Option<String>,
    pub object_version: Option<String>,
    pub object_size: Option<Loose>,
    pub biz_type: Option<String>,
    pub content_type: Option<String>,
    pub content_md5: Option<String>,
    pub install_package_url: Option<String>,
    pub instance_id_list: Vec<String>,
}

/// Bytes in the order's MB (the 2G limit is 2048 of them, as the node's 2 GiB cap).
const BYTES_PER_MB: f64 = 1024.0 * 1024.0;

/// The package sizes an order's `object_size` admits, in bytes, both ends included.
///
/// `object_size` is a size in MB ("示例:120,单位 MB"), so it is rounded by whoever wrote it,
/// and nothing says how. A package matches when its size is within one unit of the declared
/// value's last digit: "120" admits more than 119 and less than 121 MB, "1.25" more than 1.24
/// and less than 1.26 MB, whether the client rounded, floored or took the ceiling. A package a
/// unit or more away from the order is not the package ordered (62017, like an MD5 mismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min_bytes: u64,
    pub max_bytes: u64,
}

impl SizeRange {
    /// The range `text` (a number of MB, already parsed as `mb`) admits.
    fn declared(text: &str, mb: f64) -> Self {
        let text = text.trim();
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i32>().unwrap_or(0)),
            None => (text, 0),
        };
        let decimals = mantissa
            .split_once('.')
            .map_or(0, |(_, fraction)| fraction.len());
        let decimals = i32::try_from(decimals).unwrap_or(i32::MAX);
        let unit = 10f64.powi(exponent.saturating_sub(decimals));
        let low = (mb - unit) * BYTES_PER_MB;
        let high = (mb + unit) * BYTES_PER_MB;
        // Strictly inside (low, high), in whole bytes.
        let min_bytes = if low < 0.0 { 0 } else { low.floor() as u64 + 1 };
        let max_bytes = (high.ceil() as u64).saturating_sub(1);
        Self {
            min_bytes,
            max_bytes,
        }
    }
}

/// A validated installation order.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOrder {
    pub fast: bool,
    pub object_name: String,
    pub file_name: String,
    pub object_version: String,
    pub size_mb: f64,
    /// The package sizes `object_size` admits, checked on the node as the package downloads.
    pub size: SizeRange,
    pub md5: String,
    pub url: String,
    pub instance_ids: Vec<String>,
}

fn text(value: Option<String>, name: &str, max: usize, required: bool) -> Result<String, ApiError> {
    let value = value.unwrap_or_default();
    if required && value.is_empty() {
        return Err(ApiError::InvalidParameter(format!("{name} is required")));
    }
    if value.chars().count() > max {
        return Err(ApiError::InvalidParameter(format!(
            "{name} is longer than {max} characters"
        )));
    }
    Ok(value)
}

impl InstallAppRequest {
    pub fn validate(self) -> Result<InstallOrder, ApiError> {
        let fast = match self.fast_install.as_ref().map(Loose::text).as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return Err(ApiError::FastInstallInvalid),
        };
        let size_text = self
            .object_size
            .as_ref()
            .map(Loose::text)
            .unwrap_or_default();
        let size_mb = match size_text.trim().parse::<f64>() {
            Ok(mb) if mb.is_finite() && mb >= 0.0 => mb,
            _ => return Err(ApiError::AppSizeNotNumber(size_text)),
        };
        if size_mb > MAX_APP_SIZE_MB {
            return Err(ApiError::AppTooLarge);
        }
        let biz_type = text(self.biz_type, "biz_type", 64, true)?;
        if biz_type != "apk" {
            return Err(ApiError::InvalidParameter(
                "biz_type: only apk is supported".into(),
            ));
        }
        text(self.content_type, "content_type", 64, true)?;
        let md5 = text(self.content_md5, "content_md5", 200, false)?;
        // Not required to look like an MD5 (the seed's own example sends "fghfg"): whatever is
        // given is compared with the download's digest, and a mismatch fails that job.
        let url = text(self.install_package_url, "install_package_url", 2000, true)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::InvalidParameter(
                "install_package_url must be http(s)".into(),
            ));
        }
        validate_instance_ids("instance_id_list", &self.instance_id_list)?;
        Ok(InstallOrder {
            fast,
            object_name: text(self.object_name, "object_name", 100, true)?,
            file_name: text(self.file_name, "file_name", 100, true)?,
            object_version: text(self.object_version, "object_version", 100, true)?,
            size_mb,
            size: SizeRange::declared(&size_text, size_mb),
            md5: md5.to_ascii_lowercase(),
            url,
            instance_ids: self.instance_id_list,
        })
    }
}

/// `data.data` of the answer (tables 4-128, 4-129).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstallAppData {
    pub data: InstallAppResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstallAppResult {
    pub cmd_jobs: Vec<CmdJob>,
    pub task_id: String,
}

/// Install task ids carry this prefix so GetTask callers can tell them from command tasks.
pub const INSTALL_TASK_PREFIX: &str = "ZGCA";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_body() -> serde_json::Value {
        json!({"fast_install": 1, "object_name": "com.tencent.mm", "file_name": "meituan.apk",
            "object_version": "8.0.58", "object_size": 120, "biz_type": "apk",
            "content_type": "application/octet-stream", "content_md5": "",
            "install_package_url": "https://example.invalid/a.apk", "instance_id_list": ["XvH39QVW", "Vpp8rC4Y"]})
    }

    fn check(pointer: &str, value: serde_json::Value) -> Result<InstallOrder, ApiError> {
        let mut body = seed_body();
        *body.pointer_mut(pointer).unwrap() = value;
        serde_json::from_value::<InstallAppRequest>(body)
            .unwrap()
            .validate()
    }

    #[test]
    fn the_seed_example_validates_with_numbers_or_strings() {
        let order = check("/object_size", json!("120")).unwrap();
        assert_eq!(
            (order.fast, order.size_mb, order.instance_ids.len()),
            (true, 120.0, 2)
        );
        assert!(check("/fast_install", json!("0")).is_ok());
    }

    impl SizeRange {
        fn admits(&self, bytes: u64) -> bool {
            (self.min_bytes..=self.max_bytes).contains(&bytes)
        }
    }

    /// `object_size` admits sizes within one unit of its last digit, in 2^20-byte MB.
    #[test]
    fn declared_sizes_admit_one_unit_either_side() {
        const MB: u64 = 1 << 20;
        let size = |v: serde_json::Value| check("/object_size", v).unwrap().size;
        // (declared, admitted sizes, refused sizes)
        let cases: [(serde_json::Value, &[u64], &[u64]); 6] = [
            (
                json!(120),
                &[119 * MB + 1, 120 * MB, 121 * MB - 1],
                &[119 * MB, 121 * MB],
            ),
            (
                json!("120"),
                &[119 * MB + 1, 121 * MB - 1],
                &[119 * MB, 121 * MB],
            ),
            (
                json!("1.25"),
                &[1_300_235, 1_321_205],
                &[1_300_234, 1_321_206],
            ),
            (json!("0"), &[0, 1, MB - 1], &[MB]),
            (json!("1.2e2"), &[111 * MB, 129 * MB], &[110 * MB, 130 * MB]),
            // Six decimals: to the byte, give or take one.
            (json!("0.000954"), &[1000, 1001], &[999, 1002]),
        ];
        for (declared, admitted, refused) in cases {
            let range = size(declared.clone());
            for bytes in admitted {
                assert!(range.admits(*bytes), "{declared} admits {bytes}: {range:?}");
            }
            for bytes in refused {
                assert!(
                    !range.admits(*bytes),
                    "{declared} refuses {bytes}: {range:?}"
                );
            }
        }
    }

    #[test]
    fn rules_map_to_codes() {
        let code = |p: &str, v: serde_json::Value| check(p, v).unwrap_err().code();
        assert_eq!(code("/fast_install", json!(2)), "KOOPHONE.API.3008");
        assert_eq!(code("/object_size", json!("big")), "KOOPHONE.API.62006");
        assert_eq!(code("/object_size", json!(2049)), "KOOPHONE.API.62015");
        assert_eq!(code("/biz_type", json!("ipa")), "KOOPHONE.API.1000");
        assert_eq!(
            code("/install_package_url", json!("file:///etc/shadow")),
            "KOOPHONE.API.1000"
        );
        assert!(
            check("/content_md5", json!("fghfg")).is_ok(),
            "the seed's placeholder is accepted"
        );
        assert_eq!(
            code("/content_md5", json!("x".repeat(201))),
            "KOOPHONE.API.1000"
        );
        assert_eq!(
            code("/object_name", json!("x".repeat(101))),
            "KOOPHONE.API.1000"
        );
    }
}
