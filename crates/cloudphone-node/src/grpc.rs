//! The node's gRPC service: control's requests mapped onto the instance manager, and the report
//! stream (announcement, heartbeats, instance events) control watches the node through.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_proto::node_v1::node_agent_server::NodeAgent;
use cloudphone_proto::node_v1::{self as pb, node_report::Report};
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
use tonic::{Request, Response, Status};

use crate::instances::{InstanceError, InstanceManager, InstanceView};
use crate::runtime::{CommandOutput, CommandSpec, InstanceSpec};
use crate::streaming::sessions::{SessionError, Sessions};

/// Commands without a timeout get this one.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// No command may run longer than this.
pub(crate) const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Output per stream when the request names no cap.
pub(crate) const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
/// Finished async jobs kept for GetCommand.
const MAX_FINISHED_JOBS: usize = 1024;

/// Who this node is, as announced on every report stream.
#[derive(Debug, Clone)]
pub(crate) struct NodeIdentity {
    pub node_id: String,
    pub grpc_endpoint: String,
    pub signaling_base_url: String,
    pub capacity: u32,
    pub runtime: String,
    pub encoders: Vec<String>,
    pub region: String,
    pub heartbeat_interval: Duration,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub(crate) struct NodeService {
    manager: Arc<InstanceManager>,
    identity: Arc<NodeIdentity>,
    /// Report streams currently open (control connected). The announcer stays quiet while > 0.
    open_streams: Arc<AtomicUsize>,
    jobs: Arc<Mutex<HashMap<String, pb::CommandJob>>>,
    sessions: Arc<Sessions>,
    /// Downloads application packages for InstallApp, behind the address policy and the
    /// node's download cap.
    downloads: Arc<crate::apps::Downloads>,
    /// Usage records on disk until control acknowledges them.
    usage: crate::usage_buffer::UsageBuffer,
    /// The live edge: control's admission table, and the publishes it reports.
    live: Arc<crate::live::Live>,
}

impl NodeService {
    pub(crate) fn new(
        manager: Arc<InstanceManager>,
        identity: NodeIdentity,
        sessions: Arc<Sessions>,
        usage: crate::usage_buffer::UsageBuffer,
        downloads: crate::apps::Downloads,
        live: Arc<crate::live::Live>,
    ) -> Self {
        Self {
            manager,
            identity: Arc::new(identity),
            open_streams: Arc::new(AtomicUsize::new(0)),
            jobs: Arc::new(Mutex::new(HashMap::new())),
            sessions,
            downloads: Arc::new(downloads),
            usage,
            live,
        }
    }

    /// Number of control report streams open right now.
    pub(crate) fn open_streams(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.open_streams)
    }

    /// The instance spec CreateInstance (and RestoreInstance, for an instance the node does not
    /// hold) asks for, checked against this node's runtime and the size limits.
    fn instance_spec(&self, r: pb::CreateInstanceRequest) -> Result<InstanceSpec, Status> {
        valid_id(&r.instance_id)?;
        if !r.runtime.is_empty() && r.runtime != self.manager.runtime_name() {
            return Err(Status::invalid_argument(format!(
                "this node runs {}, not {}",
                self.manager.runtime_name(),
                r.runtime
            )));
        }
        if !(64..=4096).contains(&r.width) || !(64..=4096).contains(&r.height) {
            return Err(Status::invalid_argument(
                "width and height must be 64..=4096",
            ));
        }
        Ok(InstanceSpec {
            instance_id: r.instance_id,
            tenant_id: r.tenant_id,
            width: r.width,
            height: r.height,
            os: r.os,
        })
    }

    /// The spec RestoreInstance recreates `instance_id` from when the node does not hold it.
    fn restore_spec(
        &self,
        spec: Option<pb::CreateInstanceRequest>,
        instance_id: &str,
    ) -> Result<InstanceSpec, Status> {
        let spec = spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        if spec.instance_id != instance_id {
            return Err(Status::invalid_argument("spec names another instance"));
        }
        self.instance_spec(spec)
    }

    /// Refuses an invalid id or an instance this node does not hold.
    async fn existing(&self, id: &str) -> Result<(), Status> {
        valid_id(id)?;
        self.manager.status(id).await.map(drop).map_err(to_status)
    }

    /// Start, stop, reboot, reset and status: `op` on the named instance, answered with its
    /// status afterwards.
    async fn lifecycle(
        &self,
        request: Request<pb::InstanceRef>,
        op: impl AsyncFnOnce(&InstanceManager, &str) -> Result<InstanceView, InstanceError>,
    ) -> Reply<pb::InstanceStatus> {
        let id = instance_id(request)?;
        let view = op(&self.manager, &id).await.map_err(to_status)?;
        Ok(Response::new(status_of(&view, self.manager.runtime_name())))
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, pb::CommandJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Proto form of a lifecycle state.
pub(crate) fn proto_state(state: InstanceState) -> pb::InstanceState {
    match state {
        InstanceState::Stopped => pb::InstanceState::Stopped,
        InstanceState::Starting => pb::InstanceState::Starting,
        InstanceState::Running => pb::InstanceState::Running,
        InstanceState::Resetting => pb::InstanceState::Resetting,
        InstanceState::Failed => pb::InstanceState::Failed,
        InstanceState::BackingUp => pb::InstanceState::BackingUp,
        InstanceState::Restoring => pb::InstanceState::Restoring,
    }
}

pub(crate) fn status_of(view: &InstanceView, runtime: &str) -> pb::InstanceStatus {
    pb::InstanceStatus {
        instance_id: view.spec.instance_id.clone(),
        state: proto_state(view.state) as i32,
        runtime: runtime.to_string(),
        width: view.spec.width,
        height: view.spec.height,
        message: view.message.clone(),
        changed_at_unix_ms: view.changed_at_unix_ms,
    }
}

fn to_status(error: InstanceError) -> Status {
    match &error {
        InstanceError::NotFound(_) => Status::not_found(error.to_string()),
        InstanceError::AlreadyExists(_) => Status::already_exists(error.to_string()),
        InstanceError::NoCapacity => Status::resource_exhausted(error.to_string()),
        InstanceError::InvalidState { .. } => Status::failed_precondition(error.to_string()),
        InstanceError::Runtime(crate::runtime::RuntimeError::Unsupported(_)) => {
            Status::unimplemented(error.to_string())
        }
        _ => {
            tracing::warn!(%error, "instance operation failed");
            Status::internal(error.to_string())
        }
    }
}

/// The one instance id rule (`cloudphone_core::instance::InstanceId`), as a gRPC refusal.
fn valid_id(id: &str) -> Result<(), Status> {
    cloudphone_core::instance::InstanceId::parse(id)
        .map(drop)
        .map_err(|error| Status::invalid_argument(format!("instance_id: {error}")))
}

/// A request naming one instance: its id, checked by the one rule.
fn instance_id(request: Request<pb::InstanceRef>) -> Result<String, Status> {
    let id = request.into_inner().instance_id;
    valid_id(&id)?;
    Ok(id)
}

/// The instance a backup or restore names, and its archive on this host.
fn archive_target(instance_id: &str, uri: &str) -> Result<std::path::PathBuf, Status> {
    valid_id(instance_id)?;
    crate::instances::archive_path(uri).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn command_spec(request: &pb::RunCommandRequest) -> Result<CommandSpec, Status> {
    valid_id(&request.instance_id)?;
    if request.command.is_empty() {
        return Err(Status::invalid_argument("command is empty"));
    }
    let timeout = match request.timeout_ms {
        0 => DEFAULT_COMMAND_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_COMMAND_TIMEOUT),
    };
    let cap = match request.max_output_bytes {
        0 => DEFAULT_OUTPUT_CAP,
        n => n as usize,
    };
    Ok(CommandSpec {
        command: request.command.clone(),
        timeout,
        max_output_bytes: cap,
    })
}

fn command_result(output: CommandOutput) -> pb::CommandResult {
    pb::CommandResult {
        exit_code: output.exit_code,
        stdout: output.stdout,
        stderr: output.stderr,
        truncated: output.truncated,
        timed_out: output.timed_out,
        duration_ms: u32::try_from(output.duration.as_millis()).unwrap_or(u32::MAX),
    }
}

/// A `LiveStream` from control, refused when its id or app could not appear in a URL path.
fn live_stream(s: pb::LiveStream) -> Result<crate::live::admission::StreamRule, Status> {
    let segment = |v: &str| {
        !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !segment(&s.stream_id) || !segment(&s.app) {
        return Err(Status::invalid_argument(
            "stream_id and app must be 1..=128 of [A-Za-z0-9._-]",
        ));
    }
    Ok(crate::convert::live_rule(s))
}

/// What every unary NodeAgent method answers.
type Reply<T> = Result<Response<T>, Status>;

type ReportStream = Pin<Box<dyn Stream<Item = Result<pb::NodeReport, Status>> + Send + 'static>>;

/// Decrements the open-stream count when a report stream is dropped.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeService {
    type OpenReportsStream = ReportStream;

    async fn open_reports(
        &self,
        request: Request<pb::OpenReportsRequest>,
    ) -> Result<Response<Self::OpenReportsStream>, Status> {
        tracing::info!(control_id = %request.get_ref().control_id, "control opened the report stream");
        self.open_streams.fetch_add(1, Ordering::SeqCst);
        let guard = StreamGuard(Arc::clone(&self.open_streams));
        let runtime = self.manager.runtime_name();
        // Subscribe before listing, so no change between the two is missed.
        let events =
            BroadcastStream::new(self.manager.subscribe()).filter_map(move |event| match event {
                Ok(view) => Some(Ok(pb::NodeReport {
                    report: Some(Report::InstanceEvent(status_of(&view, runtime))),
                })),
                // A lagging receiver skipped events; the next heartbeat-era announcement is not
                // resent, so control re-reads state through GetInstanceStatus when it needs it.
                Err(_) => None,
            });
        let instances = self.manager.list().await;
        // Likewise for publishes: subscribed before the announcement lists those on.
        let live_events = BroadcastStream::new(self.live.subscribe_reports()).filter_map(|s| {
            // A lagging receiver missed a status; the next one (every few seconds) replaces it.
            s.ok().map(|s| {
                Ok(pb::NodeReport {
                    report: Some(Report::LiveStream(crate::convert::live_status(s))),
                })
            })
        });
        let identity = Arc::clone(&self.identity);
        let announcement = pb::NodeAnnouncement {
            node_id: identity.node_id.clone(),
            grpc_endpoint: identity.grpc_endpoint.clone(),
            signaling_base_url: identity.signaling_base_url.clone(),
            capacity: identity.capacity,
            runtimes: vec![identity.runtime.clone()],
            encoders: identity.encoders.clone(),
            region: identity.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            instances: instances.iter().map(|v| status_of(v, runtime)).collect(),
            heartbeat_interval_ms: u32::try_from(identity.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            live_streams: self
                .live
                .publishing()
                .into_iter()
                .map(crate::convert::live_status)
                .collect(),
            live_rtmp_base_url: self.live.rtmp_base_url.clone(),
            live_http_base_url: self.live.http_base_url.clone(),
        };
        let manager = Arc::clone(&self.manager);
        let sessions = Arc::clone(&self.sessions);
        let mut interval = tokio::time::interval(identity.heartbeat_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeats = IntervalStream::new(interval).then(move |_| {
            let manager = Arc::clone(&manager);
            let live = sessions.live_viewers();
            async move {
                let views = manager.list().await;
                let running = views
                    .iter()
                    .filter(|v| v.state == InstanceState::Running)
                    .count();
                Ok(pb::NodeReport {
                    report: Some(Report::Heartbeat(pb::Heartbeat {
                        sent_at_unix_ms: crate::unix_ms(),
                        instances: views.len() as u32,
                        running_instances: running as u32,
                        live_sessions: u32::try_from(live).unwrap_or(u32::MAX),
                    })),
                })
            }
        });
        let first = tokio_stream::once(Ok(pb::NodeReport {
            report: Some(Report::Announcement(announcement)),
        }));
        // Usage records (see UsageBuffer::deliveries).
        let usage = self.usage.deliveries().map(|record| {
            Ok(pb::NodeReport {
                report: Some(Report::Usage(record)),
            })
        });
        let stream = first
            .chain(heartbeats.merge(events).merge(usage).merge(live_events))
            .map(move |item| {
                // Keep the guard alive exactly as long as the stream.
                let _ = &guard;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_usage(
        &self,
        request: Request<pb::AckUsageRequest>,
    ) -> Result<Response<pb::AckUsageResponse>, Status> {
        let ids = request.into_inner().record_ids;
        let removed = self.usage.acknowledge(&ids);
        tracing::debug!(acked = ids.len(), removed, "usage records acknowledged");
        Ok(Response::new(pb::AckUsageResponse {}))
    }

    async fn create_instance(
        &self,
        r: Request<pb::CreateInstanceRequest>,
    ) -> Reply<pb::InstanceStatus> {
        let spec = self.instance_spec(r.into_inner())?;
        // In a task of its own: tonic drops a handler whose caller went away (a control
        // replica killed mid-call), and a creation dropped half-way left the instance
        // "starting" for good. Spawned, it finishes and reports its outcome on the report
        // streams (docs/reliability.md, section 4.3).
        let manager = Arc::clone(&self.manager);
        let view = tokio::spawn(async move { manager.create(spec).await })
            .await
            .map_err(|e| Status::internal(format!("instance creation panicked: {e}")))?
            .map_err(to_status)?;
        Ok(Response::new(status_of(&view, self.manager.runtime_name())))
    }

    async fn delete_instance(
        &self,
        r: Request<pb::InstanceRef>,
    ) -> Reply<pb::DeleteInstanceResponse> {
        let existed = self
            .manager
            .delete(&instance_id(r)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteInstanceResponse { existed }))
    }

    async fn start_instance(&self, r: Request<pb::InstanceRef>) -> Reply<pb::InstanceStatus> {
        self.lifecycle(r, InstanceManager::start).await
    }

    async fn stop_instance(&self, r: Request<pb::InstanceRef>) -> Reply<pb::InstanceStatus> {
        self.lifecycle(r, InstanceManager::stop).await
    }

    async fn reboot_instance(&self, r: Request<pb::InstanceRef>) -> Reply<pb::InstanceStatus> {
        self.lifecycle(r, InstanceManager::reboot).await
    }

    async fn reset_instance(&self, r: Request<pb::InstanceRef>) -> Reply<pb::InstanceStatus> {
        self.lifecycle(r, InstanceManager::reset).await
    }

    async fn get_instance_status(&self, r: Request<pb::InstanceRef>) -> Reply<pb::InstanceStatus> {
        self.lifecycle(r, InstanceManager::status).await
    }

    async fn list_instances(
        &self,
        _r: Request<pb::ListInstancesRequest>,
    ) -> Reply<pb::ListInstancesResponse> {
        let runtime = self.manager.runtime_name();
        let views = self.manager.list().await;
        let instances = views.iter().map(|v| status_of(v, runtime)).collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn run_command(&self, r: Request<pb::RunCommandRequest>) -> Reply<pb::CommandResult> {
        let request = r.into_inner();
        let spec = command_spec(&request)?;
        let output = self
            .manager
            .run_command(&request.instance_id, spec)
            .await
            .map_err(to_status)?;
        Ok(Response::new(command_result(output)))
    }

    async fn start_command(&self, r: Request<pb::RunCommandRequest>) -> Reply<pb::CommandJob> {
        let request = r.into_inner();
        let spec = command_spec(&request)?;
        // Fail fast on unknown instances rather than queueing a job that cannot run.
        self.existing(&request.instance_id).await?;
        let job_id = uuid::Uuid::new_v4().simple().to_string();
        let job = pb::CommandJob {
            job_id: job_id.clone(),
            instance_id: request.instance_id.clone(),
            state: pb::JobState::Queued as i32,
            result: None,
            error: String::new(),
        };
        {
            let mut jobs = self.jobs();
            if jobs.len() >= MAX_FINISHED_JOBS {
                let finished: Vec<String> = jobs
                    .iter()
                    .filter(|(_, j)| {
                        j.state == pb::JobState::Done as i32
                            || j.state == pb::JobState::Failed as i32
                    })
                    .map(|(id, _)| id.clone())
                    .take(jobs.len() / 2)
                    .collect();
                for id in finished {
                    jobs.remove(&id);
                }
            }
            jobs.insert(job_id.clone(), job.clone());
        }
        let service = self.clone();
        tokio::spawn(async move {
            if let Some(job) = service.jobs().get_mut(&job_id) {
                job.state = pb::JobState::Running as i32;
            }
            let outcome = service
                .manager
                .run_command(&request.instance_id, spec)
                .await;
            if let Some(job) = service.jobs().get_mut(&job_id) {
                match outcome {
                    Ok(output) => {
                        job.state = pb::JobState::Done as i32;
                        job.result = Some(command_result(output));
                    }
                    Err(error) => {
                        job.state = pb::JobState::Failed as i32;
                        job.error = error.to_string();
                    }
                }
            }
        });
        Ok(Response::new(job))
    }

    async fn get_command(&self, r: Request<pb::CommandJobRef>) -> Reply<pb::CommandJob> {
        let id = r.into_inner().job_id;
        self.jobs()
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no job {id}")))
    }

    async fn install_app(
        &self,
        request: Request<pb::InstallAppRequest>,
    ) -> Result<Response<pb::InstallAppResponse>, Status> {
        let r = request.into_inner();
        valid_id(&r.instance_id)?;
        // Unknown or stopped instances fail before anything is downloaded.
        self.manager
            .status(&r.instance_id)
            .await
            .map_err(to_status)?;
        let expected = crate::apps::Expected {
            md5: r.md5.to_ascii_lowercase(),
            size: r.size.map(|s| s.min_bytes..=s.max_bytes),
        };
        let downloads = self.manager.state_dir().join("downloads");
        let answer = |failure: pb::InstallFailure, message: String| {
            Ok(Response::new(pb::InstallAppResponse {
                failure: failure as i32,
                message,
            }))
        };
        // Details (addresses, statuses, digests, installer output) go to the log; the tenant
        // gets the failure class and a generic message.
        let package = match self
            .downloads
            .fetch(&r.package_url, &expected, &downloads)
            .await
        {
            Ok(package) => package,
            Err(error) => {
                tracing::warn!(instance = %r.instance_id, %error, "package download failed");
                let (failure, message) = error.failure();
                return answer(failure, message.to_owned());
            }
        };
        match self
            .manager
            .install_app(&r.instance_id, &package.path)
            .await
        {
            Ok(()) => answer(pb::InstallFailure::None, String::new()),
            Err(error) => {
                tracing::warn!(instance = %r.instance_id, %error, "package install failed");
                answer(pb::InstallFailure::Install, "install app failed".to_owned())
            }
        }
    }

    async fn backup_instance(
        &self,
        r: Request<pb::BackupInstanceRequest>,
    ) -> Reply<pb::BackupInstanceResponse> {
        let r = r.into_inner();
        let dest = archive_target(&r.instance_id, &r.destination_uri)?;
        let archive_bytes = self
            .manager
            .backup(&r.instance_id, &dest)
            .await
            .map_err(to_status)?;
        // The data lives in the archive now: free the slot for other instances.
        self.manager
            .release_backed_up(&r.instance_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::BackupInstanceResponse { archive_bytes }))
    }

    async fn restore_instance(
        &self,
        r: Request<pb::RestoreInstanceRequest>,
    ) -> Reply<pb::InstanceStatus> {
        let r = r.into_inner();
        let spec = self.restore_spec(r.spec, &r.instance_id)?;
        let src = archive_target(&r.instance_id, &r.source_uri)?;
        let view = self.manager.restore(spec, &src).await.map_err(to_status)?;
        Ok(Response::new(status_of(&view, self.manager.runtime_name())))
    }

    async fn set_video_config(
        &self,
        r: Request<pb::SetVideoConfigRequest>,
    ) -> Reply<pb::SetVideoConfigResponse> {
        let r = r.into_inner();
        self.existing(&r.instance_id).await?;
        let config = crate::convert::video_config(r.profiles)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sessions_updated = self.sessions.set_video_config(&r.instance_id, config);
        Ok(Response::new(pb::SetVideoConfigResponse {
            sessions_updated,
        }))
    }

    async fn start_session(
        &self,
        r: Request<pb::StartSessionRequest>,
    ) -> Reply<pb::StartSessionResponse> {
        let r = r.into_inner();
        valid_id(&r.instance_id)?;
        let started = self.sessions.start_session(&r).await.map_err(|e| match e {
            SessionError::UnknownInstance(_) => Status::not_found(e.to_string()),
            SessionError::NoLiveGrant => Status::failed_precondition(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        })?;
        Ok(Response::new(pb::StartSessionResponse {
            signaling_url: started.signaling_url,
            session_id: started.session_id,
            ice_servers: started.ice_servers,
        }))
    }

    async fn stop_streaming(
        &self,
        r: Request<pb::InstanceRef>,
    ) -> Reply<pb::StopStreamingResponse> {
        let streams_stopped = self.sessions.stop_streaming(&instance_id(r)?);
        Ok(Response::new(pb::StopStreamingResponse { streams_stopped }))
    }

    async fn list_streaming(
        &self,
        _: Request<pb::ListStreamingRequest>,
    ) -> Reply<pb::ListStreamingResponse> {
        Ok(Response::new(pb::ListStreamingResponse {
            instance_ids: self.sessions.streaming_instances(),
        }))
    }

    async fn release_session(
        &self,
        r: Request<pb::InstanceRef>,
    ) -> Reply<pb::ReleaseSessionResponse> {
        let sessions_released = self.sessions.release(&instance_id(r)?);
        Ok(Response::new(pb::ReleaseSessionResponse {
            sessions_released,
        }))
    }

    // The live edge (seed 003): control's word on which streams this node serves. A publisher
    // whose stream is no longer admitted is told to go before the answer goes back (its
    // connection closes within milliseconds).
    async fn sync_live_streams(
        &self,
        r: Request<pb::SyncLiveStreamsRequest>,
    ) -> Reply<pb::SyncLiveStreamsResponse> {
        let rules = r.into_inner().streams;
        let rules = rules
            .into_iter()
            .map(live_stream)
            .collect::<Result<Vec<_>, _>>()?;
        let publishers_dropped = self.live.sync(rules);
        Ok(Response::new(pb::SyncLiveStreamsResponse {
            publishers_dropped,
        }))
    }

    async fn put_live_stream(
        &self,
        r: Request<pb::LiveStream>,
    ) -> Reply<pb::PutLiveStreamResponse> {
        let publisher_dropped = self.live.put(live_stream(r.into_inner())?);
        Ok(Response::new(pb::PutLiveStreamResponse {
            publisher_dropped,
        }))
    }

    async fn remove_live_stream(
        &self,
        r: Request<pb::LiveStreamRef>,
    ) -> Reply<pb::RemoveLiveStreamResponse> {
        let id = r.into_inner().stream_id;
        let publisher_dropped = self.live.remove(&id);
        Ok(Response::new(pb::RemoveLiveStreamResponse {
            publisher_dropped,
        }))
    }
}
