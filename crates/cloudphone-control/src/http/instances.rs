//! `/v1/instances/*` handlers: ListInstances, BatchShowSku, CreateInstance.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::response::{IntoResponse, Response};
use cloudphone_api::error::{ApiError, ErrorBody};
use cloudphone_api::instances::{
    self as wire, Aosp, BandInfo, CreateInstanceData, CreateInstanceRequest,
    CreateInstanceResponse, CreatedInstance, InstancePage, InstanceRow, ListInstancesQuery,
    ListInstancesResponse, PoolInfo, PoolSceneTag, RegionSkus, Sku, SkuData, SkuResponse,
};
use cloudphone_api::timefmt;
use cloudphone_core::instance::{self, ControlState};
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::scheduling::{self, NodeSlots};
use cloudphone_proto::node_v1 as pb;
use rand::Rng;

use super::{ApiFailure, AppStateRef, Caller, TokenCaller, parse_json};
use crate::AppState;
use crate::store::{InstanceListing, InstanceQuery, InstanceRecord};

fn row(listing: InstanceListing) -> InstanceRow {
    let node_up = listing.node_status == NodeHealth::Up.as_str();
    let status = instance::running_status(listing.instance.state, node_up);
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

pub async fn list(
    state: AppStateRef,
    caller: Caller,
    query: Result<Query<ListInstancesQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let filter = query.validate()?;
    let page = InstancePage {
        page_no: filter.page_no,
        page_size: filter.page_size,
        result: Vec::new(),
        total_count: 0,
        error_code: "0".into(),
        error_msg: "OK".into(),
    };
    // Every instance cloudphone runs is a cloud phone; a CLOUD_APP filter matches none.
    let page = if filter.pool_scene_tag == Some(PoolSceneTag::CloudApp) {
        page
    } else {
        let store_query = InstanceQuery {
            instance_id: filter.instance_id,
            instance_name: filter.instance_name,
            created_from_ms: filter.created_from_ms,
            created_to_ms: filter.created_to_ms,
            offset: i64::from(filter.page_no - 1) * i64::from(filter.page_size),
            limit: i64::from(filter.page_size),
        };
        let (listings, total) = state
            .store
            .list_instances(&caller.principal.tenant_id, &store_query)
            .await?;
        let mut result: Vec<InstanceRow> = listings.into_iter().map(row).collect();
        super::lifecycle_data::decorate_rows(&state, &mut result).await?;
        InstancePage {
            result,
            total_count: total,
            ..page
        }
    };
    Ok(axum::Json(ListInstancesResponse {
        data: page,
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct SkuQuery {
    #[serde(rename = "type")]
    sku_type: Option<String>,
}

/// Human description of a definition's SKU.
fn sku_entry(runtime: &str, definition: &str) -> Sku {
    let (calc, storage) = match definition {
        "540p" => ("2vCPUs | 4GB", "16GB"),
        "720p" => ("4vCPUs | 8GB", "32GB"),
        _ => ("8vCPUs | 16GB", "64GB"),
    };
    let resolution = definition.to_uppercase();
    Sku {
        sku_type: "PROFESSIONAL".into(),
        cbc_sku_id: wire::sku_id(runtime, definition),
        name: format!("{runtime}-{definition}"),
        calc_spec: calc.into(),
        storage_spec: storage.into(),
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

/// BatchShowSku: what the registered, healthy hosts can run, per region.
pub async fn skus(
    state: AppStateRef,
    _caller: TokenCaller,
    query: Result<Query<SkuQuery>, QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    // The seeds make `type` required with "0" its only value; clients that omit it get the same list.
    if !matches!(query.sku_type.as_deref(), None | Some("0")) {
        return Err(ApiError::InvalidParameter("type must be 0 (cloud phone)".into()).into());
    }
    let mut by_region: HashMap<String, Vec<String>> = HashMap::new();
    for node in state.store.list_nodes().await? {
        if state.registry.health(&node.node_id) != NodeHealth::Up {
            continue;
        }
        let runtimes = by_region.entry(node.region).or_default();
        for runtime in node.runtimes {
            if !runtimes.contains(&runtime) {
                runtimes.push(runtime);
            }
        }
    }
    let mut regions: Vec<RegionSkus> = by_region
        .into_iter()
        .map(|(region_id, mut runtimes)| {
            runtimes.sort();
            let sku_responses = runtimes
                .iter()
                .flat_map(|rt| wire::SKU_DEFINITIONS.iter().map(move |d| sku_entry(rt, d)))
                .collect();
            RegionSkus {
                sku_responses,
                region_id,
            }
        })
        .collect();
    regions.sort_by(|a, b| a.region_id.cmp(&b.region_id));
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

/// Instance ids look like the seeds' (`11J6QVu5`): 8 random alphanumerics.
fn new_instance_id() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}

/// Order ids look like the seeds' (`CS2412261442DBN4E`).
fn new_order_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(5)
        .map(|c| char::from(c).to_ascii_uppercase())
        .collect();
    let digits = timefmt::format_unix_ms(crate::unix_ms()).replace(['-', ' ', ':'], "");
    // yyMMddHHmm, as in the seeds' `CS2412261442DBN4E`.
    format!("CS{}{suffix}", digits.get(2..12).unwrap_or("0000000000"))
}

/// CreateInstance: validate, place on nodes by free capacity, record, then create on the nodes.
pub async fn create(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let order = parse_json::<CreateInstanceRequest>(&body)?.validate()?;
    let shape = wire::parse_sku_id(&order.instance_sku_id)
        .ok_or_else(|| ApiError::NoSuchSkuOrRegion(order.instance_sku_id.clone()))?;
    if order.band_sku_id != wire::BAND_SKU_ID {
        return Err(ApiError::SkuMismatch(order.band_sku_id.clone()).into());
    }
    if order.region_id != state.config.region {
        return Err(ApiError::NoSuchSkuOrRegion(order.region_id.clone()).into());
    }

    // One order at a time per control replica, so two orders cannot both take the last slots.
    let _placing = state.placement_lock.lock().await;
    let counts: HashMap<String, i64> = state.store.instance_counts().await?.into_iter().collect();
    let slots: Vec<NodeSlots> = state
        .store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| NodeSlots {
            eligible: state.registry.health(&n.node_id) == NodeHealth::Up
                && n.region == order.region_id
                && n.runtimes.iter().any(|r| r == shape.runtime),
            used: u32::try_from(counts.get(&n.node_id).copied().unwrap_or(0)).unwrap_or(u32::MAX),
            capacity: u32::try_from(n.capacity).unwrap_or(0),
            node_id: n.node_id,
        })
        .collect();
    let placements = scheduling::place(&slots, order.count)
        .map_err(|e| ApiError::InsufficientInventory(e.to_string()))?;

    let now = crate::unix_ms();
    let order_id = new_order_id();
    let records: Vec<InstanceRecord> = placements
        .into_iter()
        .enumerate()
        .map(|(n, node_id)| InstanceRecord {
            instance_id: new_instance_id(),
            tenant_id: caller.principal.tenant_id.clone(),
            project_id: caller.principal.project_id.clone(),
            name: wire::instance_name(&order.name_prefix, n as u32 + 1),
            order_id: order_id.clone(),
            node_id,
            sku_id: order.instance_sku_id.clone(),
            region: order.region_id.clone(),
            os: order.os.clone(),
            runtime: shape.runtime.into(),
            width: i64::from(shape.width),
            height: i64::from(shape.height),
            state: ControlState::Creating,
            state_message: String::new(),
            assign_user: None,
            period_type: match order.period_type {
                wire::PeriodType::Month => 2,
                wire::PeriodType::Year => 3,
            },
            period_num: i64::from(order.period_num),
            created_at_ms: now,
            updated_at_ms: now,
        })
        .collect();
    state.store.insert_instances(&records).await?;
    drop(_placing);
    tracing::info!(order_id, count = records.len(), "instances ordered");

    let instance_infos = records
        .iter()
        .map(|r| CreatedInstance {
            instance_id: r.instance_id.clone(),
            instance_name: r.name.clone(),
        })
        .collect();
    let app = Arc::clone(&state.0);
    tokio::spawn(async move { create_on_nodes(app, records).await });
    let data = CreateInstanceData {
        order_id,
        instance_infos,
    };
    let ok = ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    };
    Ok(axum::Json(CreateInstanceResponse {
        data,
        error_code: ok.error_code,
        error_msg: ok.error_msg,
    })
    .into_response())
}

/// Asks each instance's node to create it; the outcome lands in the instance's state.
async fn create_on_nodes(state: Arc<AppState>, records: Vec<InstanceRecord>) {
    let creations = records.into_iter().map(|record| {
        let state = Arc::clone(&state);
        async move {
            let request = pb::CreateInstanceRequest {
                instance_id: record.instance_id.clone(),
                tenant_id: record.tenant_id.clone(),
                runtime: record.runtime.clone(),
                width: u32::try_from(record.width).unwrap_or(720),
                height: u32::try_from(record.height).unwrap_or(1280),
                os: record.os.clone(),
            };
            let outcome = match state.registry.client(&record.node_id) {
                Some(mut client) => client.create_instance(request).await.map(|r| r.into_inner()),
                None => Err(tonic::Status::unavailable("node not connected")),
            };
            let (reported, message) = match outcome {
                Ok(status) => (crate::nodes::reported_state(status.state), status.message),
                Err(status) => {
                    tracing::warn!(instance_id = %record.instance_id, %status, "node could not create instance");
                    (ControlState::FAILED, status.message().to_string())
                }
            };
            if let Err(error) =
                state.store.set_instance_state(&record.instance_id, reported, &message, crate::unix_ms()).await
            {
                tracing::error!(instance_id = %record.instance_id, %error, "could not record instance state");
            }
        }
    });
    futures::future::join_all(creations).await;
}
