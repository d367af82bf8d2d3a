//! The agent's state (load, attached monitor, last poll) and the gRPC service that exposes it.
//! Protocol types are converted here and go no further. Under TLS, the control calls (attach,
//! detach, load target, removal) are taken only from the monitor's certificate.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use autoscaler_policy::time::unix_ms;
use autoscaler_policy::{HookReport, Lifecycle};

use autoscaler_proto::tls::{Role, require_caller};
use autoscaler_proto::v1;
use autoscaler_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::hooks::{self, HookConfig, HookResult, Transition};
use crate::load::{CpuSampler, LoadModel, is_percent};

/// Where the load comes from.
#[derive(Debug)]
pub enum LoadSource {
    Simulated(LoadModel),
    Cpu(CpuSampler),
    /// The application's own counters, read by the sampler task (`crate::app_load`), which
    /// records each sample with `AgentState::record_app`.
    App,
}

/// The monitor that currently watches this agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub monitor_id: String,
    pub poll_interval: Duration,
}

/// One load sample and when it was taken.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub load: f64,
    /// No load to report yet: the application has not answered the agent once.
    pub unknown: bool,
    pub cpu: Option<f64>,
    /// Requests the application served per second, when the load comes from it.
    pub requests_per_second: Option<f64>,
    pub sampled_at: SystemTime,
}

/// Everything the agent knows, shared by the gRPC service, the sampler and the registrar.
#[derive(Debug)]
pub struct AgentState {
    instance_id: String,
    started: Instant,
    polls: std::sync::atomic::AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: LoadSource,
    sample: Sample,
    attachment: Option<Attachment>,
    last_activity: Instant,
    removal_reason: Option<String>,
    hooks: HookConfig,
    /// Where the lifecycle hooks hold the instance, once it has any.
    hook: Option<HookReport>,
    /// When the running termination hook's timeout ends.
    termination_deadline: Option<Instant>,
}

impl AgentState {
    pub fn new(instance_id: String, mut source: LoadSource) -> Arc<AgentState> {
        let load = match &mut source {
            LoadSource::Simulated(model) => model.value(),
            LoadSource::Cpu(sampler) => sampler.sample().unwrap_or(0.0),
            LoadSource::App => 0.0,
        };
        // The app's load is unknown until the app has answered once.
        let unknown = matches!(source, LoadSource::App);
        let cpu = matches!(source, LoadSource::Cpu(_)).then_some(load);
        let now = Instant::now();
        Arc::new(AgentState {
            instance_id,
            started: now,
            polls: std::sync::atomic::AtomicU64::new(0),
            inner: Mutex::new(Inner {
                source,
                sample: Sample {
                    load,
                    unknown,
                    cpu,
                    requests_per_second: None,
                    sampled_at: SystemTime::now(),
                },
                attachment: None,
                last_activity: now,
                removal_reason: None,
                hooks: HookConfig::default(),
                hook: None,
                termination_deadline: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Advances the load source by `elapsed` and records a new sample.
    pub fn sample(&self, elapsed: Duration) {
        let mut inner = self.lock();
        let (load, cpu) = match &mut inner.source {
            LoadSource::Simulated(model) => (model.step(elapsed), None),
            LoadSource::Cpu(sampler) => match sampler.sample() {
                Ok(cpu) => (cpu, Some(cpu)),
                Err(error) => {
                    tracing::warn!(%error, "cannot read CPU utilisation; keeping the last sample");
                    return;
                }
            },
            // Recorded by the app's sampler as its counters are read.
            LoadSource::App => return,
        };
        inner.sample = Sample {
            load,
            unknown: false,
            cpu,
            requests_per_second: None,
            sampled_at: SystemTime::now(),
        };
    }

    /// Records what the application's counters say.
    pub fn record_app(&self, sample: crate::app_load::AppSample) {
        self.lock().sample = Sample {
            load: sample.load,
            unknown: false,
            cpu: None,
            requests_per_second: Some(sample.requests_per_second),
            sampled_at: SystemTime::now(),
        };
    }

    pub fn current(&self) -> Sample {
        self.lock().sample
    }

    /// Records that a monitor reached us (a poll, or the answer to a registration).
    pub fn mark_activity(&self) {
        self.lock().last_activity = Instant::now();
    }

    /// When a monitor last reached us.
    pub fn last_activity(&self) -> Instant {
        self.lock().last_activity
    }

    pub fn attachment(&self) -> Option<Attachment> {
        self.lock().attachment.clone()
    }

    pub fn attach(&self, attachment: Attachment) {
        let mut inner = self.lock();
        inner.attachment = Some(attachment);
        inner.last_activity = Instant::now();
    }

    /// Forgets the monitor if it is the one given; true if it was.
    pub fn detach(&self, monitor_id: &str) -> bool {
        let mut inner = self.lock();
        let matches = inner
            .attachment
            .as_ref()
            .is_some_and(|attachment| attachment.monitor_id == monitor_id);
        if matches {
            inner.attachment = None;
        }
        matches
    }

    /// Why the instance is being removed, once the controller said so.
    pub fn removal_reason(&self) -> Option<String> {
        self.lock().removal_reason.clone()
    }

    fn set_target(&self, target: f64, hold: bool) -> Result<f64, Status> {
        let mut inner = self.lock();
        let current = inner.sample.load;
        match &mut inner.source {
            LoadSource::Simulated(model) => {
                if model.set_target(target, hold) {
                    Ok(current)
                } else {
                    Err(Status::invalid_argument(format!(
                        "target_percent {target} is outside 0-100"
                    )))
                }
            }
            LoadSource::Cpu(_) => Err(Status::failed_precondition(
                "this agent reports the host's real CPU load, which has no target",
            )),
            LoadSource::App => Err(Status::failed_precondition(
                "this agent reports its application's real load: send it requests instead",
            )),
        }
    }

    /// Sets the lifecycle hooks; with a launch hook the instance is in Pending:Wait from now
    /// until `run_launch_hook` ends.
    pub fn set_hooks(&self, hooks: HookConfig) {
        let mut inner = self.lock();
        if hooks.launch.is_some() {
            inner.hook = Some(HookReport {
                state: Lifecycle::PendingWait,
                ..HookReport::default()
            });
        }
        inner.hooks = hooks;
    }

    /// Where the lifecycle hooks hold the instance, when it has any.
    pub fn hook(&self) -> Option<HookReport> {
        self.lock().hook.clone()
    }

    /// Whether a lifecycle hook holds the instance (its load then means nothing to the fleet).
    pub fn held(&self) -> bool {
        self.lock()
            .hook
            .as_ref()
            .is_some_and(|h| h.state != Lifecycle::InService)
    }

    /// Runs the launch hook, if there is one, and records its outcome: in service, or
    /// abandoned.
    pub async fn run_launch_hook(&self) {
        let (command, timeout, default) = {
            let inner = self.lock();
            match &inner.hooks.launch {
                Some(command) => (
                    command.clone(),
                    inner.hooks.timeout,
                    inner.hooks.default_result,
                ),
                None => return,
            }
        };
        tracing::info!(%command, "Pending:Wait: running the launch hook");
        let outcome = hooks::run(
            &command,
            Transition::Launch,
            &self.instance_id,
            timeout,
            default,
        )
        .await;
        let state = match outcome.result {
            HookResult::Continue => Lifecycle::InService,
            HookResult::Abandon => Lifecycle::Abandoned,
        };
        tracing::info!(summary = %outcome.summary, tail = %outcome.output_tail, "launch hook ended: {state}");
        self.lock().hook = Some(HookReport {
            state,
            summary: outcome.summary,
            output_tail: outcome.output_tail,
        });
    }

    /// Starts the termination hook (once), if there is one; returns how long it may still
    /// run (zero: none, or it has ended).
    pub fn begin_termination_hook(self: &Arc<Self>) -> Duration {
        let mut inner = self.lock();
        let Some(command) = inner.hooks.termination.clone() else {
            return Duration::ZERO;
        };
        match inner.hook.as_ref().map(|h| h.state) {
            Some(Lifecycle::TerminatingWait) => {
                return inner.termination_deadline.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                });
            }
            Some(Lifecycle::TerminatingProceed) => return Duration::ZERO,
            _ => {}
        }
        let timeout = inner.hooks.timeout;
        let default = inner.hooks.default_result;
        inner.termination_deadline = Some(Instant::now() + timeout);
        inner.hook = Some(HookReport {
            state: Lifecycle::TerminatingWait,
            ..HookReport::default()
        });
        drop(inner);
        tracing::info!(%command, "Terminating:Wait: running the termination hook");
        let state = self.clone();
        tokio::spawn(async move {
            let outcome = hooks::run(
                &command,
                Transition::Termination,
                &state.instance_id,
                timeout,
                default,
            )
            .await;
            tracing::info!(summary = %outcome.summary, tail = %outcome.output_tail, "termination hook ended");
            state.lock().hook = Some(HookReport {
                state: Lifecycle::TerminatingProceed,
                summary: outcome.summary,
                output_tail: outcome.output_tail,
            });
        });
        timeout
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Heartbeats answered so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The `autoscaler.v1.Agent` gRPC service.
#[derive(Clone, Debug)]
pub struct AgentService {
    state: Arc<AgentState>,
}

impl AgentService {
    pub fn new(state: Arc<AgentState>) -> AgentService {
        AgentService { state }
    }

    /// The current sample, as Ping and GetMetrics answer it.
    fn metrics(&self) -> v1::Metrics {
        let sample = self.state.current();
        v1::Metrics {
            load_percent: sample.load,
            sampled_at_unix_ms: unix_ms(sample.sampled_at),
            cpu_percent: sample.cpu,
            memory_percent: None,
            requests_per_second: sample.requests_per_second,
            load_unknown: sample.unknown || self.state.held(),
        }
    }

    fn lifecycle(&self) -> Option<v1::Lifecycle> {
        self.state.hook().map(|hook| v1::Lifecycle {
            state: match hook.state {
                Lifecycle::InService => v1::LifecycleState::InService,
                Lifecycle::PendingWait => v1::LifecycleState::PendingWait,
                Lifecycle::Abandoned => v1::LifecycleState::Abandoned,
                Lifecycle::TerminatingWait => v1::LifecycleState::TerminatingWait,
                Lifecycle::TerminatingProceed => v1::LifecycleState::TerminatingProceed,
            } as i32,
            summary: hook.summary,
            output_tail: hook.output_tail,
        })
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn ping(
        &self,
        request: Request<v1::PingRequest>,
    ) -> Result<Response<v1::PingResponse>, Status> {
        self.state.mark_activity();
        self.state
            .polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(v1::PingResponse {
            instance_id: self.state.instance_id.clone(),
            agent_version: autoscaler_proto::VERSION.to_string(),
            uptime_ms: self.state.uptime().as_millis() as u64,
            sequence: request.into_inner().sequence,
            metrics: Some(self.metrics()),
            lifecycle: self.lifecycle(),
        }))
    }

    async fn get_metrics(
        &self,
        _request: Request<v1::GetMetricsRequest>,
    ) -> Result<Response<v1::GetMetricsResponse>, Status> {
        self.state.mark_activity();
        Ok(Response::new(v1::GetMetricsResponse {
            instance_id: self.state.instance_id.clone(),
            metrics: Some(self.metrics()),
        }))
    }

    async fn attach_monitor(
        &self,
        request: Request<v1::AttachMonitorRequest>,
    ) -> Result<Response<v1::AttachMonitorResponse>, Status> {
        require_caller(&request, Role::Monitor)?;
        let request = request.into_inner();
        if request.monitor_id.is_empty() {
            return Err(Status::invalid_argument("monitor_id is empty"));
        }
        if request.poll_interval_ms == 0 || request.poll_interval_ms > 3_600_000 {
            return Err(Status::invalid_argument(format!(
                "poll_interval_ms {} is outside 1-3600000",
                request.poll_interval_ms
            )));
        }
        let attachment = Attachment {
            monitor_id: request.monitor_id,
            poll_interval: Duration::from_millis(request.poll_interval_ms),
        };
        if self.state.attachment().as_ref() != Some(&attachment) {
            tracing::info!(monitor_id = %attachment.monitor_id, poll_interval = ?attachment.poll_interval, "monitor attached");
        }
        self.state.attach(attachment);
        Ok(Response::new(v1::AttachMonitorResponse {}))
    }

    async fn detach_monitor(
        &self,
        request: Request<v1::DetachMonitorRequest>,
    ) -> Result<Response<v1::DetachMonitorResponse>, Status> {
        require_caller(&request, Role::Monitor)?;
        let monitor_id = request.into_inner().monitor_id;
        if self.state.detach(&monitor_id) {
            tracing::info!(%monitor_id, "monitor detached");
        }
        Ok(Response::new(v1::DetachMonitorResponse {}))
    }

    async fn set_load_target(
        &self,
        request: Request<v1::SetLoadTargetRequest>,
    ) -> Result<Response<v1::SetLoadTargetResponse>, Status> {
        require_caller(&request, Role::Monitor)?;
        let request = request.into_inner();
        if !is_percent(request.target_percent) {
            return Err(Status::invalid_argument(format!(
                "target_percent {} is outside 0-100",
                request.target_percent
            )));
        }
        let current = self
            .state
            .set_target(request.target_percent, request.hold)?;
        tracing::debug!(
            target = request.target_percent,
            hold = request.hold,
            "load target set"
        );
        Ok(Response::new(v1::SetLoadTargetResponse {
            current_load_percent: current,
        }))
    }

    async fn notify_removal(
        &self,
        request: Request<v1::NotifyRemovalRequest>,
    ) -> Result<Response<v1::NotifyRemovalResponse>, Status> {
        require_caller(&request, Role::Monitor)?;
        let mut reason = request.into_inner().reason;
        reason.truncate(256);
        tracing::info!(%reason, "this instance is being removed; no more registrations");
        self.state.lock().removal_reason = Some(reason);
        let hook = self.state.begin_termination_hook();
        Ok(Response::new(v1::NotifyRemovalResponse {
            termination_hook_timeout_ms: hook.as_millis() as u64,
        }))
    }
}

#[cfg(test)]
mod unknown_load_tests {
    use super::*;

    /// Outside test, finding 7: an agent that reports its application's load reports none
    /// until the application has answered it (before, 0 %: an idle instance, put in service).
    #[test]
    fn the_app_s_load_is_unknown_until_the_app_answered() {
        let state = AgentState::new("local-0001".into(), LoadSource::App);
        assert!(state.current().unknown);
        state.record_app(crate::app_load::AppSample {
            load: 12.0,
            requests_per_second: 3.0,
        });
        let sample = state.current();
        assert!(!sample.unknown);
        assert_eq!(sample.load, 12.0);
    }
}
