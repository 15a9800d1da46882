//! The vendor usage queries (seed 004's Huawei Live `stats/transcode` and ShowDomain, seed 002's
//! Volcengine DescribeLiveTranscodeData): who a signed or token call acts for, and the answer
//! from the tenant's usage records. Errors are each vendor's own enum (`HuaweiError`,
//! `VolcError`), which `http::usage` writes as that vendor's error body.

use cloudphone_usage::class::{huawei_spec, volc_class};
use cloudphone_usage::huawei::{
    self, DomainInfo, HuaweiError, ShowDomainQuery, ShowDomainResponse, TranscodeQuery,
};
use cloudphone_usage::meter::{Grid, bucket_totals};
use cloudphone_usage::sign::{self, RequestParts, SignError};
use cloudphone_usage::volc::{self, VolcError};

use crate::AppState;
use crate::iam::{CallerError, Scope};

/// The tenant a Huawei call acts for: an IAM token scoped to `project_id`, or an AK/SK
/// signature by a key of the tenant owning `project_id` (the verifier every signed Huawei-style
/// call goes through: `iam::identify_signed`).
pub(crate) async fn huawei_tenant(
    state: &AppState,
    project_id: &str,
    parts: &RequestParts<'_>,
    token: Option<&str>,
) -> Result<String, HuaweiError> {
    let identity = match token {
        Some(token) => crate::iam::identify_token(state, token).await,
        None => crate::iam::identify_signed(state, parts, Some(project_id)).await,
    }
    .map_err(|error| match error {
        CallerError::Unauthenticated(why) => HuaweiError::Unauthorized(why),
        CallerError::NotPermitted => HuaweiError::Forbidden,
        CallerError::Internal => HuaweiError::Internal,
    })?;
    match identity.scope {
        Scope::Project(project) if project == project_id => Ok(identity.tenant_id),
        // A token of another project, or a domain-scoped one.
        _ => Err(HuaweiError::Forbidden),
    }
}

/// Huawei Live `GET /v2/{project_id}/stats/transcode` for `tenant_id`: the hours of the
/// query's window under its publish domain, by resolution class.
pub(crate) async fn huawei_transcode(
    state: &AppState,
    tenant_id: String,
    query: TranscodeQuery,
) -> Result<huawei::TranscodeResponse, HuaweiError> {
    let domain = huawei::publish_domain(&query)?.to_string();
    // "Now" (the window's defaults and limits, open sessions) from the state's clock, so the
    // rules relative to the current hour are tested at a chosen time.
    let now = state.clock.now_ms();
    let window = huawei::window(&query, now)?;
    let store_failed = |error: crate::store::StoreError| {
        tracing::error!(%error, "usage query failed");
        HuaweiError::Internal
    };
    let domains = state
        .store
        .list_domains(&tenant_id)
        .await
        .map_err(store_failed)?;
    // Another tenant's domain answers exactly like one that does not exist.
    if !domains.iter().any(|d| d.domain == domain) {
        return Err(HuaweiError::InvalidParameter("publish_domain".into()));
    }
    let (from, to) = window.range_ms();
    let stream = query.stream.as_deref().filter(|s| !s.is_empty());
    let spans: Vec<_> = crate::usage::spans(state.store.as_ref(), &tenant_id, from, to, now)
        .await
        .map_err(store_failed)?
        .into_iter()
        .filter(|s| s.domain == domain && stream.is_none_or(|st| s.stream == st))
        .collect();
    let totals = bucket_totals(&spans, Grid::HOURS, from, to, |s| {
        huawei_spec(s.codec, s.width, s.height)
    });
    Ok(huawei::response(&window, &totals))
}

fn sign_error(e: SignError) -> VolcError {
    match e {
        SignError::Missing => VolcError::MissingAuthenticationToken,
        SignError::BadDate | SignError::Stale => VolcError::InvalidTimestamp,
        SignError::Mismatch | SignError::BodyHash => VolcError::SignatureDoesNotMatch,
        other => VolcError::InvalidAuthorization(other.to_string()),
    }
}

/// Volcengine DescribeLiveTranscodeData: authenticates the signed request (AK/SK, the
/// signature's age, the per-user rate window), then totals the tenant's domains' usage.
pub(crate) async fn volc_transcode(
    state: &AppState,
    parts: &RequestParts<'_>,
) -> Result<volc::TranscodeResult, VolcError> {
    let query = sign::query_pairs(parts.query);
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (action, version) = (get("Action"), get("Version"));
    if action != volc::ACTION || version != volc::VERSION {
        return Err(VolcError::InvalidActionOrVersion(action, version));
    }
    if !sign::names_algorithm(parts, sign::volc::ALGORITHM) {
        return Err(VolcError::MissingAuthenticationToken);
    }
    let auth = sign::volc::parse(parts).map_err(sign_error)?;
    if auth.service != volc::SERVICE {
        return Err(VolcError::InvalidAuthorization(format!(
            "service {} is not live",
            auth.service
        )));
    }
    let (key, secret) = crate::iam::access_key(state, &auth.access_key)
        .await
        .map_err(|()| VolcError::InternalError)?
        .ok_or(VolcError::InvalidAccessKey)?;
    // The rate window, the signature's age and "now" in the query all read the state's clock,
    // so the window can be tested in tokio's paused time.
    let now = state.clock.now_ms();
    sign::volc::verify(parts, &auth, &secret, now).map_err(sign_error)?;
    tracing::Span::current().record("tenant_id", key.tenant_id.as_str());
    let budget = (
        state.config.usage.volcengine_rate_limit,
        state.config.usage.volcengine_rate_window_ms,
    );
    let allowed = crate::limits::allow(
        state,
        "volc",
        &state.volcengine_limiter,
        &key.user_id,
        budget,
        now,
    )
    .await
    .map_err(|error| {
        tracing::error!(%error, "counting the request budget failed");
        VolcError::InternalError
    })?;
    if !allowed {
        return Err(VolcError::FlowLimitExceeded);
    }
    let request = volc::parse_body(parts.body)?;
    let window = volc::window(&request, now)?;
    let store_failed = |error: crate::store::StoreError| {
        tracing::error!(%error, "usage query failed");
        VolcError::InternalError
    };
    let owned: Vec<String> = state
        .store
        .list_domains(&key.tenant_id)
        .await
        .map_err(store_failed)?
        .into_iter()
        .map(|d| d.domain)
        .collect();
    let domains = match request.domain_list.as_deref() {
        None | Some([]) => owned,
        Some(asked) => {
            // Another account's domain is refused exactly like one that does not exist.
            if asked.iter().any(|d| !owned.contains(d)) {
                return Err(VolcError::AccountIdNotAllow);
            }
            asked.to_vec()
        }
    };
    let app = request.app.as_deref().filter(|s| !s.is_empty());
    let stream = request.stream.as_deref().filter(|s| !s.is_empty());
    let spans: Vec<_> = crate::usage::spans(
        state.store.as_ref(),
        &key.tenant_id,
        window.start_ms,
        window.end_ms,
        now,
    )
    .await
    .map_err(store_failed)?
    .into_iter()
    .filter(|s| {
        domains.contains(&s.domain)
            && app.is_none_or(|a| s.app == a)
            && stream.is_none_or(|st| s.stream == st)
    })
    .collect();
    let totals = bucket_totals(&spans, window.grid(), window.start_ms, window.end_ms, |s| {
        let (kind, resolution) = volc_class(s.codec, s.width, s.height);
        (kind, resolution.to_string())
    });
    Ok(volc::result(&request, domains, &window, &totals))
}

/// Huawei Live ShowDomain for `tenant_id`: its streaming domains, the billing one marked.
pub(crate) async fn show_domains(
    state: &AppState,
    tenant_id: String,
    query: ShowDomainQuery,
) -> Result<ShowDomainResponse, HuaweiError> {
    let wanted = query
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if wanted.is_some_and(|d| d.len() > 255) {
        return Err(HuaweiError::InvalidParameter("domain".into()));
    }
    let domains = state
        .store
        .list_domains(&tenant_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, "listing streaming domains failed");
            HuaweiError::Internal
        })?;
    // The domain sessions bill under, chosen as `usage::default_domain` does (without creating
    // one): the live default, else the oldest live domain.
    let live = || domains.iter().filter(|d| d.deleted_at_ms.is_none());
    let billing = live()
        .find(|d| d.is_default)
        .or_else(|| live().next())
        .map(|d| d.domain.clone());
    let domain_info: Vec<DomainInfo> = domains
        .iter()
        .filter(|d| wanted.is_none_or(|w| d.domain.eq_ignore_ascii_case(w)))
        .map(|d| DomainInfo {
            domain: d.domain.clone(),
            domain_type: "push",
            region: state.config.region.clone(),
            status: if d.deleted_at_ms.is_none() {
                "on"
            } else {
                "off"
            },
            create_time: huawei::format_time(d.created_at_ms),
            is_default: billing.as_deref() == Some(d.domain.as_str()),
        })
        .collect();
    Ok(ShowDomainResponse {
        total: domain_info.len(),
        domain_info,
    })
}
