//! InstallApp's handler; the task and its jobs are `crate::service::apps`.

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use cloudphone_api::apps::{InstallAppData, InstallAppRequest};
use cloudphone_api::management::DataResponse;

use super::{ApiFailure, AppStateRef, TokenCaller, parse_json};
use crate::service::apps;

/// InstallApp.
pub(super) async fn install(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let order = parse_json::<InstallAppRequest>(&body)?.validate()?;
    let data = apps::install(&state, &caller.principal, order).await?;
    Ok(axum::Json(DataResponse::ok(InstallAppData { data })).into_response())
}
