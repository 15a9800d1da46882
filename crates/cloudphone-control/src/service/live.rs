//! The live edge's API (seed 003, Version 2018-12-12; docs/live-api.md): who signed a
//! request and whether it may run, then each Action's rules over the store, and keeping the
//! nodes' view of streams in step (`PutLiveStream` on every change, `RemoveLiveStream` on
//! delete, `SyncLiveStreams` when a node announces itself). Knows no HTTP: `http::live`
//! hands it the request's parts and maps the one error enum, [`VsError`], onto the body.
//!
//! A stream is admitted on its node only while it is enabled (Start/StopStream), not
//! forbidden (Forbid/ResumeVsStream), its group is enabled and its tenant is active.

use cloudphone_core::liveness::NodeHealth;
use cloudphone_proto::node_v1 as pb;
use cloudphone_vs_api::error::VsError;
use cloudphone_vs_api::model::{
    Answer, BatchResult, Group, Paging, PushUrl, ScreenStream, Stats, Stream,
};
use cloudphone_vs_api::request::{
    self, Action, Command, Credentials, GroupChange, GroupQuery, NewGroup, OutProtocol, Page,
    Params, Sort, SortBy, StreamQuery, StreamUrlRequest,
};
use cloudphone_vs_api::sign::{self, Acs3Request};
use cloudphone_vs_api::timefmt;
use rand::{Rng, RngCore};
use tracing::warn;

use crate::AppState;
use crate::nodes::NodeClient;
use crate::store::{
    GroupFilter, Store, StoreError, StreamChange, StreamFilter, StreamReport, VsGroup, VsNode,
    VsOrder, VsPage, VsPublish, VsStatus, VsStream, VsTenant,
};

/// Push URLs do not expire in practice: their `auth_key` timestamp is 2100-01-01.
const PUSH_EXPIRES_UNIX: i64 = 4_102_444_800;
/// How long a ScreenShowStreams URL is valid.
const SCREEN_URL_SECS: i64 = 3600;
/// Nonces are kept this long past the request, beyond the ±15 min window either way.
const NONCE_KEEP_MS: i64 = 2 * timefmt::WINDOW_MS + 60_000;

/// A request as it arrived: the method, path, decoded query and form body, headers with
/// lower-case names, and the raw body (which ACS3 signs by its hash).
pub(crate) struct Incoming<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) form: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: &'a [u8],
}

/// Who signed a request.
enum Caller {
    /// The deployment's operator key: the service Actions only.
    Operator,
    /// A VS tenant's key: its own groups and streams only.
    Tenant(VsTenant),
}

fn internal(error: impl std::fmt::Display) -> VsError {
    warn!(%error, "live API request failed inside");
    VsError::InternalError
}

impl From<StoreError> for VsError {
    fn from(error: StoreError) -> Self {
        internal(error)
    }
}

/// Authenticates `incoming`, parses its Action's parameters and runs it.
pub(crate) async fn handle(state: &AppState, incoming: &Incoming<'_>) -> Result<Answer, VsError> {
    let mut all = incoming.query.clone();
    all.extend(incoming.form.iter().cloned());
    let params = Params(all);
    let header = |name: &str| {
        incoming
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let common = request::common(&params, header)?;
    let action = Action::parse(&common.action).ok_or(VsError::ActionNotFound)?;
    let (caller, secret) = identify(state, &common.access_key_id).await?;
    let signed = match &common.credentials {
        Credentials::Rpc { signature } => {
            sign::verify_rpc(incoming.method, &params.0, &secret, signature)
        }
        Credentials::Acs3(authorization) => {
            let request = Acs3Request {
                method: incoming.method,
                path: incoming.path,
                query: &incoming.query,
                headers: &incoming.headers,
                body: incoming.body,
            };
            sign::verify_acs3(&request, authorization, &secret)
        }
    };
    if !signed {
        return Err(VsError::SignatureDoesNotMatch);
    }
    let now = state.clock.now_ms();
    if !timefmt::within_window(common.timestamp_ms, now) {
        return Err(VsError::TimestampExpired);
    }
    if !state
        .store
        .vs_spend_nonce(
            &common.access_key_id,
            &common.nonce,
            now + NONCE_KEEP_MS,
            now,
        )
        .await?
    {
        return Err(VsError::SignatureNonceUsed);
    }
    // Each key's budget counts only requests it really signed.
    if let Some(limiter) = &state.live_limiter {
        let budget = (
            state.config.live_api.rate_limit,
            state.config.live_api.rate_window_ms,
        );
        let allowed =
            crate::limits::allow(state, "live", limiter, &common.access_key_id, budget, now)
                .await?;
        if !allowed {
            return Err(VsError::Throttling);
        }
    }
    let tenant = match caller {
        Caller::Operator if action.is_service() => None,
        Caller::Operator => {
            return Err(VsError::Forbidden(
                "The operator key manages services; groups and streams are a tenant's.".into(),
            ));
        }
        Caller::Tenant(_) if action.is_service() => {
            return Err(VsError::Forbidden(
                "Only the operator may manage services.".into(),
            ));
        }
        Caller::Tenant(tenant) => Some(tenant),
    };
    let command = Command::parse(action, &params)?;
    match tenant {
        None => service_action(state, command).await,
        Some(tenant) => tenant_action(state, &tenant, command).await,
    }
}

/// The caller a key belongs to and its secret. A deleted tenant's key is unknown; a suspended
/// tenant's is known and then refused (`Forbidden`), after its signature is checked.
async fn identify(state: &AppState, access_key_id: &str) -> Result<(Caller, String), VsError> {
    let config = &state.config.live_api;
    if !config.operator_access_key_id.is_empty() && access_key_id == config.operator_access_key_id {
        return Ok((
            Caller::Operator,
            config.operator_access_key_secret.expose().to_string(),
        ));
    }
    let tenant = state
        .store
        .vs_tenant_by_key(access_key_id)
        .await?
        .filter(|t| t.status != VsStatus::Deleted)
        .ok_or(VsError::AccessKeyNotFound)?;
    let sealer = crate::usage::secret_box(&state.config).map_err(internal)?;
    let secret = sealer
        .open(&tenant.access_key_id, &tenant.secret_sealed)
        .map_err(internal)?
        .secret;
    // A suspended tenant is refused only after its signature checked (`tenant_action`), so
    // an unsigned probe cannot learn the state.
    Ok((Caller::Tenant(tenant), secret))
}

/// 32 random hex digits (keys and secrets, the document's shape).
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new 16-digit decimal Id, like the document's `1624428150544871`.
fn new_id() -> String {
    rand::rngs::OsRng
        .gen_range(1_000_000_000_000_000u64..10_000_000_000_000_000u64)
        .to_string()
}

async fn service_action(state: &AppState, command: Command) -> Result<Answer, VsError> {
    let store = state.store.as_ref();
    let now = state.clock.now_ms();
    match command {
        Command::CreateMtsService { user_id } => {
            if store
                .vs_tenant(&user_id)
                .await?
                .is_some_and(|t| t.status != VsStatus::Deleted)
            {
                return Err(VsError::UserAlreadyExists);
            }
            let access_key_id = random_hex();
            let secret = random_hex().to_ascii_uppercase();
            let sealer = crate::usage::secret_box(&state.config).map_err(internal)?;
            let sealed = sealer.seal(&access_key_id, &secret);
            let tenant = VsTenant::active(user_id.clone(), access_key_id.clone(), sealed, now);
            match store.vs_put_tenant(&tenant).await {
                Ok(()) => {}
                // Two creations raced: the other one won.
                Err(StoreError::AlreadyExists(_)) => return Err(VsError::UserAlreadyExists),
                Err(error) => return Err(error.into()),
            }
            Ok(Answer::Service {
                user_id,
                access_key_id,
                access_key_secret: secret,
            })
        }
        Command::SuspendMtsService { user_id } => {
            set_status(state, &user_id, VsStatus::Suspended).await
        }
        Command::RenewMtsService { user_id } => set_status(state, &user_id, VsStatus::Active).await,
        Command::DeleteMtsService { user_id } => {
            live_tenant(store, &user_id).await?;
            let removed = store.vs_delete_tenant(&user_id, now).await?;
            for stream in removed {
                remove_from_node(state, &stream).await;
            }
            Ok(Answer::Empty)
        }
        Command::GetMtsServiceStatus { user_id } => Ok(Answer::ServiceStatus(
            store
                .vs_tenant(&user_id)
                .await?
                .map_or(0, |t| t.status.code()),
        )),
        // `handle` sends only service commands here.
        _ => Err(VsError::Forbidden(
            "The operator key manages services; groups and streams are a tenant's.".into(),
        )),
    }
}

/// The tenant of `user_id` unless it has none or it was deleted.
async fn live_tenant(store: &dyn Store, user_id: &str) -> Result<VsTenant, VsError> {
    store
        .vs_tenant(user_id)
        .await?
        .filter(|t| t.status != VsStatus::Deleted)
        .ok_or(VsError::UserNotFound)
}

/// Suspends or renews a tenant, then tells the nodes which of its streams are admitted now.
async fn set_status(state: &AppState, user_id: &str, status: VsStatus) -> Result<Answer, VsError> {
    let store = state.store.as_ref();
    live_tenant(store, user_id).await?;
    store
        .vs_set_tenant_status(user_id, status, state.clock.now_ms())
        .await?;
    for stream in store.vs_streams_of(user_id, None).await? {
        push_to_node(state, &stream).await;
    }
    Ok(Answer::Empty)
}

async fn tenant_action(
    state: &AppState,
    tenant: &VsTenant,
    command: Command,
) -> Result<Answer, VsError> {
    if tenant.status == VsStatus::Suspended {
        return Err(VsError::Forbidden(
            "The service of this user is suspended.".into(),
        ));
    }
    let user = tenant.user_id.as_str();
    match command {
        Command::CreateGroup(new) => create_group(state, user, new).await,
        Command::DeleteGroup { id } => delete_group(state, user, &id).await,
        Command::DescribeGroup { id, include_stats } => {
            let group = group(state, user, &id).await?;
            Ok(Answer::Group(Box::new(
                group_view(state, &group, include_stats).await?,
            )))
        }
        Command::DescribeGroups(query) => describe_groups(state, user, &query).await,
        Command::ModifyGroup(change) => modify_group(state, user, change).await,
        Command::HaltGroup { id } => modify_group(state, user, group_enabled(id, false)).await,
        Command::EnableGroup { id } => modify_group(state, user, group_enabled(id, true)).await,
        Command::CreateRtmpGroupStreamurls {
            group_id,
            names,
            plural,
        } => create_streams(state, user, &group_id, names, plural).await,
        Command::DescribeStream { id } => {
            let stream = stream(state, user, &id).await?;
            Ok(Answer::Stream(Box::new(stream_view(state, &stream).await?)))
        }
        Command::DescribeStreams(query) => describe_streams(state, user, &query).await,
        Command::DescribeStreamUrl(request) => stream_url(state, user, &request).await,
        Command::StartStream { id } => switch(state, user, &id, enabled(true)).await,
        Command::StopStream { id } => switch(state, user, &id, enabled(false)).await,
        Command::ForbidVsStream { id } => switch(state, user, &id, forbidden(true)).await,
        Command::ResumeVsStream { id } => switch(state, user, &id, forbidden(false)).await,
        Command::BatchStartStreams { ids } => batch(state, user, &ids, enabled(true)).await,
        Command::BatchStopStreams { ids } => batch(state, user, &ids, enabled(false)).await,
        Command::ScreenShowStreams { group_id, page } => {
            screen_show(state, user, group_id.as_deref(), page).await
        }
        Command::ModifyStream { id, group_id, name } => {
            group(state, user, &group_id).await?;
            let found = stream(state, user, &id).await?;
            if found.group_id != group_id {
                return Err(VsError::StreamNotFound);
            }
            let change = StreamChange {
                name: Some(name),
                ..StreamChange::default()
            };
            switch(state, user, &id, change).await
        }
        Command::CreateMtsService { .. }
        | Command::SuspendMtsService { .. }
        | Command::RenewMtsService { .. }
        | Command::DeleteMtsService { .. }
        | Command::GetMtsServiceStatus { .. } => Err(VsError::Forbidden(
            "Only the operator may manage services.".into(),
        )),
    }
}

fn enabled(value: bool) -> StreamChange {
    StreamChange {
        enabled: Some(value),
        ..StreamChange::default()
    }
}

fn forbidden(value: bool) -> StreamChange {
    StreamChange {
        forbidden: Some(value),
        ..StreamChange::default()
    }
}

/// The tenant's group `id`; another tenant's is not found, exactly like a missing one.
async fn group(state: &AppState, user: &str, id: &str) -> Result<VsGroup, VsError> {
    state
        .store
        .vs_group(user, id)
        .await?
        .ok_or(VsError::GroupNotFound)
}

async fn stream(state: &AppState, user: &str, id: &str) -> Result<VsStream, VsError> {
    state
        .store
        .vs_stream(user, id)
        .await?
        .ok_or(VsError::StreamNotFound)
}

async fn create_group(state: &AppState, user: &str, new: NewGroup) -> Result<Answer, VsError> {
    let group = VsGroup {
        id: new_id(),
        user_id: user.to_string(),
        name: new.name,
        description: new.description,
        region: new.region,
        app: new.app,
        in_protocol: new.in_protocol.as_str().to_string(),
        out_protocol: new.out_protocol,
        lazy_pull: new.lazy_pull,
        callback: new.callback,
        enabled: true,
        created_at_ms: state.clock.now_ms(),
    };
    state.store.vs_insert_group(&group).await?;
    Ok(Answer::Id(group.id))
}

async fn delete_group(state: &AppState, user: &str, id: &str) -> Result<Answer, VsError> {
    let found = group(state, user, id).await?;
    // The document: a group must be halted before it is deleted.
    if found.enabled {
        return Err(VsError::GroupNotHalted);
    }
    let removed = state
        .store
        .vs_delete_group(user, id)
        .await?
        .ok_or(VsError::GroupNotFound)?;
    for stream in removed {
        remove_from_node(state, &stream).await;
    }
    Ok(Answer::Deleted(id.to_string()))
}

/// Halt/EnableGroup as a change of the group.
fn group_enabled(id: String, enabled: bool) -> GroupChange {
    GroupChange {
        id,
        enabled: Some(enabled),
        ..GroupChange::default()
    }
}

/// Replaces `field` with `new` when there is one.
fn replace<T>(field: &mut T, new: Option<T>) {
    if let Some(new) = new {
        *field = new;
    }
}

async fn modify_group(
    state: &AppState,
    user: &str,
    change: GroupChange,
) -> Result<Answer, VsError> {
    let mut g = group(state, user, &change.id).await?;
    let admission_before = (g.enabled, g.out_protocol.clone());
    // Each field the change names replaces the group's; the others stay.
    replace(&mut g.name, change.name);
    replace(&mut g.description, change.description);
    replace(&mut g.region, change.region);
    let in_protocol = change.in_protocol.map(|p| p.as_str().to_string());
    replace(&mut g.in_protocol, in_protocol);
    replace(&mut g.out_protocol, change.out_protocol);
    replace(&mut g.enabled, change.enabled);
    replace(&mut g.lazy_pull, change.lazy_pull);
    replace(&mut g.callback, change.callback);
    if !state.store.vs_update_group(&g).await? {
        return Err(VsError::GroupNotFound);
    }
    if admission_before != (g.enabled, g.out_protocol.clone()) {
        for stream in state.store.vs_streams_of(user, Some(&g.id)).await? {
            push_to_node(state, &stream).await;
        }
    }
    Ok(Answer::Id(g.id))
}

/// The store's page of a request's sort and page.
fn vs_page(sort: Sort, page: Page) -> VsPage {
    let order = match sort.by {
        SortBy::Id => VsOrder::Id,
        SortBy::Name => VsOrder::Name,
        SortBy::CreatedTime => VsOrder::CreatedTime,
    };
    VsPage {
        order,
        descending: sort.descending,
        offset: page.offset(),
        limit: page.size,
    }
}

fn paging(page: Page, total: i64) -> Paging {
    Paging {
        page_size: page.size,
        page_num: page.num,
        page_count: page.count(total),
        total_count: total,
    }
}

async fn describe_groups(state: &AppState, user: &str, q: &GroupQuery) -> Result<Answer, VsError> {
    let filter = GroupFilter {
        id: q.id.clone(),
        name: q.name.clone(),
        region: q.region.clone(),
        in_protocol: q.in_protocol.map(|p| p.as_str().to_string()),
        enabled: q.enabled,
        page: vs_page(q.sort, q.page),
    };
    let (groups, total) = state.store.vs_groups(user, &filter).await?;
    let mut views = Vec::with_capacity(groups.len());
    for g in &groups {
        views.push(group_view(state, g, q.include_stats).await?);
    }
    Ok(Answer::Groups(paging(q.page, total), views))
}

/// The live node a new stream of a group in `region` goes to: among nodes that offer a live
/// edge and are up, those in the group's region first, then the one holding the fewest
/// streams (ties by node id).
async fn best_node(state: &AppState, region: &str) -> Result<Option<VsNode>, VsError> {
    let nodes = state.store.vs_live_nodes().await?;
    Ok(nodes
        .into_iter()
        .filter(|(n, _)| state.registry.health(&n.node_id) == NodeHealth::Up)
        .min_by(|(a, a_load), (b, b_load)| {
            (a.region != region, *a_load, &a.node_id).cmp(&(
                b.region != region,
                *b_load,
                &b.node_id,
            ))
        })
        .map(|(node, _)| node))
}

async fn group_view(state: &AppState, g: &VsGroup, include_stats: bool) -> Result<Group, VsError> {
    let push_base = best_node(state, &g.region)
        .await?
        .map(|n| format!("{}/{}", n.rtmp_base_url.trim_end_matches('/'), g.app))
        .unwrap_or_default();
    Ok(Group {
        id: g.id.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        region: g.region.clone(),
        app: g.app.clone(),
        in_protocol: g.in_protocol.clone(),
        out_protocol: g.out_protocol.clone(),
        enabled: g.enabled,
        status: if g.enabled { "on" } else { "off" }.into(),
        created_time: timefmt::format_unix_ms(g.created_at_ms),
        push_domain: String::new(),
        play_domain: String::new(),
        lazy_pull: g.lazy_pull,
        callback: g.callback.clone(),
        gb_id: String::new(),
        gb_ip: String::new(),
        gb_udp_port: String::new(),
        gb_tcp_port: String::new(),
        // Part 1 has no devices: every count is zero.
        stats: include_stats.then(Stats::default),
        push_rtmp_base_url: push_base,
    })
}

async fn create_streams(
    state: &AppState,
    user: &str,
    group_id: &str,
    names: Vec<String>,
    plural: bool,
) -> Result<Answer, VsError> {
    let g = group(state, user, group_id).await?;
    if g.in_protocol != "rtmp" {
        // Push URLs are for RTMP groups (a GB28181 group's streams come from its devices).
        return Err(VsError::InvalidParameter("Id".into()));
    }
    let node = best_node(state, &g.region).await?;
    let now = state.clock.now_ms();
    let streams: Vec<VsStream> = names
        .into_iter()
        .map(|name| {
            let keys = (random_hex(), random_hex());
            VsStream {
                node_id: node.as_ref().map(|n| n.node_id.clone()),
                ..VsStream::new(new_id(), user.to_string(), g.id.clone(), name, keys, now)
            }
        })
        .collect();
    state.store.vs_insert_streams(&streams).await?;
    let mut urls = Vec::with_capacity(streams.len());
    for stream in &streams {
        push_to_node(state, stream).await;
        urls.push(PushUrl {
            id: g.id.clone(),
            push_url: push_url(node.as_ref(), &g.app, stream),
            stream_id: stream.id.clone(),
        });
    }
    if plural {
        return Ok(Answer::PushUrls(urls));
    }
    urls.pop()
        .map(Answer::PushUrl)
        .ok_or(VsError::InternalError)
}

/// `{live_rtmp_base_url}/{app}/{id}?auth_key=…` signed with the push key (empty while the
/// stream has no node).
fn push_url(node: Option<&VsNode>, app: &str, stream: &VsStream) -> String {
    let Some(node) = node else {
        return String::new();
    };
    let uri = format!("/{app}/{}", stream.id);
    let auth =
        cloudphone_core::play_auth::sign(&uri, &stream.push_key, PUSH_EXPIRES_UNIX, "0", "0");
    format!(
        "{}{uri}?auth_key={auth}",
        node.rtmp_base_url.trim_end_matches('/')
    )
}

/// A play URL of `protocol` for the stream on `node`, signed with `key` until `expires_unix`.
fn play_url(
    node: &VsNode,
    app: &str,
    id: &str,
    protocol: OutProtocol,
    key: &str,
    expires_unix: i64,
) -> String {
    let (base, uri) = match protocol {
        OutProtocol::Rtmp => (&node.rtmp_base_url, format!("/{app}/{id}")),
        OutProtocol::Flv => (&node.http_base_url, format!("/{app}/{id}.flv")),
        OutProtocol::Hls => (&node.http_base_url, format!("/{app}/{id}.m3u8")),
        OutProtocol::Webrtc => (&node.http_base_url, format!("/{app}/{id}/whep")),
    };
    let rand = &random_hex()[..16];
    let auth = cloudphone_core::play_auth::sign(&uri, key, expires_unix, rand, "0");
    format!("{}{uri}?auth_key={auth}", base.trim_end_matches('/'))
}

async fn stream_node(state: &AppState, stream: &VsStream) -> Result<Option<VsNode>, VsError> {
    match &stream.node_id {
        Some(node_id) => Ok(state
            .store
            .vs_node(node_id)
            .await?
            .filter(|n| !n.rtmp_base_url.is_empty())),
        None => Ok(None),
    }
}

async fn stream_view(state: &AppState, s: &VsStream) -> Result<Stream, VsError> {
    let g = group(state, &s.user_id, &s.group_id).await?;
    let node = stream_node(state, s).await?;
    let time = |ms: Option<i64>| ms.map(timefmt::format_unix_ms).unwrap_or_default();
    Ok(Stream {
        id: s.id.clone(),
        name: s.name.clone(),
        app: g.app.clone(),
        protocol: g.in_protocol.clone(),
        group_id: s.group_id.clone(),
        device_id: String::new(),
        enabled: s.enabled,
        status: if s.is_on { "on" } else { "off" }.into(),
        created_time: timefmt::format_unix_ms(s.created_at_ms),
        start_time: time(s.started_at_ms),
        stop_time: time(s.stopped_at_ms),
        push_url: push_url(node.as_ref(), &g.app, s),
        channel_name: String::new(),
        forbidden: s.forbidden,
        codec: s.codec.clone(),
        width: s.width,
        height: s.height,
        bitrate: s.bitrate_bps,
    })
}

async fn describe_streams(
    state: &AppState,
    user: &str,
    q: &StreamQuery,
) -> Result<Answer, VsError> {
    // Part 1 has no devices: a DeviceId filter matches nothing.
    if q.device_id.is_some() {
        return Ok(Answer::Streams(paging(q.page, 0), Vec::new()));
    }
    let filter = StreamFilter {
        id: q.id.clone(),
        group_id: q.group_id.clone(),
        app: q.app.clone(),
        name: q.name.clone(),
        on: q.on,
        created_from_ms: q.created_from_ms,
        created_to_ms: q.created_to_ms,
        page: vs_page(q.sort, q.page),
    };
    let (streams, total) = state.store.vs_streams(user, &filter).await?;
    let mut views = Vec::with_capacity(streams.len());
    for s in &streams {
        views.push(stream_view(state, s).await?);
    }
    Ok(Answer::Streams(paging(q.page, total), views))
}

async fn stream_url(state: &AppState, user: &str, r: &StreamUrlRequest) -> Result<Answer, VsError> {
    let s = stream(state, user, &r.id).await?;
    let g = group(state, user, &s.group_id).await?;
    // WHEP is always offered (ScreenShowStreams' output); the others as the group lists them.
    let allowed = r.out_protocol == OutProtocol::Webrtc
        || g.out_protocol
            .split(',')
            .any(|p| OutProtocol::parse(p) == Some(r.out_protocol));
    if !allowed {
        return Err(VsError::InvalidParameter("OutProtocol".into()));
    }
    let node = stream_node(state, &s)
        .await?
        .ok_or(VsError::StreamNotPlaced)?;
    let now = state.clock.now_ms();
    let expires_unix = now / 1000 + r.expire_secs;
    // The key is kept (and the node told) for as long as URLs signed with it can be valid.
    state
        .store
        .vs_add_play_key(&s.id, &r.auth_key, (expires_unix + 1) * 1000, now)
        .await?;
    push_to_node(state, &s).await;
    Ok(Answer::StreamUrl {
        url: play_url(
            &node,
            &g.app,
            &s.id,
            r.out_protocol,
            &r.auth_key,
            expires_unix,
        ),
        expire_time: expires_unix,
    })
}

/// Applies a tenant's change to one stream and tells its node.
async fn switch(
    state: &AppState,
    user: &str,
    id: &str,
    change: StreamChange,
) -> Result<Answer, VsError> {
    let changed = state
        .store
        .vs_change_stream(user, id, &change)
        .await?
        .ok_or(VsError::StreamNotFound)?;
    push_to_node(state, &changed).await;
    Ok(Answer::Id(changed.id))
}

async fn batch(
    state: &AppState,
    user: &str,
    ids: &[String],
    change: StreamChange,
) -> Result<Answer, VsError> {
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let error = match state.store.vs_change_stream(user, id, &change).await? {
            Some(changed) => {
                push_to_node(state, &changed).await;
                None
            }
            None => Some("Stream not found".to_string()),
        };
        results.push(BatchResult {
            id: id.clone(),
            error,
        });
    }
    Ok(Answer::Batch(results))
}

async fn screen_show(
    state: &AppState,
    user: &str,
    group_id: Option<&str>,
    page: Page,
) -> Result<Answer, VsError> {
    let filter = StreamFilter {
        group_id: group_id.map(str::to_string),
        on: Some(true),
        ..StreamFilter::all(VsPage::by_id(page.offset(), page.size))
    };
    let (streams, total) = state.store.vs_streams(user, &filter).await?;
    let expires_unix = state.clock.now_ms() / 1000 + SCREEN_URL_SECS;
    let mut rows = Vec::with_capacity(streams.len());
    for s in &streams {
        let g = group(state, user, &s.group_id).await?;
        let url = match stream_node(state, s).await? {
            Some(node) => play_url(
                &node,
                &g.app,
                &s.id,
                OutProtocol::Webrtc,
                &s.screen_key,
                expires_unix,
            ),
            None => String::new(),
        };
        rows.push(ScreenStream {
            id: s.id.clone(),
            name: s.name.clone(),
            in_protocol: g.in_protocol.clone(),
            url,
            device_name: String::new(),
        });
    }
    Ok(Answer::Screen(paging(page, total), rows))
}

/// What the node must know of `stream`: admitted or not, outputs, push and play keys.
/// `None` when its group is gone (it is being deleted).
pub(crate) async fn live_stream_message(
    store: &dyn Store,
    stream: &VsStream,
    now_ms: i64,
) -> Result<Option<pb::LiveStream>, StoreError> {
    let Some(g) = store.vs_group(&stream.user_id, &stream.group_id).await? else {
        return Ok(None);
    };
    let active = store
        .vs_tenant(&stream.user_id)
        .await?
        .is_some_and(|t| t.status == VsStatus::Active);
    let mut out_protocols: Vec<String> = g
        .out_protocol
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if !out_protocols.iter().any(|p| p == "webrtc") {
        out_protocols.push("webrtc".into());
    }
    let mut play_keys = store.vs_play_keys(&stream.id, now_ms).await?;
    play_keys.push(stream.screen_key.clone());
    Ok(Some(pb::LiveStream {
        stream_id: stream.id.clone(),
        app: g.app,
        tenant_id: stream.user_id.clone(),
        group_id: stream.group_id.clone(),
        admitted: stream.enabled && !stream.forbidden && g.enabled && active,
        out_protocols,
        push_key: stream.push_key.clone(),
        play_keys,
    }))
}

/// Tells the stream's node its current state (`PutLiveStream`). A failure is only logged:
/// the node gets the whole set again (`SyncLiveStreams`) when its report stream reopens.
async fn push_to_node(state: &AppState, stream: &VsStream) {
    let Some(node_id) = &stream.node_id else {
        return;
    };
    let Some(mut client) = state.registry.client(node_id) else {
        return;
    };
    let message =
        match live_stream_message(state.store.as_ref(), stream, state.clock.now_ms()).await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(error) => {
                warn!(stream_id = %stream.id, %error, "could not build the stream for its node");
                return;
            }
        };
    if let Err(status) = client.put_live_stream(message).await {
        warn!(stream_id = %stream.id, node_id, %status, "PutLiveStream failed");
    }
}

async fn remove_from_node(state: &AppState, stream: &VsStream) {
    let Some(node_id) = &stream.node_id else {
        return;
    };
    let Some(mut client) = state.registry.client(node_id) else {
        return;
    };
    let target = pb::LiveStreamRef {
        stream_id: stream.id.clone(),
    };
    if let Err(status) = client.remove_live_stream(target).await {
        warn!(stream_id = %stream.id, node_id, %status, "RemoveLiveStream failed");
    }
}

/// A node announced itself: records what it offers for live streams, places streams that
/// had no node on it (when it offers a live edge), sends it its whole set of streams
/// (`SyncLiveStreams`) and records the publishers it says are live.
pub(crate) async fn on_announcement(
    store: &dyn Store,
    client: Option<NodeClient>,
    node_id: &str,
    announcement: &pb::NodeAnnouncement,
    now_ms: i64,
) -> Result<(), StoreError> {
    let node = VsNode {
        node_id: node_id.to_string(),
        region: announcement.region.clone(),
        rtmp_base_url: announcement.live_rtmp_base_url.clone(),
        http_base_url: announcement.live_http_base_url.clone(),
    };
    store.vs_put_node(&node, now_ms).await?;
    if node.rtmp_base_url.is_empty() {
        return Ok(());
    }
    for stream in store.vs_unplaced_streams().await? {
        store.vs_place_stream(&stream.id, node_id).await?;
    }
    let mut streams = Vec::new();
    for stream in store.vs_node_streams(node_id).await? {
        if let Some(message) = live_stream_message(store, &stream, now_ms).await? {
            streams.push(message);
        }
    }
    if let Some(mut client) = client {
        let request = pb::SyncLiveStreamsRequest { streams };
        if let Err(status) = client.sync_live_streams(request).await {
            warn!(node_id, %status, "SyncLiveStreams failed");
        }
    }
    for status in &announcement.live_streams {
        on_report(store, node_id, status).await?;
    }
    Ok(())
}

/// A node's report of one publisher: the stream's state (only for a stream placed on that
/// node) and its publish session's ingest, metered once per publish id.
pub(crate) async fn on_report(
    store: &dyn Store,
    node_id: &str,
    status: &pb::LiveStreamStatus,
) -> Result<(), StoreError> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let positive = |ms: i64| (ms > 0).then_some(ms);
    let report = StreamReport {
        stream_id: status.stream_id.clone(),
        is_on: status.on,
        codec: status.codec.clone(),
        width: i64::from(status.width),
        height: i64::from(status.height),
        bitrate_bps: clamp(status.bitrate_bps),
        started_at_ms: positive(status.started_unix_ms),
        stopped_at_ms: positive(status.stopped_unix_ms),
    };
    if !store.vs_record_report(node_id, &report).await? {
        return Ok(());
    }
    if status.publish_id.is_empty() {
        return Ok(());
    }
    let Some(stream) = store.vs_stream_by_id(&status.stream_id).await? else {
        return Ok(());
    };
    store
        .vs_meter(&VsPublish {
            publish_id: status.publish_id.clone(),
            stream_id: stream.id,
            user_id: stream.user_id,
            node_id: node_id.to_string(),
            bytes_in: clamp(status.bytes_in),
            frames_in: clamp(status.frames_in),
            started_at_ms: status.started_unix_ms,
            stopped_at_ms: positive(status.stopped_unix_ms),
        })
        .await
}

#[cfg(test)]
#[path = "live_node_tests.rs"]
mod node_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_digits_and_keys_32_hex() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 16, "{id}");
            assert!(request::is_id(&id));
        }
        assert_eq!(random_hex().len(), 32);
    }

    #[test]
    fn urls_have_the_nodes_shapes_and_verify_with_their_keys() {
        let node = VsNode {
            node_id: "n1".into(),
            region: "r".into(),
            rtmp_base_url: "rtmp://10.0.0.5:1935".into(),
            http_base_url: "http://10.0.0.5:8080/".into(),
        };
        let keys = ("pk".into(), "sk".into());
        let stream = VsStream {
            node_id: Some("n1".into()),
            ..VsStream::new(
                "1624428150544871".into(),
                "u".into(),
                "1".into(),
                "n".into(),
                keys,
                0,
            )
        };
        let push = push_url(Some(&node), "live", &stream);
        let (base, auth) = push.split_once("?auth_key=").unwrap();
        assert_eq!(base, "rtmp://10.0.0.5:1935/live/1624428150544871");
        let uri = "/live/1624428150544871";
        assert!(cloudphone_core::play_auth::verify(uri, auth, &["pk"], 4_000_000_000).is_ok());
        assert_eq!(push_url(None, "live", &stream), "");
        for (protocol, shape) in [
            (
                OutProtocol::Flv,
                "http://10.0.0.5:8080/live/1624428150544871.flv",
            ),
            (
                OutProtocol::Hls,
                "http://10.0.0.5:8080/live/1624428150544871.m3u8",
            ),
            (
                OutProtocol::Webrtc,
                "http://10.0.0.5:8080/live/1624428150544871/whep",
            ),
            (
                OutProtocol::Rtmp,
                "rtmp://10.0.0.5:1935/live/1624428150544871",
            ),
        ] {
            let url = play_url(&node, "live", &stream.id, protocol, "k", 1000);
            let (base, auth) = url.split_once("?auth_key=").unwrap();
            assert_eq!(base, shape);
            let uri = base.split_once("//").unwrap().1;
            let uri = &uri[uri.find('/').unwrap()..];
            assert!(cloudphone_core::play_auth::verify(uri, auth, &["k"], 999).is_ok());
            assert!(cloudphone_core::play_auth::verify(uri, auth, &["k"], 1001).is_err());
        }
    }

    fn sample_stream(id: &str, node: Option<&str>) -> VsStream {
        let keys = ("pk".into(), "sk".into());
        VsStream {
            node_id: node.map(str::to_string),
            ..VsStream::new(id.into(), "u1".into(), "11".into(), "door".into(), keys, 0)
        }
    }

    /// A tenant `u1` with group `11` (flv,hls) holding stream `101` on `n1`.
    async fn seeded() -> (std::sync::Arc<dyn Store>, tempfile::TempDir) {
        let (store, dir) = crate::store::test_store().await;
        store
            .vs_put_tenant(&VsTenant::active("u1".into(), "AK1".into(), "x".into(), 0))
            .await
            .unwrap();
        store
            .vs_insert_group(&VsGroup {
                id: "11".into(),
                user_id: "u1".into(),
                name: "g".into(),
                description: String::new(),
                region: "r".into(),
                app: "live".into(),
                in_protocol: "rtmp".into(),
                out_protocol: "flv,hls".into(),
                lazy_pull: false,
                callback: String::new(),
                enabled: true,
                created_at_ms: 0,
            })
            .await
            .unwrap();
        store
            .vs_insert_streams(&[sample_stream("101", Some("n1"))])
            .await
            .unwrap();
        (store, dir)
    }

    async fn message(store: &dyn Store) -> pb::LiveStream {
        let stream = store.vs_stream("u1", "101").await.unwrap().unwrap();
        live_stream_message(store, &stream, 1_000)
            .await
            .unwrap()
            .unwrap()
    }

    fn change(forbidden: bool, enabled: bool) -> StreamChange {
        StreamChange {
            forbidden: Some(forbidden),
            enabled: Some(enabled),
            name: None,
        }
    }

    /// The node hears a stream admitted only while it is enabled, not forbidden, its group
    /// enabled and its tenant active; with the group's outputs plus WHEP and every key a
    /// valid URL can carry.
    #[tokio::test]
    async fn a_stream_is_admitted_only_while_every_switch_allows_it() {
        let (store, _dir) = seeded().await;
        let store = store.as_ref();
        store.vs_add_play_key("101", "old", 500, 0).await.unwrap();
        store
            .vs_add_play_key("101", "fresh", 5_000, 0)
            .await
            .unwrap();
        let first = message(store).await;
        assert!(first.admitted);
        assert_eq!(
            (
                first.app.as_str(),
                first.tenant_id.as_str(),
                first.group_id.as_str()
            ),
            ("live", "u1", "11")
        );
        assert_eq!(first.out_protocols, ["flv", "hls", "webrtc"]);
        assert_eq!(first.push_key, "pk");
        assert_eq!(first.play_keys, ["fresh", "sk"]);
        store
            .vs_change_stream("u1", "101", &change(true, true))
            .await
            .unwrap();
        assert!(!message(store).await.admitted, "forbidden");
        store
            .vs_change_stream("u1", "101", &change(false, false))
            .await
            .unwrap();
        assert!(!message(store).await.admitted, "stopped");
        store
            .vs_change_stream("u1", "101", &change(false, true))
            .await
            .unwrap();
        assert!(message(store).await.admitted);
        let mut group = store.vs_group("u1", "11").await.unwrap().unwrap();
        group.enabled = false;
        store.vs_update_group(&group).await.unwrap();
        assert!(!message(store).await.admitted, "group halted");
        group.enabled = true;
        store.vs_update_group(&group).await.unwrap();
        store
            .vs_set_tenant_status("u1", VsStatus::Suspended, 1)
            .await
            .unwrap();
        assert!(!message(store).await.admitted, "tenant suspended");
        store
            .vs_set_tenant_status("u1", VsStatus::Active, 2)
            .await
            .unwrap();
        assert!(message(store).await.admitted);
    }

    fn status(stream_id: &str, on: bool, bytes_in: u64, publish_id: &str) -> pb::LiveStreamStatus {
        pb::LiveStreamStatus {
            stream_id: stream_id.into(),
            on,
            codec: "H264".into(),
            width: 1280,
            height: 720,
            bitrate_bps: 2_000_000,
            bytes_in,
            frames_in: bytes_in / 100,
            started_unix_ms: 10_000,
            stopped_unix_ms: if on { 0 } else { 20_000 },
            publish_id: publish_id.into(),
        }
    }

    /// A node announcing a live edge takes the streams no node had, and its reports are
    /// recorded and metered once per publish; another node's reports about them are ignored.
    #[tokio::test]
    async fn announcements_place_streams_and_reports_are_recorded_and_metered_once() {
        let (store, _dir) = seeded().await;
        let store = store.as_ref();
        store
            .vs_insert_streams(&[sample_stream("102", None)])
            .await
            .unwrap();
        let announcement = pb::NodeAnnouncement {
            region: "r".into(),
            live_rtmp_base_url: "rtmp://n2:1935".into(),
            live_http_base_url: "http://n2:8080".into(),
            live_streams: vec![status("102", true, 1_000, "pub-1")],
            ..pb::NodeAnnouncement::default()
        };
        on_announcement(store, None, "n2", &announcement, 5)
            .await
            .unwrap();
        let placed = store.vs_stream("u1", "102").await.unwrap().unwrap();
        assert_eq!(placed.node_id.as_deref(), Some("n2"));
        assert!(placed.is_on);
        assert_eq!(
            (placed.codec.as_str(), placed.width, placed.started_at_ms),
            ("H264", 1280, Some(10_000))
        );
        // The same publish reported again, then ended: one metered row, its latest figures.
        on_report(store, "n2", &status("102", true, 5_000, "pub-1"))
            .await
            .unwrap();
        on_report(store, "n2", &status("102", false, 6_000, "pub-1"))
            .await
            .unwrap();
        let metered = store.vs_publishes("u1").await.unwrap();
        assert_eq!(metered.len(), 1);
        assert_eq!(
            (
                metered[0].bytes_in,
                metered[0].frames_in,
                metered[0].stopped_at_ms
            ),
            (6_000, 60, Some(20_000))
        );
        let stopped = store.vs_stream("u1", "102").await.unwrap().unwrap();
        assert!(!stopped.is_on);
        assert_eq!(stopped.stopped_at_ms, Some(20_000));
        // Stream 101 is n1's: n2 cannot report it on, nor meter it.
        on_report(store, "n2", &status("101", true, 9, "pub-2"))
            .await
            .unwrap();
        assert!(!store.vs_stream("u1", "101").await.unwrap().unwrap().is_on);
        assert_eq!(store.vs_publishes("u1").await.unwrap().len(), 1);
        // A node without a live edge takes nothing.
        store
            .vs_insert_streams(&[sample_stream("103", None)])
            .await
            .unwrap();
        on_announcement(store, None, "n3", &pb::NodeAnnouncement::default(), 6)
            .await
            .unwrap();
        assert_eq!(
            store.vs_stream("u1", "103").await.unwrap().unwrap().node_id,
            None
        );
    }
}
