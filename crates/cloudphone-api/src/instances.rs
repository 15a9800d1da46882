//! `/v1/instances/*` bodies and query parameters, and the rules that validate them.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::timefmt;

/// `running_status` of ListInstances; defined next to the rule that computes it.
pub use cloudphone_core::instance::RunningStatus;

/// Query of `GET /v1/instances/batch-query` (ListInstances), as received (all strings, so a
/// malformed number becomes `KOOPHONE.API.1000` rather than a framework rejection).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ListInstancesQuery {
    pub page_no: Option<String>,
    pub page_size: Option<String>,
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    pub query_start_time: Option<String>,
    pub query_end_time: Option<String>,
    pub pool_scene_tag: Option<String>,
    /// The seeds' request example spells it this way.
    #[serde(rename = "poolSceneTag")]
    pub pool_scene_tag_camel: Option<String>,
}

/// Where instances run: cloud phones or cloud apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSceneTag {
    CloudPhone,
    CloudApp,
}

impl PoolSceneTag {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolSceneTag::CloudPhone => "CLOUD_PHONE",
            PoolSceneTag::CloudApp => "CLOUD_APP",
        }
    }
}

/// A validated ListInstances query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInstancesFilter {
    /// 1-based page number.
    pub page_no: u32,
    /// 1..=1000 rows per page.
    pub page_size: u32,
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    /// Creation-time window, Unix milliseconds, inclusive.
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
    pub pool_scene_tag: Option<PoolSceneTag>,
}

/// Largest page ListInstances serves.
pub const MAX_PAGE_SIZE: u32 = 1000;

fn parse_positive(name: &str, value: Option<&str>, max: u32) -> Result<u32, ApiError> {
    let raw = value.ok_or_else(|| ApiError::InvalidParameter(format!("{name} is required")))?;
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::InvalidParameter(format!(
            "{name} must be an integer in 1..={max}"
        ))),
    }
}

fn non_empty(
    value: Option<String>,
    name: &str,
    max_len: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.chars().count() > max_len => Err(ApiError::InvalidParameter(format!(
            "{name} is longer than {max_len} characters"
        ))),
        Some(v) => Ok(Some(v)),
    }
}

impl ListInstancesQuery {
    pub fn validate(self) -> Result<ListInstancesFilter, ApiError> {
        let page_no = parse_positive("page_no", self.page_no.as_deref(), u32::MAX)?;
        let page_size = parse_positive("page_size", self.page_size.as_deref(), MAX_PAGE_SIZE)?;
        let parse_time = |value: Option<String>| -> Result<Option<i64>, ApiError> {
            match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => timefmt::parse_to_unix_ms(&v)
                    .map(Some)
                    .ok_or(ApiError::TimeFormat(v)),
            }
        };
        let created_from_ms = parse_time(self.query_start_time)?;
        let created_to_ms = parse_time(self.query_end_time)?;
        if let (Some(from), Some(to)) = (created_from_ms, created_to_ms)
            && to < from
        {
            return Err(ApiError::EndBeforeStart);
        }
        let pool_scene_tag = match self.pool_scene_tag.or(self.pool_scene_tag_camel).as_deref() {
            None | Some("") => None,
            Some("CLOUD_PHONE") => Some(PoolSceneTag::CloudPhone),
            Some("CLOUD_APP") => Some(PoolSceneTag::CloudApp),
            Some(other) => {
                return Err(ApiError::InvalidParameter(format!(
                    "pool_scene_tag must be CLOUD_PHONE or CLOUD_APP, not {other}"
                )));
            }
        };
        Ok(ListInstancesFilter {
            page_no,
            page_size,
            instance_id: non_empty(self.instance_id, "instance_id", 32)?,
            instance_name: non_empty(self.instance_name, "instance_name", 64)?,
            created_from_ms,
            created_to_ms,
            pool_scene_tag,
        })
    }
}

/// One row of ListInstances (seed table 4-68).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRow {
    pub instance_id: String,
    pub instance_name: String,
    pub region: String,
    pub instance_sku: String,
    pub frozen_status: i32,
    pub running_status: i32,
    pub login_status: i32,
    pub assign_status: i32,
    pub assign_user: String,
    pub billing_mode: String,
    pub project_id: String,
    pub project_name: String,
    pub phone_id: String,
    pub member_name: String,
    pub account_name: String,
    pub region_name: String,
    pub region_name_en: String,
    pub backup_status: i32,
    pub backup_time: String,
    pub restore_status: i32,
    pub restore_time: String,
    /// Creation time in the seeds' format; not in the seeds' table, kept for clients that filter by it.
    pub create_time: String,
}

/// `data` of ListInstances (seed table 4-67).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstancePage {
    pub result: Vec<InstanceRow>,
    pub page_no: u32,
    pub page_size: u32,
    pub total_count: u64,
    pub error_code: String,
    pub error_msg: String,
}

/// The whole ListInstances answer: `data`, plus the codes again at the top level, where
/// table 4-69 puts them (see `docs/api-notes.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListInstancesResponse {
    pub data: InstancePage,
    pub error_code: String,
    pub error_msg: String,
}

/// Body of `POST /v1/instances/create` (seed table 4-87). Field names are the seeds' camelCase.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstanceRequest {
    pub os: Option<String>,
    /// The seeds' tables spell it `instanceSkuld` (a misread `Id`); both spellings are accepted.
    #[serde(alias = "instanceSkuld")]
    pub instance_sku_id: Option<String>,
    #[serde(alias = "bandSkuld")]
    pub band_sku_id: Option<String>,
    #[serde(alias = "regionld")]
    pub region_id: Option<String>,
    pub instance_name_prefix: Option<String>,
    pub band_size: Option<f64>,
    pub count: Option<i64>,
    pub charge_param: Option<ChargeParam>,
    pub network: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChargeParam {
    pub charging_mode: Option<i64>,
    pub period_type: Option<i64>,
    pub period_num: Option<i64>,
    pub is_auto_pay: Option<i64>,
    pub is_auto_renew: Option<i64>,
}

/// Largest `count` one order may ask for.
pub const MAX_CREATE_COUNT: u32 = 1500;

/// A validated order.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateOrder {
    pub os: String,
    pub instance_sku_id: String,
    pub band_sku_id: String,
    pub region_id: String,
    pub name_prefix: String,
    pub band_size_mbit: f64,
    pub count: u32,
    pub period_type: PeriodType,
    pub period_num: u32,
}

/// Subscription period unit (`periodType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodType {
    Month,
    Year,
}

fn required_text(value: Option<String>, name: &str, max_len: usize) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.is_empty() && v.chars().count() <= max_len => Ok(v),
        Some(v) if !v.is_empty() => Err(ApiError::InvalidParameter(format!(
            "{name} is longer than {max_len} characters"
        ))),
        _ => Err(ApiError::InvalidParameter(format!("{name} is required"))),
    }
}

impl CreateInstanceRequest {
    pub fn validate(self) -> Result<CreateOrder, ApiError> {
        let os = match self.os.as_deref() {
            Some("AOSP9") | Some("AOSP11") => self.os.clone().unwrap_or_default(),
            _ => return Err(ApiError::OsRequired),
        };
        let instance_sku_id = required_text(self.instance_sku_id, "instanceSkuId", 64)?;
        let band_sku_id = required_text(self.band_sku_id, "bandSkuId", 64)?;
        let region_id = required_text(self.region_id, "regionId", 64)?;
        let name_prefix = required_text(self.instance_name_prefix, "instanceNamePrefix", 14)?;
        if !name_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::InvalidParameter(
                "instanceNamePrefix may hold letters, digits, '-' and '_' only".into(),
            ));
        }
        let band_size_mbit = match self.band_size {
            Some(b) if b.is_finite() && b > 0.0 => b,
            _ => {
                return Err(ApiError::InvalidParameter(
                    "bandSize must be a positive number".into(),
                ));
            }
        };
        let count = match self.count {
            Some(c) if (1..=i64::from(MAX_CREATE_COUNT)).contains(&c) => c as u32,
            _ => {
                return Err(ApiError::InvalidParameter(format!(
                    "count must be an integer in 1..={MAX_CREATE_COUNT}"
                )));
            }
        };
        let charge = self
            .charge_param
            .ok_or_else(|| ApiError::InvalidParameter("chargeParam is required".into()))?;
        if charge.charging_mode != Some(1) {
            return Err(ApiError::InvalidParameter(
                "chargeParam.chargingMode must be 1 (yearly/monthly)".into(),
            ));
        }
        let period_num = charge.period_num.unwrap_or(0);
        let period_type = match charge.period_type {
            Some(2) if (1..=9).contains(&period_num) => PeriodType::Month,
            Some(2) => return Err(ApiError::MonthPeriodRange),
            Some(3) if (1..=3).contains(&period_num) => PeriodType::Year,
            Some(3) => return Err(ApiError::YearPeriodRange),
            _ => {
                return Err(ApiError::InvalidParameter(
                    "chargeParam.periodType must be 2 (month) or 3 (year)".into(),
                ));
            }
        };
        for (name, flag) in [
            ("isAutoPay", charge.is_auto_pay),
            ("isAutoRenew", charge.is_auto_renew),
        ] {
            if !matches!(flag, None | Some(0) | Some(1)) {
                return Err(ApiError::InvalidParameter(format!(
                    "chargeParam.{name} must be 0 or 1"
                )));
            }
        }
        Ok(CreateOrder {
            os,
            instance_sku_id,
            band_sku_id,
            region_id,
            name_prefix,
            band_size_mbit,
            count,
            period_type,
            period_num: period_num as u32,
        })
    }
}

/// `data` of CreateInstance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstanceData {
    pub order_id: String,
    pub instance_infos: Vec<CreatedInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedInstance {
    pub instance_id: String,
    pub instance_name: String,
}

/// The CreateInstance answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateInstanceResponse {
    pub data: CreateInstanceData,
    pub error_code: String,
    pub error_msg: String,
}

/// Name of the n-th (1-based) instance of an order: `prefix-00001`, as in the seeds' example.
pub fn instance_name(prefix: &str, n: u32) -> String {
    format!("{prefix}-{n:05}")
}

/// The bandwidth SKU every order names (`bandSkuId`).
pub const BAND_SKU_ID: &str = "kp.bandwidth";

/// BatchShowSku answer (seed tables 4-78..4-84).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkuResponse {
    pub data: SkuData,
    pub error_code: String,
    pub error_msg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkuData {
    pub band_info: BandInfo,
    pub sku_spec_response_list: Vec<RegionSkus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BandInfo {
    pub id: String,
    pub cbc_sku_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionSkus {
    pub sku_responses: Vec<Sku>,
    pub region_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sku {
    #[serde(rename = "type")]
    pub sku_type: String,
    pub cbc_sku_id: String,
    pub name: String,
    pub calc_spec: String,
    pub storage_spec: String,
    pub spec_desc: String,
    pub spec_desc_en: String,
    pub band_size: String,
    pub charge_mode: i32,
    pub max_resolution: String,
    pub pool_info: PoolInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolInfo {
    pub aosp: Vec<Aosp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Aosp {
    pub version: String,
    pub res_pool_id: String,
    pub id: String,
    pub network: String,
    pub enable: bool,
}

/// What a SKU id means to the scheduler: runtime and screen size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuShape {
    pub runtime: &'static str,
    pub width: u32,
    pub height: u32,
}

/// SKU ids are `kp.<runtime>.<definition>`, e.g. `kp.x11.720p`; the definition is the
/// portrait screen size instances of that SKU get.
pub fn sku_id(runtime: &str, definition: &str) -> String {
    format!("kp.{runtime}.{definition}")
}

/// Parses a SKU id made by [`sku_id`].
pub fn parse_sku_id(id: &str) -> Option<SkuShape> {
    let mut parts = id.split('.');
    let (Some("kp"), Some(runtime), Some(definition), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let runtime = match runtime {
        "x11" => "x11",
        "synthetic" => "synthetic",
        "android" => "android",
        _ => return None,
    };
    let (width, height) = match definition {
        "540p" => (540, 960),
        "720p" => (720, 1280),
        "1080p" => (1080, 1920),
        _ => return None,
    };
    Some(SkuShape {
        runtime,
        width,
        height,
    })
}

/// Definitions every runtime is sold in.
pub const SKU_DEFINITIONS: [&str; 3] = ["540p", "720p", "1080p"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(body: serde_json::Value) -> Result<CreateOrder, ApiError> {
        serde_json::from_value::<CreateInstanceRequest>(body)
            .unwrap()
            .validate()
    }

    fn seed_order() -> serde_json::Value {
        json!({"os": "AOSP9", "instanceSkuld": "kp.x11.720p", "bandSkuld": "kp.bandwidth",
            "regionld": "cn-north-7", "instanceNamePrefix": "koophone", "bandSize": 4, "count": 1,
            "chargeParam": {"chargingMode": 1, "periodType": 2, "periodNum": 1, "isAutoPay": 1,
            "isAutoRenew": 1}, "network": "EIP"})
    }

    #[test]
    fn the_seed_example_validates() {
        let got = order(seed_order()).unwrap();
        assert_eq!(got.instance_sku_id, "kp.x11.720p");
        assert_eq!(got.region_id, "cn-north-7");
        assert_eq!(
            (got.count, got.period_type, got.period_num),
            (1, PeriodType::Month, 1)
        );
    }

    #[test]
    fn create_rules_map_to_their_codes() {
        let cases: [(&str, serde_json::Value, &str); 7] = [
            ("/os", json!("AOSP7"), "KOOPHONE.API.3003"),
            ("/count", json!(1501), "KOOPHONE.API.1000"),
            ("/count", json!(0), "KOOPHONE.API.1000"),
            ("/chargeParam/periodNum", json!(10), "KOOPHONE.API.3006"),
            ("/chargeParam/periodType", json!(4), "KOOPHONE.API.1000"),
            (
                "/instanceNamePrefix",
                json!("a-much-too-long-prefix"),
                "KOOPHONE.API.1000",
            ),
            ("/bandSize", json!(-1), "KOOPHONE.API.1000"),
        ];
        for (pointer, value, code) in cases {
            let mut body = seed_order();
            *body.pointer_mut(pointer).unwrap() = value;
            assert_eq!(order(body).unwrap_err().code(), code, "{pointer}");
        }
        let mut yearly = seed_order();
        yearly["chargeParam"]["periodType"] = json!(3);
        yearly["chargeParam"]["periodNum"] = json!(4);
        assert_eq!(order(yearly).unwrap_err().code(), "KOOPHONE.API.3007");
    }

    fn list(pairs: &[(&str, &str)]) -> Result<ListInstancesFilter, ApiError> {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        serde_json::from_value::<ListInstancesQuery>(serde_json::Value::Object(map))
            .unwrap()
            .validate()
    }

    #[test]
    fn list_query_rules() {
        let ok = list(&[
            ("page_no", "1"),
            ("page_size", "200"),
            ("poolSceneTag", "CLOUD_PHONE"),
        ])
        .unwrap();
        assert_eq!(
            (ok.page_no, ok.page_size, ok.pool_scene_tag),
            (1, 200, Some(PoolSceneTag::CloudPhone))
        );
        assert_eq!(
            list(&[("page_size", "10")]).unwrap_err().code(),
            "KOOPHONE.API.1000"
        );
        assert_eq!(
            list(&[("page_no", "x"), ("page_size", "10")])
                .unwrap_err()
                .code(),
            "KOOPHONE.API.1000"
        );
        assert_eq!(
            list(&[("page_no", "1"), ("page_size", "1001")])
                .unwrap_err()
                .code(),
            "KOOPHONE.API.1000"
        );
        let bad_time = [
            ("page_no", "1"),
            ("page_size", "1"),
            ("query_start_time", "2023-08-15"),
        ];
        assert_eq!(list(&bad_time).unwrap_err().code(), "KOOPHONE.API.5002");
        let reversed = [
            ("page_no", "1"),
            ("page_size", "1"),
            ("query_start_time", "2023-08-15 14:30:45"),
            ("query_end_time", "2023-08-15 14:30:44"),
        ];
        assert_eq!(list(&reversed).unwrap_err().code(), "KOOPHONE.API.5004");
    }

    #[test]
    fn sku_ids_round_trip() {
        for definition in SKU_DEFINITIONS {
            let id = sku_id("x11", definition);
            assert_eq!(parse_sku_id(&id).map(|s| s.runtime), Some("x11"));
        }
        assert_eq!(
            parse_sku_id("kp.x11.720p").map(|s| (s.width, s.height)),
            Some((720, 1280))
        );
        for bad in [
            "kp.x11",
            "kp.vm.720p",
            "kp.x11.4k",
            "xx.x11.720p",
            "kp.x11.720p.z",
        ] {
            assert_eq!(parse_sku_id(bad), None, "{bad}");
        }
    }
}
