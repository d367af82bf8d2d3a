//! The reconciler: every evaluation interval it lists the group's instances from the provider,
//! joins them with the monitor's fleet view, asks the policy, and acts only on a difference.
//! Provider calls are retried with backoff; a failure is recorded and never stops the loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use autoscaler_policy::forecast::DemandSample;

mod hooks;
mod observe;
mod plans;
mod retry;

pub use retry::with_retries;
mod rollout;

use observe::every_target_unhealthy;
pub use observe::observe;
use tokio::sync::{mpsc, watch};

pub use rollout::{
    COMMAND_TIMEOUT, Command, CommandError, Commands, GroupSettings, GroupUpdate, Rollout,
};

use crate::balancer::{Balancer, TargetStatus};
use crate::cloud::{Cloud, CloudInstance, InstanceState};
use crate::config::{ControllerConfig, HealthCheckType};
use crate::fleet::FleetView;
use crate::front::{Front, Removal};
use crate::launches::{ControllerMemory, Journal, Launches};
use crate::policy::{self, Decision, Observation, PolicyState};
use crate::schedule::RuntimeSchedules;
use crate::spec::{LaunchSpec, SpecVersion, Specs};
use crate::status::{ControllerStatus, DecisionRecord, ShadowVerdict, rule_kinds};

/// What the controller asks of the agents. The monitor, which knows them and holds the client
/// to reach them, implements it; the controller itself speaks no RPC.
pub trait Agents: Send + Sync + 'static {
    /// Tells the agent of `instance_id` that its instance is about to be terminated (after its
    /// drain), so it registers no more and starts its termination hook, if it has one; best
    /// effort, bounded in time by the implementation. Returns how long the hook may run.
    fn notify_removal<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>>;

    /// Forgets an instance the controller terminated.
    fn forget(&self, instance_id: &str);
}

/// Whether this controller may still act: the leader's lease, which it checks before every
/// provider call. A controller without one (a single daemon) always may.
pub trait Fence: Send + Sync + 'static {
    /// True while the lease is certainly held.
    fn holds(&self) -> bool;
    /// The lease's epoch (the leader's term).
    fn epoch(&self) -> u64;
}

/// Agents that nobody reaches: for a controller without a monitor (tests, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAgents;

impl Agents for NoAgents {
    fn notify_removal<'a>(
        &'a self,
        _instance_id: &'a str,
        _reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>> {
        Box::pin(async { None })
    }

    fn forget(&self, _instance_id: &str) {}
}

/// The control loop.
pub struct Controller<C> {
    cloud: Arc<C>,
    config: ControllerConfig,
    fleet: watch::Receiver<Arc<FleetView>>,
    agents: Arc<dyn Agents>,
    status: ControllerStatus,
    state: PolicyState,
    /// The shadow policy's config and memory.
    shadow: Option<(ControllerConfig, PolicyState)>,
    started: Instant,
    /// The load balancer in front of the group, if any, and the instances draining from it.
    front: Option<Front>,
    /// Wall-clock time at `started`, since the Unix epoch: the policy's clock starts there.
    anchor: Duration,
    /// The launches asked and not yet listed.
    launches: Launches,
    /// Where the controller's memory is kept (before every launch, and after every evaluation
    /// that changed it), and what it last kept.
    journal: Option<Arc<dyn Journal>>,
    saved: Option<ControllerMemory>,
    /// Demand the policy recorded that the journal has yet to keep.
    demand_unsaved: Vec<DemandSample>,
    /// The schedules put at run time, and the config as it was before them.
    runtime_schedules: Option<(watch::Receiver<RuntimeSchedules>, ControllerConfig)>,
    /// Whether the forecaster had fallen back at the last evaluation (its changes are said).
    forecast_fallen_back: Option<bool>,
    /// The leader's lease, when the daemon has standbys.
    fence: Option<Arc<dyn Fence>>,
    /// Whether the balancer's health checks are not acted on, as it finds every target
    /// unhealthy.
    failing_open: bool,
    /// The last observation the policy decided on, and the policy's clock then.
    last: Option<(Observation, Duration)>,
    /// The versions of the launch specification (the first is the platform's defaults: the
    /// config has no launch specification of its own yet).
    specs: Specs,
    /// The operator's commands, and what they did, said in the next decision record.
    commands: Option<mpsc::Receiver<Command>>,
    pending_notes: Vec<String>,
    /// The instances protected from scale-in.
    protected: std::collections::BTreeSet<String>,
    /// The bounds and the policy an operator set at run time.
    bounds: Option<(u32, u32)>,
    operator_policy: Option<String>,
    /// The removals waiting on their termination hooks, and what the hooks did.
    hooks: hooks::Hooks,
}

fn millis(since_epoch: Duration) -> i64 {
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

impl<C: Cloud> Controller<C> {
    pub fn new(
        cloud: Arc<C>,
        config: ControllerConfig,
        fleet: watch::Receiver<Arc<FleetView>>,
        agents: Arc<dyn Agents>,
    ) -> Controller<C> {
        let anchor = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Controller {
            shadow: config
                .shadow_config()
                .map(|shadow| (shadow, PolicyState::default())),
            cloud,
            config,
            fleet,
            agents,
            status: ControllerStatus::default(),
            state: PolicyState::default(),
            started: Instant::now(),
            front: None,
            anchor,
            launches: Launches::default(),
            journal: None,
            saved: None,
            demand_unsaved: Vec::new(),
            runtime_schedules: None,
            forecast_fallen_back: None,
            fence: None,
            failing_open: false,
            last: None,
            specs: Specs::new(LaunchSpec::default(), millis(anchor)),
            commands: None,
            pending_notes: Vec::new(),
            protected: Default::default(),
            bounds: None,
            operator_policy: None,
            hooks: hooks::Hooks::default(),
        }
    }

    /// Acts only while `fence` holds: it is checked before every provider call.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Controller<C> {
        self.fence = Some(fence);
        self
    }

    /// Whether it may call the provider now; if not, says so in `notes`.
    fn may_act(&self, notes: &mut Vec<String>, what: &str) -> bool {
        match &self.fence {
            Some(fence) if !fence.holds() => {
                notes.push(format!(
                    "{what}: not done, the lease (epoch {}) is not certainly held",
                    fence.epoch()
                ));
                false
            }
            _ => true,
        }
    }

    /// The policy's clock now (see `anchor`).
    fn clock(&self) -> Duration {
        self.anchor + self.started.elapsed()
    }

    /// Starts from the memory a previous controller left (cooldowns, the launch backoff, the
    /// launches not yet listed), and keeps its memory in `journal`: before every launch, and
    /// after every evaluation that changes it.
    pub fn with_memory(
        mut self,
        recalled: Option<&ControllerMemory>,
        journal: Arc<dyn Journal>,
    ) -> Controller<C> {
        if let Some(recalled) = recalled {
            let now = self.clock();
            self.state = PolicyState::recall(&recalled.policy, now, millis(now));
            self.launches = Launches::recall(recalled.pending_launches.clone());
            self.specs = Specs::resume(recalled.specs.clone(), LaunchSpec::default(), millis(now));
            self.protected = recalled.protected.clone();
            if let Some((min, max)) = recalled.bounds {
                let mut config = self.config.clone();
                config.min_instances = min;
                config.max_instances = max;
                match config.validate() {
                    Ok(()) => self.set_bounds(min, max),
                    Err(error) => tracing::warn!(
                        %error,
                        "the bounds an operator set ({min}, {max}) no longer check; the config's stand"
                    ),
                }
            }
            if let Some(text) = &recalled.operator_policy {
                self.recall_policy(text);
            }
            self.saved = Some(recalled.clone());
        }
        self.journal = Some(journal);
        self
    }

    /// The memory as it is now.
    fn memory(&self) -> ControllerMemory {
        let now = self.clock();
        ControllerMemory {
            policy: self.state.remember(now, millis(now)),
            pending_launches: self.launches.pending().to_vec(),
            specs: Some(self.specs.clone()),
            protected: self.protected.clone(),
            bounds: self.bounds,
            operator_policy: self.operator_policy.clone(),
        }
    }

    /// Keeps the memory in the journal if it changed since it was last kept; says why not.
    async fn save_memory(&mut self) -> Result<(), String> {
        let Some(journal) = self.journal.clone() else {
            return Ok(());
        };
        let memory = self.memory();
        if self.saved.as_ref() == Some(&memory) {
            return Ok(());
        }
        journal.save(&memory).await?;
        self.saved = Some(memory);
        Ok(())
    }

    /// The observation the last decision was made on, and the policy's clock then: with the
    /// same config and memory, `policy::evaluate` of it is the decision the controller acted on.
    pub fn last_observation(&self) -> Option<&(Observation, Duration)> {
        self.last.as_ref()
    }

    /// The launches asked and not yet listed (the status view shows them).
    pub fn pending_launches(&self) -> &[crate::launches::PendingLaunch] {
        self.launches.pending()
    }

    /// Puts `balancer` in front of the group: instances are registered with it when they enter
    /// service and drained from it (for at most `drain_timeout`) before any termination.
    pub fn with_balancer(
        mut self,
        balancer: Arc<dyn Balancer>,
        drain_timeout: Duration,
    ) -> Controller<C> {
        self.front = Some(Front::new(balancer, drain_timeout));
        self
    }

    pub fn status(&self) -> ControllerStatus {
        self.status.clone()
    }

    /// Evaluates every `evaluation_interval` until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(self.config.evaluation_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut commands = self.commands.take();
        loop {
            let command = async {
                match commands.as_mut() {
                    Some(commands) => commands.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
                Some(command) = command => {
                    self.command(command).await;
                    continue;
                }
            }
            let evaluation = self.evaluate_once();
            tokio::select! {
                () = &mut shutdown => return,
                _ = evaluation => {}
            }
        }
    }

    /// One evaluation: list, decide, act, record.
    pub async fn evaluate_once(&mut self) -> DecisionRecord {
        let keep = self.config.decision_history;
        let mut notes = std::mem::take(&mut self.pending_notes);
        if !self.may_act(&mut notes, "evaluation") {
            tracing::warn!("the lease is not certainly held: deciding nothing");
            return self.status.push(DecisionRecord::noted(notes, None), keep);
        }
        let listed = with_retries("listing instances", 3, &mut notes, &self.status, || {
            self.cloud.list()
        })
        .await;
        let instances = match listed {
            Ok(instances) => instances,
            Err(error) => {
                tracing::error!(%error, "cannot list the group's instances; no decision this time");
                notes.push(format!("list failed: {error}"));
                return self.status.push(DecisionRecord::noted(notes, None), keep);
            }
        };
        let view = self.fleet.borrow().clone();
        let uptime = self.started.elapsed();
        // The policy's clock: wall-clock time, advanced by the monotonic clock since the start,
        // so that its memory means the same to another controller (`PolicyState::remember`).
        let now = self.clock();
        // Launches not yet listed count as pending instances: the provider's list may lag its
        // launches, and nothing is launched twice for one need.
        self.launches.settle(&instances, millis(now), &mut notes);
        let unlisted = self.launches.unlisted();
        // The balancer's side: its targets, and the draining instances now done, which are
        // terminated first: they left the fleet at an earlier evaluation.
        let mut targets: Option<Vec<TargetStatus>> = None;
        let mut drained_ids = Vec::new();
        if let Some(front) = self.front.as_mut() {
            match front.targets().await {
                Ok(found) => targets = Some(found),
                Err(note) => {
                    tracing::warn!("{note}");
                    notes.push(note);
                }
            }
            for drained in front.finished(&instances, targets.as_deref()) {
                notes.push(if drained.timed_out {
                    format!(
                        "{} still had requests in flight after {:.1} s (the drain timeout)",
                        drained.instance_id,
                        drained.took.as_secs_f64()
                    )
                } else {
                    format!(
                        "drained {} in {:.1} s",
                        drained.instance_id,
                        drained.took.as_secs_f64()
                    )
                });
                drained_ids.push((drained.instance_id, drained.why));
            }
        }
        // The removals whose termination hooks are over go first; then the drained ones, which
        // may wait on their own hooks.
        let hooked = self.hooks.finished(&instances, &view, &mut notes);
        self.hooks.record_changes(&view, &mut notes);
        let mut record = DecisionRecord::noted(notes, None);
        self.terminate_now(&hooked, &mut record).await;
        self.end(&drained_ids, &view, &[], &mut record).await;
        // Instances leaving (draining, in Terminating:Wait, or drained and not terminated yet)
        // are not part of the fleet the policy sizes, but they still run.
        let draining: Vec<String> = self.front.as_ref().map_or_else(Vec::new, Front::draining);
        let hooks = &self.hooks;
        let leaving = |id: &str| {
            (draining.iter().any(|d| d == id)
                || hooks.holds(id)
                || drained_ids.iter().any(|(d, _)| d == id)
                || hooked.iter().any(|(d, _)| d == id))
                && !record.terminated.iter().any(|t| t == id)
        };
        let (gone, staying): (Vec<CloudInstance>, Vec<CloudInstance>) = instances
            .iter()
            .filter(|i| !record.terminated.contains(&i.instance_id))
            .cloned()
            .partition(|i| leaving(&i.instance_id));
        // With the balancer's health checks counting: when it finds every target unhealthy, the
        // fault is more likely its own (a wrong health path, the network) than every
        // instance's, and replacing them all would not help: its view is not acted on (ELB
        // fails open likewise, sending requests to all). Said when it starts and ends.
        let failing_open = self.config.health_check_type == HealthCheckType::LoadBalancer
            && targets.as_deref().is_some_and(every_target_unhealthy);
        if failing_open != self.failing_open {
            self.failing_open = failing_open;
            let note = if failing_open {
                "the load balancer finds every target unhealthy: its health checks are not acted \
                 on (failing open, as ELB does) until it finds one healthy"
            } else {
                "the load balancer finds a target healthy again: its health checks are acted on"
            };
            tracing::warn!("{note}");
            record.outcome.push(note.to_string());
        }
        let mut observation = observe(
            &staying,
            &unlisted,
            &view,
            targets.as_deref().filter(|_| !failing_open),
            SystemTime::now(),
            uptime,
        );
        observation.leaving = gone.len() as u32;
        observation.removals_drain = self.front.is_some();
        observation.launch_version = Some(self.specs.current().version());
        // Protection ends with the instance.
        self.protected
            .retain(|id| instances.iter().any(|i| &i.instance_id == id));
        for instance in &mut observation.instances {
            instance.protected = self.protected.contains(&instance.instance_id);
        }
        if let Some((schedules, base)) = &mut self.runtime_schedules
            && schedules.has_changed().unwrap_or(false)
        {
            self.config = schedules.borrow_and_update().applied_to(base);
        }
        // The whole decision is the policy's: the controller acts on it as it is.
        let mut decision = policy::evaluate(&observation, &self.config, &mut self.state, now);
        record.shadow = self.shadow.as_mut().map(|(config, state)| {
            let verdict = policy::evaluate(&observation, config, state, now);
            ShadowVerdict {
                desired: verdict.desired,
                differs: verdict.desired != decision.desired,
                summary: verdict.summary(),
            }
        });
        if let Some(verdict) = record.shadow.as_ref().filter(|v| v.differs) {
            tracing::info!(
                current = decision.current,
                desired = decision.desired,
                shadow_desired = verdict.desired,
                "shadow policy would decide differently: {}",
                verdict.summary
            );
        }
        self.say_forecast_changes(&decision, &mut record.outcome);
        self.last = Some((observation.clone(), now));
        self.status
            .set_instances(instances.iter().chain(&unlisted).cloned().collect());
        // Replaced instances whose processes are gone have nothing to drain: terminated at once.
        let stopped: Vec<String> = decision
            .replace
            .iter()
            .filter(|r| {
                observation.instances.iter().any(|i| {
                    i.instance_id == r.instance_id && i.cloud_state == InstanceState::Stopped
                })
            })
            .map(|r| r.instance_id.clone())
            .collect();
        let spec = self.launch_spec_for(&decision, &mut record.outcome);
        if decision.acts()
            && self.may_act(&mut record.outcome, "acting on the decision")
            && let Some(refused) = self
                .act(
                    &decision,
                    &spec,
                    &view,
                    targets.as_deref(),
                    &stopped,
                    &mut record,
                )
                .await
        {
            // The provider refused the launch after its retries: back off as for an instance
            // that died at start.
            self.status.count_launch_refused();
            decision.launch_backoff =
                policy::launch_refused(&self.config, &mut self.state, now, &refused);
            if let Some((config, state)) = self.shadow.as_mut() {
                state.launch_failed(config, now, &refused);
            }
        }
        self.status
            .set_launch_backoff(decision.launch_backoff.clone());
        self.status
            .set_plans(decision.scheduled.clone(), decision.forecast.clone());
        self.status.set_rollout(
            decision.refresh.clone(),
            spec.version(),
            self.protected.clone(),
        );
        self.save_demand().await;
        if let Err(error) = self.save_memory().await {
            tracing::warn!(%error, "cannot keep the controller's memory; trying again next time");
            record
                .outcome
                .push(format!("cannot keep the controller's memory: {error}"));
        }
        if let (Some(front), Some(targets)) = (self.front.as_ref(), targets.as_deref())
            && self.may_act(&mut record.outcome, "registering instances in service")
        {
            let remaining: Vec<CloudInstance> = instances
                .iter()
                .filter(|i| !record.terminated.contains(&i.instance_id))
                .cloned()
                .collect();
            front
                .reconcile(&remaining, &view, targets, &mut record.outcome)
                .await;
        }
        if let Some(front) = &self.front {
            self.status.set_balancing(targets, front.draining());
        }
        record.decision = Some(decision);
        let record = self.status.push(record, keep);
        if record.repeated == 0 {
            let decision = record.decision.as_ref().expect("set above");
            // Once per new record, not every evaluation the launches are held.
            if let Some(backoff) = &decision.launch_backoff
                && decision.launch == 0
                && decision
                    .rules
                    .iter()
                    .any(|r| r.rule == policy::Rule::LaunchBackoff)
            {
                tracing::warn!(
                    consecutive_failures = backoff.consecutive_failures,
                    retry_in_secs = backoff.retry_in.as_secs_f64(),
                    last_reason = %backoff.last_reason,
                    "launches are failing; holding launches"
                );
            }
            let rules: Vec<&str> = rule_kinds(decision).iter().map(|r| r.as_str()).collect();
            let missing: Vec<String> = decision.missing.iter().map(|m| m.describe()).collect();
            tracing::info!(
                sequence = record.sequence,
                current = decision.current,
                desired = decision.desired,
                recommendation = decision.recommendation,
                average_load = decision.observed.average_load,
                in_service = decision.observed.in_service,
                warming = decision.observed.warming,
                without_metric = decision.observed.without_metrics,
                unhealthy = decision.observed.unhealthy,
                // Lists, as the Debug text of a list of strings: arrays in a JSON log
                // (autoscaler_cli::LIST_FIELDS).
                missing = ?missing,
                rules = ?rules,
                outcome = ?record.outcome,
                "decision: {}",
                decision.summary()
            );
        }
        record
    }

    /// Carries out `decision`; returns the provider's reason when it refused the launch. With a
    /// balancer, an instance it sends requests to is drained first and terminated at a later
    /// evaluation, once its requests are done (but not one of `stopped`, whose processes are
    /// gone: there is nothing left to drain).
    async fn act(
        &mut self,
        decision: &Decision,
        spec: &SpecVersion,
        view: &FleetView,
        targets: Option<&[TargetStatus]>,
        stopped: &[String],
        record: &mut DecisionRecord,
    ) -> Option<String> {
        let mut replaced: Vec<String> = decision
            .replace
            .iter()
            .map(|r| r.instance_id.clone())
            .collect();
        let mut scale_in = decision.scale_in.clone();
        if let Some(front) = self.front.as_mut() {
            let (gone, running): (Vec<String>, Vec<String>) =
                replaced.into_iter().partition(|id| stopped.contains(id));
            replaced = front
                .begin(&running, Removal::Replace, targets, &mut record.outcome)
                .await;
            replaced.extend(gone);
            scale_in = front
                .begin(&scale_in, Removal::ScaleIn, targets, &mut record.outcome)
                .await;
        }
        let removals: Vec<(String, Removal)> = replaced
            .into_iter()
            .map(|id| (id, Removal::Replace))
            .chain(scale_in.into_iter().map(|id| (id, Removal::ScaleIn)))
            .collect();
        self.end(&removals, view, stopped, record).await;
        if decision.launch > 0 && self.may_act(&mut record.outcome, "launching") {
            let epoch = self.fence.as_ref().map_or(0, |fence| fence.epoch());
            let (tokens, new) = self.launches.ask(
                decision.launch,
                epoch,
                millis(self.clock()),
                Some(&spec.version()),
            );
            // Written down before it is asked: a successor knows of it even if this daemon is
            // gone before the answer comes.
            if let Err(error) = self.save_memory().await {
                self.launches.withdraw(&tokens[tokens.len() - new..]);
                tracing::warn!(%error, "a launch could not be written down first; not asked");
                record.outcome.push(format!(
                    "launch not asked: it could not be written down first ({error})"
                ));
                return None;
            }
            let reused = tokens.len() - new;
            if reused > 0 {
                record.outcome.push(format!(
                    "asking again {reused} launch(es) whose answer was lost, with the same token"
                ));
            }
            let answer = with_retries("launching", 3, &mut record.outcome, &self.status, || {
                self.cloud.launch_with(&tokens, spec)
            })
            .await;
            self.launches
                .answered(&tokens, answer.as_deref().map_err(|e| e.kind));
            match answer {
                Ok(ids) => {
                    record.outcome.push(format!("launched {}", ids.join(", ")));
                    record.launched = ids;
                }
                Err(error) => {
                    record.outcome.push(format!("launch failed: {error}"));
                    return Some(error.to_string());
                }
            }
        }
        None
    }

    async fn terminate(&self, instance_ids: &[String], why: &str, record: &mut DecisionRecord) {
        match with_retries("terminating", 3, &mut record.outcome, &self.status, || {
            self.cloud.terminate(instance_ids)
        })
        .await
        {
            Ok(()) => {
                for instance_id in instance_ids {
                    self.agents.forget(instance_id);
                    if let Some(front) = &self.front {
                        front.remove(instance_id).await;
                    }
                }
                record
                    .outcome
                    .push(format!("{why}: terminated {}", instance_ids.join(", ")));
                record.terminated.extend(instance_ids.iter().cloned());
            }
            Err(error) => record.outcome.push(format!("terminate failed: {error}")),
        }
    }
}
