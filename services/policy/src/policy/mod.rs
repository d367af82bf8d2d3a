//! The scaling policy: a pure function of what is observed, the config, the policy's own memory
//! and the time, returning a decision that explains itself. No I/O and no clock reads: the live
//! controller, the tests and the simulator call the same code.

use std::time::Duration;

mod evaluate;
mod memory;

pub use evaluate::{evaluate, launch_refused};
pub use memory::{LaunchBackoff, PolicyMemory, PolicyState};

use crate::forecast::ForecastView;
use crate::instance::{Health, InstanceState};
use crate::refresh::Refresh;
use crate::schedule::Scheduled;

/// How long an instance the provider said it launched counts as pending while the provider does
/// not list it yet (EC2's DescribeInstances may lag RunInstances by seconds); after that it is
/// no longer counted, and the policy may launch in its place.
pub const LISTED_WITHIN: Duration = Duration::from_secs(120);

/// One instance as the controller sees it: the provider's facts joined with the monitor's.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedInstance {
    pub instance_id: String,
    pub cloud_state: InstanceState,
    /// Time since launch.
    pub age: Duration,
    /// `None` while the instance is not registered with the monitor.
    pub health: Option<Health>,
    /// The last load reported, percent.
    pub load: Option<f64>,
    /// True once the monitor got healthy metrics from it (ends warm-up).
    pub has_reported: bool,
    /// Why the provider says it does not run, when it does not (the local provider: the
    /// agent's exit status and the last line of its log; EC2: the state reason).
    pub state_reason: Option<String>,
    /// Why the load balancer finds its target unhealthy, when it does (its health checks fail):
    /// with `health_check_type = "load-balancer"`, a second reason to replace it once past the
    /// grace, as EC2 Auto Scaling's ELB health check type.
    pub target_unhealthy: Option<String>,
    /// False for an instance this controller launched that the provider does not list yet (EC2's
    /// listing lags its launches): it counts towards the fleet, but it cannot be terminated, so
    /// it is never chosen for a scale-in nor replaced.
    pub listed: bool,
    /// The launch specification version it was launched with, when the provider says.
    pub version: Option<String>,
    /// Protected from scale-in (and from an instance refresh, unless it includes protected
    /// ones); still replaced when unhealthy, as on EC2.
    pub protected: bool,
    /// Whether the load balancer sends it requests (its target passes the health checks), when
    /// the group has one and its targets could be read: an instance refresh counts a new
    /// instance as capacity only once it does.
    pub serving: Option<bool>,
    /// Where it is in its lifecycle hooks, as its agent reports: Pending:Wait is warming, an
    /// abandoned launch is replaced as a failed launch.
    pub lifecycle: crate::Lifecycle,
}

/// Everything the policy looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub instances: Vec<ObservedInstance>,
    /// Time since the controller started: the registration grace never ends before it does, so
    /// a restarted controller does not replace instances that have yet to register again.
    pub controller_uptime: Duration,
    /// Instances leaving the group (draining from the load balancer before their termination):
    /// not part of the fleet the policy sizes, but running, so they count against the account's
    /// instance limit (`ControllerConfig::instance_limit`).
    pub leaving: u32,
    /// True when a removal drains first (a load balancer is in front): an instance scaled in or
    /// replaced now keeps its place under the instance limit until a later evaluation terminates
    /// it, unless it has stopped (nothing to drain). False: removals are terminated at once.
    pub removals_drain: bool,
    /// The launch specification version new instances get now, when the group has one: a
    /// scale-in takes instances on other versions first.
    pub launch_version: Option<String>,
}

/// A rule that changed the recommendation, or held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    MissingMetrics,
    Tolerance,
    Sustain,
    WarmUp,
    Cooldown,
    Bounds,
    Health,
    LaunchBackoff,
    /// Launches held so the running instances, leaving ones included, stay within the
    /// account's instance limit.
    InstanceLimit,
    /// A scale-in short of its size: the instances it would take are not listed yet.
    NotListed,
    /// Bounds a scheduled window or change sets, where they differ from the config's.
    Schedule,
    /// The floor the forecast demand of the next lead time needs (`[controller.predictive]`,
    /// `forecast-and-scale`).
    Forecast,
    /// An instance refresh replacing instances, or launching above the desired capacity
    /// (`max_healthy_percentage` above 100).
    Refresh,
    /// The desired capacity an operator set (SetDesiredCapacity): the policy goes on from it.
    Operator,
}

impl Rule {
    /// Every rule, for counters that list each one, at zero too.
    pub const ALL: [Rule; 14] = [
        Rule::MissingMetrics,
        Rule::Tolerance,
        Rule::Sustain,
        Rule::WarmUp,
        Rule::Cooldown,
        Rule::Bounds,
        Rule::Health,
        Rule::LaunchBackoff,
        Rule::InstanceLimit,
        Rule::NotListed,
        Rule::Schedule,
        Rule::Forecast,
        Rule::Refresh,
        Rule::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MissingMetrics => "missing-metrics",
            Rule::Tolerance => "tolerance",
            Rule::Sustain => "sustain",
            Rule::WarmUp => "warm-up",
            Rule::Cooldown => "cooldown",
            Rule::Bounds => "bounds",
            Rule::Health => "health",
            Rule::LaunchBackoff => "launch-backoff",
            Rule::InstanceLimit => "instance-limit",
            Rule::NotListed => "not-listed",
            Rule::Schedule => "schedule",
            Rule::Forecast => "forecast",
            Rule::Refresh => "refresh",
            Rule::Operator => "operator",
        }
    }
}

/// A rule's effect on the desired size.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleApplied {
    pub rule: Rule,
    pub from: u32,
    pub to: u32,
    pub detail: String,
}

/// What was observed, in counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub total: u32,
    /// Running, healthy, past warm-up and with a fresh load.
    pub in_service: u32,
    /// In warm-up: launched recently and not reported yet.
    pub warming: u32,
    /// Listed and not being replaced, but without a fresh metric (not registered yet, not
    /// polled yet, or the last poll missed).
    pub without_metrics: u32,
    /// Marked unhealthy by the monitor (and so replaced).
    pub unhealthy: u32,
    pub to_replace: u32,
    /// Average load of the in-service instances, percent.
    pub average_load: Option<f64>,
}

/// Why an instance the provider lists has no fresh metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingReason {
    /// Not registered with the monitor (yet, or again after a restart).
    NotRegistered,
    /// Registered, not polled yet.
    NotPolled,
    /// Missed its last poll.
    Suspect,
    /// Answered, but has reported no load yet.
    NoLoad,
    /// Would be replaced, but the provider does not list it yet, so it cannot be terminated.
    NotListed,
}

impl MissingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::NotRegistered => "not registered",
            MissingReason::NotPolled => "not polled yet",
            MissingReason::Suspect => "missed its last poll",
            MissingReason::NoLoad => "no load reported",
            MissingReason::NotListed => "to replace, but not yet listed by the provider",
        }
    }
}

/// An instance without a fresh metric, and how the recommendation counted it.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingMetric {
    pub instance_id: String,
    pub reason: MissingReason,
    /// The load it was counted at, percent: the target (or the scale-in threshold) when the
    /// others' loads pointed to a scale-in, 0 when they pointed to a scale-out; `None` when it
    /// did not enter the recommendation (no instance reported, or the loads pointed nowhere).
    pub counted_as: Option<f64>,
}

impl MissingMetric {
    /// `local-0003 (not registered, counted at 50%)`.
    pub fn describe(&self) -> String {
        match self.counted_as {
            Some(load) => format!(
                "{} ({}, counted at {load}%)",
                self.instance_id,
                self.reason.as_str()
            ),
            None => format!("{} ({})", self.instance_id, self.reason.as_str()),
        }
    }
}

/// An instance to terminate and replace, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    pub instance_id: String,
    pub reason: String,
    /// It never reported: the launch that made it failed.
    pub failed_launch: bool,
}

/// One evaluation: what was seen, what the rule recommended, what changed it, what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub observed: Observed,
    /// Instances listed by the provider.
    pub current: u32,
    /// What the creation/destruction rule alone asked for.
    pub recommendation: u32,
    pub desired: u32,
    pub rules: Vec<RuleApplied>,
    pub replace: Vec<Replacement>,
    /// Instances without a fresh metric and how they were counted.
    pub missing: Vec<MissingMetric>,
    /// New instances to launch (replacements included).
    pub launch: u32,
    /// Instances removed by scale-in.
    pub scale_in: Vec<String>,
    /// Set while launches are failing.
    pub launch_backoff: Option<LaunchBackoff>,
    /// The bounds the schedules set now, and the windows holding and next, when there are
    /// schedules.
    pub scheduled: Option<Scheduled>,
    /// What the forecaster says, when `[controller.predictive]` is set.
    pub forecast: Option<ForecastView>,
    /// The instance refresh, while one runs and as the last one ended.
    pub refresh: Option<Refresh>,
    /// The launch specification version this decision's launches get (the refresh's target
    /// while one runs; else the observation's).
    pub launch_version: Option<String>,
}

impl Decision {
    /// True when the decision asks the provider to do something.
    pub fn acts(&self) -> bool {
        self.launch > 0 || !self.scale_in.is_empty() || !self.replace.is_empty()
    }

    /// One line: the action and the reasons, for logs and the terminal.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.replace.is_empty() {
            let replaced: Vec<String> = self
                .replace
                .iter()
                .map(|r| format!("{} ({})", r.instance_id, r.reason))
                .collect();
            parts.push(format!("replace {}", replaced.join(", ")));
        }
        if self.launch > 0 {
            parts.push(format!("launch {}", self.launch));
        }
        if !self.scale_in.is_empty() {
            parts.push(format!("scale in {}", self.scale_in.join(", ")));
        }
        if parts.is_empty() {
            parts.push("no change".to_string());
        }
        let average = self
            .observed
            .average_load
            .map_or("n/a".to_string(), |load| format!("{load:.1}%"));
        let mut line = format!(
            "{}: {} -> {} (avg load {average}, recommended {}",
            parts.join("; "),
            self.current,
            self.desired,
            self.recommendation
        );
        for rule in &self.rules {
            line.push_str(&format!("; {}: {}", rule.rule.as_str(), rule.detail));
        }
        line.push(')');
        line
    }
}
