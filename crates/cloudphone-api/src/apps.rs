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

/// A validated installation order.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOrder {
    pub fast: bool,
    pub object_name: String,
    pub file_name: String,
    pub object_version: String,
    pub size_mb: f64,
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
