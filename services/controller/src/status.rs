//! What the controller knows, shared with the status view: the provider's last list, the
//! recent decision records (quiet repeats folded into one), the launch backoff, the balancer's
//! targets and the counters for the metrics endpoint.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::balancer::TargetStatus;
use crate::cloud::{CloudError, CloudErrorKind, CloudInstance};
use crate::policy::{self, Decision, LaunchBackoff};

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
    pub(crate) fn noted(outcome: Vec<String>, shadow: Option<ShadowVerdict>) -> DecisionRecord {
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
    /// What the schedules and the forecaster said at the last evaluation (a decision record
    /// that quiet evaluations fold into keeps its first).
    scheduled: Option<crate::schedule::Scheduled>,
    forecast: Option<autoscaler_policy::forecast::ForecastView>,
    /// The running (or last) instance refresh, and the version new instances get.
    refresh: Option<autoscaler_policy::refresh::Refresh>,
    launch_version: Option<String>,
    protected: std::collections::BTreeSet<String>,
    bounds: Option<(u32, u32)>,
    /// The policy an operator set at run time (a `[controller.policy]` table).
    operator_policy: Option<String>,
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

    pub(crate) fn set_instances(&self, instances: Vec<CloudInstance>) {
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

    /// What the schedules set at the last evaluation, when the group has any.
    pub fn scheduled(&self) -> Option<crate::schedule::Scheduled> {
        self.lock().scheduled.clone()
    }

    /// What the forecaster said at the last evaluation, when the group has one.
    pub fn forecast(&self) -> Option<autoscaler_policy::forecast::ForecastView> {
        self.lock().forecast.clone()
    }

    /// The running (or last) instance refresh.
    pub fn refresh(&self) -> Option<autoscaler_policy::refresh::Refresh> {
        self.lock().refresh.clone()
    }

    /// The launch specification version new instances get.
    pub fn launch_version(&self) -> Option<String> {
        self.lock().launch_version.clone()
    }

    /// Keeps the refresh and the launch version as they are now.
    pub(crate) fn set_rollout(
        &self,
        refresh: Option<autoscaler_policy::refresh::Refresh>,
        launch_version: String,
        protected: std::collections::BTreeSet<String>,
    ) {
        let mut inner = self.lock();
        inner.refresh = refresh;
        inner.launch_version = Some(launch_version);
        inner.protected = protected;
    }

    /// The bounds an operator set at run time, when one did.
    pub fn bounds(&self) -> Option<(u32, u32)> {
        self.lock().bounds
    }

    pub(crate) fn set_bounds(&self, min: u32, max: u32) {
        self.lock().bounds = Some((min, max));
    }

    /// The policy an operator set at run time, as TOML, while one stands.
    pub fn operator_policy(&self) -> Option<String> {
        self.lock().operator_policy.clone()
    }

    pub(crate) fn set_operator_policy(&self, policy: Option<String>) {
        self.lock().operator_policy = policy;
    }

    /// The instances protected from scale-in.
    pub fn protected(&self) -> std::collections::BTreeSet<String> {
        self.lock().protected.clone()
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

    pub(crate) fn set_balancing(&self, targets: Option<Vec<TargetStatus>>, draining: Vec<String>) {
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

    pub(crate) fn set_launch_backoff(&self, backoff: Option<LaunchBackoff>) {
        self.lock().launch_backoff = backoff.map(|b| (b, Instant::now()));
    }

    /// Keeps what the schedules and the forecaster said at this evaluation.
    pub(crate) fn set_plans(
        &self,
        scheduled: Option<crate::schedule::Scheduled>,
        forecast: Option<autoscaler_policy::forecast::ForecastView>,
    ) {
        let mut inner = self.lock();
        inner.scheduled = scheduled;
        inner.forecast = forecast;
    }

    pub(crate) fn count_launch_refused(&self) {
        self.lock().counters.launch_failures += 1;
    }

    pub(crate) fn count_error(&self, error: &CloudError) {
        *self
            .lock()
            .counters
            .provider_errors
            .entry(error.kind)
            .or_default() += 1;
    }

    pub(crate) fn push(&self, record: DecisionRecord, keep: usize) -> DecisionRecord {
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

pub(crate) fn rule_kinds(decision: &Decision) -> Vec<policy::Rule> {
    decision.rules.iter().map(|r| r.rule).collect()
}
