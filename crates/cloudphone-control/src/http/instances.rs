//! `/v1/instances/*` handlers: ListInstances, BatchShowSku, CreateInstance.

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use cloudphone_api::error::ApiError;
use cloudphone_api::instances::{
    self as wire, Aosp, BandInfo, CreateInstanceData, CreateInstanceRequest,
    CreateInstanceResponse, InstancePage, InstanceRow, ListInstancesQuery, ListInstancesResponse,
    PoolInfo, RegionSkus, Sku, SkuData, SkuResponse,
};
use cloudphone_api::timefmt;
use cloudphone_core::instance::running_status;
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::video::Definition;

use super::{ApiFailure, ApiQuery, AppStateRef, Caller, TokenCaller, parse_json};
use crate::service::instances;
use crate::store::InstanceListing;

fn row(listing: InstanceListing) -> InstanceRow {
    let node_up = listing.node_status == NodeHealth::Up.as_str();
    let status = running_status(listing.instance.state, node_up);
    let i = listing.instance;
    InstanceRow {
        running_status: status as i32,
        instance_name: i.name,
        region: i.region.clone(),
        instance_sku: i.sku_id,
        frozen_status: 0,
        login_status: 0,
        assign_status: i32::from(i.assign_user.is_some()),
        assign_user: i.assign_user.clone().unwrap_or_default(),
        billing_mode: "1".into(),
        project_id: i.project_id,
        project_name: listing.project_name,
        phone_id: i.instance_id.clone(),
        member_name: i.assign_user.unwrap_or_default(),
        account_name: listing.domain_name,
        region_name: i.region.clone(),
        region_name_en: i.region,
        backup_status: 0,
        backup_time: String::new(),
        restore_status: 0,
        restore_time: String::new(),
        create_time: timefmt::format_unix_ms(i.created_at_ms),
        instance_id: i.instance_id,
    }
}

pub(super) async fn list(
    state: AppStateRef,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListInstancesQuery>,
) -> Result<Response, ApiFailure> {
    let filter = query.validate()?;
    let (listings, total_count) = instances::list(&state, &caller.principal, &filter).await?;
    let mut result: Vec<InstanceRow> = listings.into_iter().map(row).collect();
    super::lifecycle_data::decorate_rows(&state, &mut result).await?;
    let page = InstancePage {
        page_no: filter.page_no,
        page_size: filter.page_size,
        result,
        total_count,
        error_code: "0".into(),
        error_msg: "OK".into(),
    };
    Ok(axum::Json(ListInstancesResponse {
        data: page,
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct SkuQuery {
    #[serde(rename = "type")]
    sku_type: Option<String>,
}

/// Human description of a definition's SKU.
fn sku_entry(runtime: &str, definition: &str) -> Sku {
    // The one SKU size table, which the nodes also enforce (cgroups, data-dir limit).
    let sized = match definition {
        "540p" => Definition::P540,
        "720p" => Definition::P720,
        _ => Definition::P1080,
    }
    .sku_resources();
    let calc = format!("{}vCPUs | {}GB", sized.vcpus, sized.memory_gib);
    let storage = format!("{}GB", sized.storage_gib);
    let resolution = definition.to_uppercase();
    Sku {
        sku_type: "PROFESSIONAL".into(),
        cbc_sku_id: wire::sku_id(runtime, definition),
        name: format!("{runtime}-{definition}"),
        calc_spec: calc.clone(),
        storage_spec: storage.clone(),
        spec_desc: format!("专业版 | {calc} | {storage}存储 | 最高分辨率{resolution}"),
        spec_desc_en: format!(
            "Professional | {calc} | {storage} Storage | {resolution} Max Output"
        ),
        band_size: "2,4,8".into(),
        charge_mode: 0,
        max_resolution: resolution,
        pool_info: PoolInfo {
            aosp: ["AOSP9", "AOSP11"]
                .iter()
                .enumerate()
                .map(|(n, version)| Aosp {
                    version: (*version).into(),
                    res_pool_id: format!("{runtime}-pool"),
                    id: n.to_string(),
                    network: "EIP".into(),
                    enable: true,
                })
                .collect(),
        },
    }
}

/// One region's SKUs: every definition of every runtime its healthy hosts offer.
fn region_skus(region_id: String, runtimes: &[String]) -> RegionSkus {
    RegionSkus {
        sku_responses: runtimes
            .iter()
            .flat_map(|rt| wire::SKU_DEFINITIONS.iter().map(move |d| sku_entry(rt, d)))
            .collect(),
        region_id,
    }
}

/// BatchShowSku: what the registered, healthy hosts can run, per region.
pub(super) async fn skus(
    state: AppStateRef,
    _caller: TokenCaller,
    ApiQuery(query): ApiQuery<SkuQuery>,
) -> Result<Response, ApiFailure> {
    // The seeds make `type` required with "0" its only value; clients that omit it get the same list.
    if !matches!(query.sku_type.as_deref(), None | Some("0")) {
        return Err(ApiError::InvalidParameter("type must be 0 (cloud phone)".into()).into());
    }
    let regions = instances::offered_runtimes(&state)
        .await?
        .into_iter()
        .map(|(region_id, runtimes)| region_skus(region_id, &runtimes))
        .collect();
    let data = SkuData {
        band_info: BandInfo {
            id: "1".into(),
            cbc_sku_id: wire::BAND_SKU_ID.into(),
        },
        sku_spec_response_list: regions,
    };
    Ok(axum::Json(SkuResponse {
        data,
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

/// CreateInstance: validate, then the service places, records and creates the instances.
pub(super) async fn create(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let order = parse_json::<CreateInstanceRequest>(&body)?.validate()?;
    let ordered = instances::create(&state, &caller.principal, order).await?;
    Ok(axum::Json(CreateInstanceResponse {
        data: CreateInstanceData {
            order_id: ordered.order_id,
            instance_infos: ordered.instances,
        },
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}
