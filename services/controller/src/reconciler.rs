//! The reconciler: every evaluation interval it lists the group's instances from the provider,
//! joins them with the monitor's fleet view, asks the policy, and acts only on a difference.
//! Provider calls are retried with backoff; a failure is recorded and never stops the loop.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use autoscaler_policy::backoff::Backoff;
use tokio::sync::watch;

use crate::balancer::{Balancer, TargetState, TargetStatus};
use crate::cloud::{Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState};
use crate::config::{ControllerConfig, HealthCheckType};
use crate::fleet::FleetView;
use crate::front::{Front, Removal};
use crate::launches::{ControllerMemory, Journal, Launches};
use crate::policy::{self, Decision, LaunchBackoff, Observation, ObservedInstance, PolicyState};

/// One evaluation as kept for the status view and logged.
#[derive(Clone, Debug)]
pub struct DecisionRecord {
    pub sequence: u64,
    pub at: SystemTime,
    /// `None` when the provider could not be listed, so nothing was decided.
    pub decision: Option<Decision>,
    /// What the provider calls did (ids launched and terminated, errors).
    pub outcome: Vec<String>,
    pub launched: Vec<String>,
    pub terminated: Vec<String>,
    /// How many identical quiet evaluations this record stands for.
    pub repeated: u32,
    /// What the shadow policy would have done, when one is configured.
    pub shadow: Option<ShadowVerdict>,
}

impl DecisionRecord {
    /// A record of this moment with only notes (and the shadow's verdict): no decision yet,
    /// nothing launched or terminated; the status store numbers it.
    fn noted(outcome: Vec<String>, shadow: Option<ShadowVerdict>) -> DecisionRecord {
        DecisionRecord {
            sequence: 0,
            at: SystemTime::now(),
            decision: None,
            outcome,
            launched: Vec::new(),
            terminated: Vec::new(),
            repeated: 0,
            shadow,
        }
    }
}

/// The shadow policy's verdict on the same observation. It is never acted on.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowVerdict {
    pub desired: u32,
    pub summary: String,
    /// True when its desired size differs from the live policy's.
    pub differs: bool,
}

impl DecisionRecord {
    pub fn summary(&self) -> String {
        match &self.decision {
            Some(decision) => decision.summary(),
            None => "no decision: the provider could not be listed".to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct StatusInner {
    instances: Vec<CloudInstance>,
    decisions: VecDeque<DecisionRecord>,
    next_sequence: u64,
    counters: Counters,
    /// The launch backoff as of the last evaluation, and when that was.
    launch_backoff: Option<(LaunchBackoff, Instant)>,
    /// The load balancer's targets as of the last evaluation (`None`: no balancer, or it could
    /// not be read), and the instances draining from it.
    targets: Option<Vec<TargetStatus>>,
    draining: Vec<String>,
}

/// Totals since the controller started, for the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub evaluations: u64,
    /// Evaluations in which each rule changed or held the recommendation.
    pub rules: std::collections::BTreeMap<policy::Rule, u64>,
    /// Instances launched, scaled in and replaced.
    pub launched: u64,
    pub scaled_in: u64,
    /// Evaluations where the shadow policy wanted another size.
    pub shadow_disagreements: u64,
    pub replaced: u64,
    /// Launches that failed: refused by the provider, or instances that stopped or were
    /// replaced before they ever reported.
    pub launch_failures: u64,
    /// Failed provider calls by kind (each attempt counts).
    pub provider_errors: std::collections::BTreeMap<CloudErrorKind, u64>,
}

/// What the controller knows, shared with the status view: the provider's last list and the
/// recent decisions.
#[derive(Clone, Debug)]
pub struct ControllerStatus {
    inner: Arc<Mutex<StatusInner>>,
    /// Counts the provider's successful lists, so a caller can wait for the next one.
    lists: Arc<watch::Sender<u64>>,
    /// The sequence of the newest record, so a caller can write each one as it comes.
    records: Arc<watch::Sender<u64>>,
}

impl Default for ControllerStatus {
    fn default() -> Self {
        ControllerStatus {
            inner: Arc::default(),
            lists: Arc::new(watch::channel(0).0),
            records: Arc::new(watch::channel(0).0),
        }
    }
}

impl ControllerStatus {
    fn lock(&self) -> MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_instances(&self, instances: Vec<CloudInstance>) {
        self.lock().instances = instances;
        self.lists.send_modify(|lists| *lists += 1);
    }

    /// True when the provider's last list holds `instance_id`, or one of the latest decisions
    /// launched it (a list made just before the launch cannot show it yet).
    pub fn knows(&self, instance_id: &str) -> bool {
        let inner = self.lock();
        if inner.instances.iter().any(|i| i.instance_id == instance_id) {
            return true;
        }
        let recent: Vec<&DecisionRecord> = inner.decisions.iter().rev().take(3).collect();
        recent
            .iter()
            .any(|r| r.launched.iter().any(|id| id == instance_id))
            && !recent
                .iter()
                .any(|r| r.terminated.iter().any(|id| id == instance_id))
    }

    /// Whether `instance_id` belongs to the group as the provider lists it, waiting up to
    /// `wait` for the next list if it is not known yet (an instance may register before the
    /// controller has listed it once).
    pub async fn admits(&self, instance_id: &str, wait: Duration) -> bool {
        let mut lists = self.lists.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.knows(instance_id) {
                return true;
            }
            match tokio::time::timeout_at(deadline, lists.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }

    /// The instances the provider listed at the last evaluation.
    pub fn instances(&self) -> Vec<CloudInstance> {
        self.lock().instances.clone()
    }

    /// The desired size of the latest decision.
    pub fn desired(&self) -> Option<u32> {
        self.lock()
            .decisions
            .iter()
            .rev()
            .find_map(|r| r.decision.as_ref().map(|d| d.desired))
    }

    /// Changes whenever a new decision record is kept (its sequence).
    pub fn new_records(&self) -> watch::Receiver<u64> {
        self.records.subscribe()
    }

    /// Decisions with a sequence number above `after`, oldest first.
    pub fn decisions_after(&self, after: u64) -> Vec<DecisionRecord> {
        self.lock()
            .decisions
            .iter()
            .filter(|record| record.sequence > after)
            .cloned()
            .collect()
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Where the launches stand while they are failing: failures in a row, the time left until
    /// the next attempt, and the last reason. `None` while launches succeed.
    pub fn launch_backoff(&self) -> Option<LaunchBackoff> {
        let inner = self.lock();
        let (backoff, at) = inner.launch_backoff.as_ref()?;
        Some(LaunchBackoff {
            retry_in: backoff.retry_in.saturating_sub(at.elapsed()),
            ..backoff.clone()
        })
    }

    fn set_balancing(&self, targets: Option<Vec<TargetStatus>>, draining: Vec<String>) {
        let mut inner = self.lock();
        inner.targets = targets;
        inner.draining = draining;
    }

    /// What the load balancer said of `instance_id` at the last evaluation, if there is one.
    pub fn target(&self, instance_id: &str) -> Option<TargetStatus> {
        self.lock()
            .targets
            .as_ref()?
            .iter()
            .find(|t| t.instance_id == instance_id)
            .cloned()
    }

    /// The instances draining from the load balancer before they are terminated.
    pub fn draining(&self) -> Vec<String> {
        self.lock().draining.clone()
    }

    fn set_launch_backoff(&self, backoff: Option<LaunchBackoff>) {
        self.lock().launch_backoff = backoff.map(|b| (b, Instant::now()));
    }

    fn count_launch_refused(&self) {
        self.lock().counters.launch_failures += 1;
    }

    fn count_error(&self, error: &CloudError) {
        *self
            .lock()
            .counters
            .provider_errors
            .entry(error.kind)
            .or_default() += 1;
    }

    fn push(&self, record: DecisionRecord, keep: usize) -> DecisionRecord {
        let record = self.keep_record(record, keep);
        self.records.send_replace(record.sequence);
        record
    }

    fn keep_record(&self, mut record: DecisionRecord, keep: usize) -> DecisionRecord {
        let mut inner = self.lock();
        let counters = &mut inner.counters;
        counters.evaluations += 1;
        if let Some(decision) = &record.decision {
            // A rule counts once per evaluation, however many times it acted in it.
            let mut rules = rule_kinds(decision);
            rules.sort();
            rules.dedup();
            for rule in rules {
                *counters.rules.entry(rule).or_default() += 1;
            }
            counters.replaced += decision.replace.len() as u64;
            counters.scaled_in += decision.scale_in.len() as u64;
            counters.launch_failures +=
                decision.replace.iter().filter(|r| r.failed_launch).count() as u64;
        }
        counters.launched += record.launched.len() as u64;
        counters.shadow_disagreements +=
            u64::from(record.shadow.as_ref().is_some_and(|v| v.differs));
        let quiet = |r: &DecisionRecord| {
            r.launched.is_empty()
                && r.terminated.is_empty()
                && r.outcome.is_empty()
                && r.decision.as_ref().is_some_and(|d| !d.acts())
        };
        if let Some(last) = inner.decisions.back_mut()
            && quiet(last)
            && quiet(&record)
            && last
                .decision
                .as_ref()
                .map(|d| (d.current, d.desired, rule_kinds(d)))
                == record
                    .decision
                    .as_ref()
                    .map(|d| (d.current, d.desired, rule_kinds(d)))
            && last.shadow.as_ref().map(|v| v.desired) == record.shadow.as_ref().map(|v| v.desired)
        {
            last.repeated += 1;
            last.at = record.at;
            last.decision = record.decision;
            last.shadow = record.shadow;
            return last.clone();
        }
        inner.next_sequence += 1;
        record.sequence = inner.next_sequence;
        inner.decisions.push_back(record.clone());
        while inner.decisions.len() > keep {
            inner.decisions.pop_front();
        }
        record
    }
}

fn rule_kinds(decision: &Decision) -> Vec<policy::Rule> {
    decision.rules.iter().map(|r| r.rule).collect()
}

/// What the controller asks of the agents. The monitor, which knows them and holds the client
/// to reach them, implements it; the controller itself speaks no RPC.
pub trait Agents: Send + Sync + 'static {
    /// Tells the agent of `instance_id` that its instance is about to be removed by scale-in,
    /// so it registers no more; best effort, bounded in time by the implementation.
    fn notify_removal<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

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
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
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
    /// The leader's lease, when the daemon has standbys.
    fence: Option<Arc<dyn Fence>>,
    /// Whether the balancer's health checks are not acted on, as it finds every target
    /// unhealthy.
    failing_open: bool,
    /// The last observation the policy decided on, and the policy's clock then.
    last: Option<(Observation, Duration)>,
}

/// Whether the balancer finds every target it judges (healthy or unhealthy: not those starting,
/// draining or unused) unhealthy, and judges at least one.
fn every_target_unhealthy(targets: &[TargetStatus]) -> bool {
    let mut judged = targets
        .iter()
        .filter(|t| matches!(t.state, TargetState::Healthy | TargetState::Unhealthy))
        .peekable();
    judged.peek().is_some() && judged.all(|t| t.state == TargetState::Unhealthy)
}

fn millis(since_epoch: Duration) -> i64 {
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Joins the provider's instances (`listed`, and the launches it does not list yet) with the
/// monitor's view (and the load balancer's, when there is one and its targets could be read).
pub fn observe(
    listed: &[CloudInstance],
    unlisted: &[CloudInstance],
    view: &FleetView,
    targets: Option<&[TargetStatus]>,
    now: SystemTime,
    uptime: Duration,
) -> Observation {
    let seen = |instance: &CloudInstance, listed: bool| {
        let seen = view.get(&instance.instance_id);
        ObservedInstance {
            instance_id: instance.instance_id.clone(),
            cloud_state: instance.state,
            age: now.duration_since(instance.launched_at).unwrap_or_default(),
            health: seen.map(|i| i.health),
            load: seen.and_then(|i| i.load),
            has_reported: seen.is_some_and(|i| !i.recent_loads.is_empty()),
            state_reason: instance.state_reason.clone(),
            target_unhealthy: targets
                .and_then(|targets| {
                    targets
                        .iter()
                        .find(|t| t.instance_id == instance.instance_id)
                })
                .filter(|t| t.state == TargetState::Unhealthy)
                .map(|t| {
                    t.reason
                        .clone()
                        .unwrap_or_else(|| "its health checks fail".to_string())
                }),
            listed,
        }
    };
    Observation {
        instances: listed
            .iter()
            .map(|i| seen(i, true))
            .chain(unlisted.iter().map(|i| seen(i, false)))
            .collect(),
        controller_uptime: uptime,
        ..Observation::default()
    }
}

/// Calls `call` up to `attempts` times while it fails with a retryable error, doubling the pause.
/// Every failed attempt is noted in `notes` (which ends up in the decision record).
pub async fn with_retries<T, F, Fut>(
    what: &str,
    attempts: u32,
    notes: &mut Vec<String>,
    status: &ControllerStatus,
    mut call: F,
) -> Result<T, CloudError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CloudError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut attempt = 1;
    loop {
        let result = call().await;
        if let Err(error) = &result {
            status.count_error(error);
        }
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt < attempts => {
                let pause = backoff.failed();
                tracing::warn!(%error, attempt, retry_in = ?pause, "{what} failed; retrying");
                notes.push(format!(
                    "{what} failed (attempt {attempt}, {error}); retried after {pause:?}"
                ));
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

impl<C: Cloud> Controller<C> {
    pub fn new(
        cloud: Arc<C>,
        config: ControllerConfig,
        fleet: watch::Receiver<Arc<FleetView>>,
        agents: Arc<dyn Agents>,
    ) -> Controller<C> {
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
            anchor: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            launches: Launches::default(),
            journal: None,
            saved: None,
            fence: None,
            failing_open: false,
            last: None,
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
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
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
        let mut notes = Vec::new();
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
        let mut record = DecisionRecord::noted(notes, None);
        for (instance_id, why) in &drained_ids {
            if !self.may_act(&mut record.outcome, &format!("terminating {instance_id}")) {
                continue;
            }
            if *why == Removal::ScaleIn && view.get(instance_id).is_some() {
                self.agents.notify_removal(instance_id, "scale-in").await;
            }
            self.terminate(std::slice::from_ref(instance_id), why.as_str(), &mut record)
                .await;
        }
        // Instances leaving (draining, or drained and not terminated yet) are not part of the
        // fleet the policy sizes, but they still run.
        let draining: Vec<String> = self.front.as_ref().map_or_else(Vec::new, Front::draining);
        let leaving = |id: &str| {
            (draining.iter().any(|d| d == id) || drained_ids.iter().any(|(d, _)| d == id))
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
        if decision.acts()
            && self.may_act(&mut record.outcome, "acting on the decision")
            && let Some(refused) = self
                .act(&decision, &view, targets.as_deref(), &stopped, &mut record)
                .await
        {
            // The provider refused the launch after its retries: back off as for an instance
            // that died at start.
            self.status.count_launch_refused();
            policy::launch_refused(&mut decision, &self.config, &mut self.state, now, &refused);
            if let Some((config, state)) = self.shadow.as_mut() {
                state.launch_failed(config, now, &refused);
            }
        }
        self.status
            .set_launch_backoff(decision.launch_backoff.clone());
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
        if !replaced.is_empty() && self.may_act(&mut record.outcome, "replacing") {
            self.terminate(&replaced, Removal::Replace.as_str(), record)
                .await;
        }
        if !scale_in.is_empty() && self.may_act(&mut record.outcome, "scaling in") {
            for instance_id in &scale_in {
                if view.get(instance_id).is_some() {
                    self.agents.notify_removal(instance_id, "scale-in").await;
                }
            }
            self.terminate(&scale_in, Removal::ScaleIn.as_str(), record)
                .await;
        }
        if decision.launch > 0 && self.may_act(&mut record.outcome, "launching") {
            let epoch = self.fence.as_ref().map_or(0, |fence| fence.epoch());
            let (tokens, new) = self
                .launches
                .ask(decision.launch, epoch, millis(self.clock()));
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
                self.cloud.launch(&tokens)
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
