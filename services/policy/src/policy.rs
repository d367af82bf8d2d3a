//! The scaling policy: a pure function of what is observed, the config, the policy's own memory
//! and the time, returning a decision that explains itself. No I/O and no clock reads: the live
//! controller, the tests and the simulator call the same code.

use std::time::Duration;

use crate::config::{ControllerConfig, HealthCheckType, PolicyConfig, TerminationPolicy};
use crate::instance::{Health, InstanceState};

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
}

/// The policy's memory between evaluations. Times are the evaluation clock's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyState {
    above_since: Option<Duration>,
    below_since: Option<Duration>,
    last_scale_out: Option<Duration>,
    last_scale_in: Option<Duration>,
    launches: LaunchFailures,
}

/// The policy's memory as it outlives a controller (a restart, a failover to another daemon):
/// its times in milliseconds since the Unix epoch, so that another process, with another start,
/// can take them up (`PolicyState::remember`, `PolicyState::recall`). Cooldowns and the launch
/// backoff then hold across a failover.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PolicyMemory {
    pub above_since_ms: Option<i64>,
    pub below_since_ms: Option<i64>,
    pub last_scale_out_ms: Option<i64>,
    pub last_scale_in_ms: Option<i64>,
    pub launch_failures: u32,
    pub last_launch_failure_ms: Option<i64>,
    pub next_launch_ms: Option<i64>,
    pub launch_failure_reason: String,
    pub counted_failures: Vec<String>,
}

impl PolicyState {
    /// The memory in wall-clock time: `now` on the evaluation clock is `now_ms` on the wall.
    pub fn remember(&self, now: Duration, now_ms: i64) -> PolicyMemory {
        let wall = |at: Duration| {
            now_ms - i64::try_from(now.saturating_sub(at).as_millis()).unwrap_or(i64::MAX)
        };
        let launches = &self.launches;
        let failing = launches.consecutive > 0;
        PolicyMemory {
            above_since_ms: self.above_since.map(wall),
            below_since_ms: self.below_since.map(wall),
            last_scale_out_ms: self.last_scale_out.map(wall),
            last_scale_in_ms: self.last_scale_in.map(wall),
            launch_failures: launches.consecutive,
            last_launch_failure_ms: failing.then(|| wall(launches.last_at)),
            next_launch_ms: failing.then(|| {
                now_ms
                    + i64::try_from(launches.retry_at.saturating_sub(now).as_millis())
                        .unwrap_or(i64::MAX)
            }),
            launch_failure_reason: launches.reason.clone(),
            counted_failures: launches.counted.clone(),
        }
    }

    /// The state a controller whose evaluation clock reads `now` at `now_ms` starts from. A time
    /// before that clock's start is taken as its start: a cooldown then lasts at least as long
    /// as it should, never less.
    pub fn recall(memory: &PolicyMemory, now: Duration, now_ms: i64) -> PolicyState {
        let clock = |at_ms: i64| {
            let ago =
                Duration::from_millis(u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0));
            now.saturating_sub(ago)
        };
        let mut launches = LaunchFailures::default();
        if memory.launch_failures > 0 {
            launches.consecutive = memory.launch_failures;
            launches.last_at = memory.last_launch_failure_ms.map_or(now, clock);
            launches.retry_at = memory.next_launch_ms.map_or(now, |at| {
                now + Duration::from_millis(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0))
            });
            launches.reason = memory.launch_failure_reason.clone();
            launches.counted = memory.counted_failures.clone();
        }
        PolicyState {
            above_since: memory.above_since_ms.map(clock),
            below_since: memory.below_since_ms.map(clock),
            last_scale_out: memory.last_scale_out_ms.map(clock),
            last_scale_in: memory.last_scale_in_ms.map(clock),
            launches,
        }
    }
}

/// Failed launches in a row, and when the next launch may be tried.
#[derive(Clone, Debug, Default, PartialEq)]
struct LaunchFailures {
    consecutive: u32,
    last_at: Duration,
    retry_at: Duration,
    reason: String,
    /// Instances already counted as failed, while the provider still lists them.
    counted: Vec<String>,
}

impl PolicyState {
    /// Records a launch the provider refused (after its own retries) at `now`.
    pub fn launch_failed(&mut self, config: &ControllerConfig, now: Duration, reason: &str) {
        self.launches.fail(config, now, reason.to_string());
    }

    /// Where the launches stand at `now`, while they are failing.
    pub fn launch_backoff(&self, now: Duration) -> Option<LaunchBackoff> {
        let launches = &self.launches;
        (launches.consecutive > 0).then(|| LaunchBackoff {
            consecutive_failures: launches.consecutive,
            retry_in: launches.retry_at.saturating_sub(now),
            last_reason: launches.reason.clone(),
        })
    }
}

impl LaunchFailures {
    fn fail(&mut self, config: &ControllerConfig, now: Duration, reason: String) {
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_at = now;
        self.retry_at = now + config.launch_backoff(self.consecutive);
        self.reason = reason;
    }
}

/// Launches are failing: the controller waits before the next one, and then launches one
/// instance at a time until one reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchBackoff {
    /// Failed launches in a row since the last one that reported.
    pub consecutive_failures: u32,
    /// Until the next launch may be tried (zero: it may be tried now).
    pub retry_in: Duration,
    /// The instance that failed last and why, or the provider's refusal.
    pub last_reason: String,
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
}

impl Rule {
    /// Every rule, for counters that list each one, at zero too.
    pub const ALL: [Rule; 10] = [
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

enum Role {
    InService(f64),
    Warming,
    WithoutMetric(MissingReason),
    Replace(Replacement),
}

fn role(instance: &ObservedInstance, config: &ControllerConfig, uptime: Duration) -> Role {
    // An instance launched since this controller started that is replaced before it ever
    // reported is a failed launch; an adopted one that is lost is not.
    let failed_launch = !instance.has_reported && instance.age < uptime;
    let replace = |reason: String| {
        Role::Replace(Replacement {
            instance_id: instance.instance_id.clone(),
            reason,
            failed_launch,
        })
    };
    if instance.cloud_state == InstanceState::Stopped {
        return replace(match &instance.state_reason {
            Some(why) => format!("not running: {why}"),
            None => "not running".to_string(),
        });
    }
    if config.health_check_type == HealthCheckType::LoadBalancer
        && let Some(why) = &instance.target_unhealthy
        // From the launch only: the balancer's view outlives a change of controller.
        && instance.age > config.registration_grace()
    {
        return replace(format!("unhealthy per the load balancer: {why}"));
    }
    match instance.health {
        Some(Health::Unhealthy) => return replace("unhealthy per the monitor".to_string()),
        None if instance.age.min(uptime) > config.registration_grace() => {
            return replace(format!(
                "never registered within {}s",
                config.registration_grace_secs
            ));
        }
        _ => {}
    }
    if !instance.has_reported && instance.age < config.warmup() {
        return Role::Warming;
    }
    match (instance.health, instance.load) {
        (Some(Health::Healthy), Some(load)) => Role::InService(load),
        (None, _) => Role::WithoutMetric(MissingReason::NotRegistered),
        (Some(Health::Unknown), _) => Role::WithoutMetric(MissingReason::NotPolled),
        (Some(Health::Suspect), _) => Role::WithoutMetric(MissingReason::Suspect),
        (Some(_), _) => Role::WithoutMetric(MissingReason::NoLoad),
    }
}

/// The direction the reported loads point to, before instances without a metric are counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Out,
    In,
    Hold,
}

fn ids(missing: &[MissingMetric]) -> String {
    let listed: Vec<String> = missing.iter().map(MissingMetric::describe).collect();
    listed.join(", ")
}

/// Evaluates the policy at time `now` (of the same clock as earlier calls with `state`).
///
/// Instances without a fresh metric are counted as the Kubernetes HPA counts pods without
/// metrics: at the target when the others point to a scale-in, at 0 % when they point to a
/// scale-out, and no scaling when counting them reverses the direction. On top of that, no
/// instance is scaled in while any listed instance lacks a fresh metric (unless the fleet is
/// above its maximum): the controller decides only on what it sees.
pub fn evaluate(
    observation: &Observation,
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
) -> Decision {
    let uptime = observation.controller_uptime;
    let mut observed = Observed {
        total: observation.instances.len() as u32,
        ..Observed::default()
    };
    let mut replace = Vec::new();
    let mut missing: Vec<MissingMetric> = Vec::new();
    let mut candidates: Vec<(&ObservedInstance, Option<f64>)> =
        Vec::with_capacity(observation.instances.len());
    let mut sum = 0.0;
    for instance in &observation.instances {
        let role = match role(instance, config, uptime) {
            // What the provider does not list cannot be terminated: it waits to be listed.
            Role::Replace(_) if !instance.listed => Role::WithoutMetric(MissingReason::NotListed),
            role => role,
        };
        match role {
            Role::InService(load) => {
                observed.in_service += 1;
                sum += load;
                if instance.listed {
                    candidates.push((instance, Some(load)));
                }
            }
            Role::Warming => observed.warming += 1,
            Role::WithoutMetric(reason) => {
                observed.without_metrics += 1;
                missing.push(MissingMetric {
                    instance_id: instance.instance_id.clone(),
                    reason,
                    counted_as: None,
                });
                if instance.listed {
                    candidates.push((instance, None));
                }
            }
            Role::Replace(replacement) => {
                observed.to_replace += 1;
                observed.unhealthy += u32::from(instance.health == Some(Health::Unhealthy));
                replace.push(replacement);
            }
        }
    }
    let reported = observed.in_service;
    observed.average_load = (reported > 0).then(|| sum / f64::from(reported));
    track_launches(observation, &replace, config, state, now);

    let current = observed.total;
    let mut rules = Vec::new();
    // The detail is formatted only for a rule that is recorded: evaluations are cheap, and the
    // simulator makes millions of them.
    fn apply(
        rules: &mut Vec<RuleApplied>,
        rule: Rule,
        from: u32,
        to: u32,
        detail: impl FnOnce() -> String,
    ) -> u32 {
        if from != to || rule == Rule::Sustain || rule == Rule::MissingMetrics {
            rules.push(RuleApplied {
                rule,
                from,
                to,
                detail: detail(),
            });
        }
        to
    }

    // Where the reported loads point, and the level at which a missing instance is counted.
    let unseen = missing.len() as u32;
    let direction = match (&config.policy, observed.average_load) {
        (_, None) => Direction::Hold,
        (PolicyConfig::TargetTracking { target, .. }, Some(average)) => {
            if average < *target {
                Direction::In
            } else if average > *target {
                Direction::Out
            } else {
                Direction::Hold
            }
        }
        (
            PolicyConfig::Step {
                scale_out,
                scale_in,
            },
            Some(average),
        ) => {
            if average > scale_out.above.unwrap_or(100.0) {
                Direction::Out
            } else if average < scale_in.below.unwrap_or(0.0) {
                Direction::In
            } else {
                Direction::Hold
            }
        }
    };
    let fill = match (direction, &config.policy) {
        (Direction::Out, _) => Some(0.0),
        (Direction::In, PolicyConfig::TargetTracking { target, .. }) => Some(*target),
        (Direction::In, PolicyConfig::Step { scale_in, .. }) => scale_in.below,
        (Direction::Hold, _) => None,
    };
    for metric in &mut missing {
        metric.counted_as = fill;
    }
    // An instance being replaced keeps its place in the sizing, as EC2 Auto Scaling keeps the
    // desired capacity through a replacement: it counts as one without a metric does, and at
    // the target when the loads point nowhere.
    let replaced = observed.to_replace;
    let replaced_fill = match (fill, &config.policy) {
        (Some(level), _) => level,
        (None, PolicyConfig::TargetTracking { target, .. }) => *target,
        (None, PolicyConfig::Step { .. }) => 0.0,
    };
    let absent_sum = f64::from(unseen) * fill.unwrap_or(0.0) + f64::from(replaced) * replaced_fill;
    // The average with the missing and replaced instances counted as above.
    let counted_average = observed
        .average_load
        .map(|_| (sum + absent_sum) / f64::from(reported + unseen + replaced));

    // The creation / destruction rule.
    let recommendation = match counted_average {
        // An empty fleet has nothing to miss: only the bounds act on it.
        None if current == 0 => {
            state.above_since = None;
            state.below_since = None;
            current
        }
        None => {
            state.above_since = None;
            state.below_since = None;
            apply(&mut rules, Rule::MissingMetrics, current, current, || {
                if unseen == 0 {
                    "no in-service instance reported a load; holding".to_string()
                } else {
                    format!(
                        "no in-service instance reported a load ({} without a fresh metric: {}); holding",
                        unseen,
                        ids(&missing)
                    )
                }
            })
        }
        Some(average) => match &config.policy {
            PolicyConfig::TargetTracking { target, .. } => {
                let raw = ((sum + absent_sum) / target).ceil() as u32;
                let reversed = match direction {
                    Direction::In => average > *target || raw > current,
                    Direction::Out => average < *target || raw < current,
                    Direction::Hold => false,
                };
                if unseen == 0 {
                    raw
                } else if reversed {
                    apply(&mut rules, Rule::MissingMetrics, raw, current, || {
                        format!(
                            "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%, which reverses the direction: holding",
                            ids(&missing)
                        )
                    })
                } else {
                    apply(&mut rules, Rule::MissingMetrics, raw, raw, || {
                        format!(
                            "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%",
                            ids(&missing)
                        )
                    })
                }
            }
            PolicyConfig::Step {
                scale_out,
                scale_in,
            } => {
                let high = scale_out.above.unwrap_or(100.0);
                let low = scale_in.below.unwrap_or(0.0);
                if unseen > 0 {
                    apply(&mut rules, Rule::MissingMetrics, current, current, || {
                        format!(
                            "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%",
                            ids(&missing)
                        )
                    });
                }
                if average > high {
                    state.below_since = None;
                    let since = *state.above_since.get_or_insert(now);
                    let held = now.saturating_sub(since);
                    if held >= Duration::from_secs(scale_out.for_secs) {
                        current + scale_out.step
                    } else {
                        apply(&mut rules, Rule::Sustain, current, current, || {
                            format!(
                                "above {high}% for {}s of {}s",
                                held.as_secs(),
                                scale_out.for_secs
                            )
                        })
                    }
                } else if average < low {
                    state.above_since = None;
                    let since = *state.below_since.get_or_insert(now);
                    let held = now.saturating_sub(since);
                    if held >= Duration::from_secs(scale_in.for_secs) {
                        current.saturating_sub(scale_in.step)
                    } else {
                        apply(&mut rules, Rule::Sustain, current, current, || {
                            format!(
                                "below {low}% for {}s of {}s",
                                held.as_secs(),
                                scale_in.for_secs
                            )
                        })
                    }
                } else {
                    state.above_since = None;
                    state.below_since = None;
                    current
                }
            }
        },
    };

    let mut desired = recommendation;
    if let (PolicyConfig::TargetTracking { target, tolerance }, Some(average)) =
        (&config.policy, counted_average)
    {
        let ratio = average / target;
        if (ratio - 1.0).abs() <= *tolerance {
            desired = apply(&mut rules, Rule::Tolerance, desired, current, || {
                format!(
                    "average {average:.1}% within {:.0}% of the target {target}%",
                    tolerance * 100.0
                )
            });
        }
    }
    if desired < current && observed.warming > 0 {
        desired = apply(&mut rules, Rule::WarmUp, desired, current, || {
            format!(
                "{} instance(s) still warming up: no scale-in",
                observed.warming
            )
        });
    }
    if desired < current && unseen > 0 {
        desired = apply(&mut rules, Rule::MissingMetrics, desired, current, || {
            format!(
                "{unseen} instance(s) without a fresh metric ({}): no scale-in",
                ids(&missing)
            )
        });
    }
    if desired > current
        && let Some(last) = state.last_scale_out
    {
        let until = last + config.scale_out_cooldown();
        if now < until {
            desired = apply(&mut rules, Rule::Cooldown, desired, current, || {
                format!(
                    "scale-out cooldown, {}s left",
                    (until - now).as_secs_f64().ceil()
                )
            });
        }
    }
    if desired < current {
        let last = state.last_scale_out.max(state.last_scale_in);
        if let Some(last) = last {
            let until = last + config.scale_in_cooldown();
            if now < until {
                desired = apply(&mut rules, Rule::Cooldown, desired, current, || {
                    format!(
                        "scale-in cooldown, {}s left",
                        (until - now).as_secs_f64().ceil()
                    )
                });
            }
        }
    }
    let rule_driven = desired;
    let bounded = desired.clamp(config.min_instances, config.max_instances);
    desired = apply(&mut rules, Rule::Bounds, desired, bounded, || {
        format!(
            "kept within [{}, {}]",
            config.min_instances, config.max_instances
        )
    });

    if !replace.is_empty() {
        rules.push(RuleApplied {
            rule: Rule::Health,
            from: desired,
            to: desired,
            detail: format!("{} instance(s) replaced", replace.len()),
        });
    }
    let remaining = current - replace.len() as u32;
    let wanted = desired.saturating_sub(remaining);
    let mut launch = hold_launches(observation, wanted, state, now, &mut rules);
    let room = room_under_limit(observation, &replace, config);
    if launch > room {
        rules.push(RuleApplied {
            rule: Rule::InstanceLimit,
            from: launch,
            to: room,
            detail: format!(
                "{} instance(s) running, {} of them leaving, and the account allows {}",
                config.instance_limit - room,
                observation.leaving,
                config.instance_limit
            ),
        });
        launch = room;
    }
    // Rule-driven scaling starts a cooldown; filling up to the minimum or trimming down to the
    // maximum alone does not, nor does a scale-out the launch backoff holds back.
    if desired > current && rule_driven > current && launch == wanted {
        state.last_scale_out = Some(now);
        state.above_since = None;
    } else if desired < current && rule_driven < current {
        state.last_scale_in = Some(now);
        state.below_since = None;
    }
    let mut scale_in = Vec::new();
    if desired < remaining {
        order_for_termination(&mut candidates, config.termination_policy);
        scale_in = candidates
            .iter()
            .take((remaining - desired) as usize)
            .map(|(instance, _)| instance.instance_id.clone())
            .collect();
        let short = (remaining - desired) as usize - scale_in.len();
        if short > 0 {
            let to = desired + short as u32;
            let unlisted = observation.instances.iter().filter(|i| !i.listed).count();
            desired = apply(&mut rules, Rule::NotListed, desired, to, || {
                format!("{unlisted} instance(s) not yet listed by the provider cannot be scaled in")
            });
        }
    }
    Decision {
        observed,
        current,
        recommendation,
        desired,
        rules,
        replace,
        missing,
        launch,
        scale_in,
        launch_backoff: state.launch_backoff(now),
    }
}

/// How many instances may be launched now under the account's instance limit: the limit less
/// the instances that keep running through this evaluation (the fleet, the leaving ones, and
/// those removed now that drain first).
fn room_under_limit(
    observation: &Observation,
    replace: &[Replacement],
    config: &ControllerConfig,
) -> u32 {
    let at_once = if observation.removals_drain {
        let stopped = |r: &&Replacement| {
            observation
                .instances
                .iter()
                .any(|i| i.instance_id == r.instance_id && i.cloud_state == InstanceState::Stopped)
        };
        replace.iter().filter(stopped).count()
    } else {
        replace.len()
    } as u32;
    let running =
        (observation.instances.len() as u32 + observation.leaving).saturating_sub(at_once);
    config.instance_limit.saturating_sub(running)
}

/// The provider refused the launches `decision` asked for (after its own retries), at `now`:
/// the launch backoff counts it as a failed launch, as for an instance that died at start, and
/// the decision shows the backoff. The live controller and the simulator both call this.
pub fn launch_refused(
    decision: &mut Decision,
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
    reason: &str,
) {
    state.launch_failed(config, now, reason);
    decision.launch_backoff = state.launch_backoff(now);
}

/// Counts the failed launches this observation shows, and forgets them once a launch made
/// after the last failure has reported.
fn track_launches(
    observation: &Observation,
    replace: &[Replacement],
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
) {
    let launches = &mut state.launches;
    if launches.consecutive > 0 {
        let since_failure = now.saturating_sub(launches.last_at);
        let proven = observation
            .instances
            .iter()
            .any(|i| i.has_reported && i.health == Some(Health::Healthy) && i.age < since_failure);
        if proven {
            *launches = LaunchFailures::default();
        }
    }
    if !launches.counted.is_empty() {
        launches
            .counted
            .retain(|id| observation.instances.iter().any(|i| &i.instance_id == id));
    }
    let failed: Vec<&Replacement> = replace
        .iter()
        .filter(|r| r.failed_launch && !launches.counted.contains(&r.instance_id))
        .collect();
    if let Some(last) = failed.last() {
        launches
            .counted
            .extend(failed.iter().map(|r| r.instance_id.clone()));
        let reason = format!("{}: {}", last.instance_id, last.reason);
        launches.fail(config, now, reason);
    }
}

/// The launches to make of the `wanted` ones: all of them while launches succeed; while they
/// fail, none before the backoff ends, then one at a time, and none while that one has yet to
/// report.
fn hold_launches(
    observation: &Observation,
    wanted: u32,
    state: &PolicyState,
    now: Duration,
    rules: &mut Vec<RuleApplied>,
) -> u32 {
    let launches = &state.launches;
    if wanted == 0 || launches.consecutive == 0 {
        return wanted;
    }
    let since_failure = now.saturating_sub(launches.last_at);
    let probing = observation.instances.iter().find(|i| {
        !i.has_reported && i.age < since_failure && i.cloud_state != InstanceState::Stopped
    });
    let (launch, why) = if now < launches.retry_at {
        (
            0,
            format!(
                "next attempt in {}s",
                (launches.retry_at - now).as_secs_f64().ceil()
            ),
        )
    } else if let Some(probe) = probing {
        (0, format!("waiting for {} to report", probe.instance_id))
    } else {
        (1, "one instance at a time until one reports".to_string())
    };
    rules.push(RuleApplied {
        rule: Rule::LaunchBackoff,
        from: wanted,
        to: launch,
        detail: format!(
            "launches failing ({} in a row; last: {}): {why}",
            launches.consecutive, launches.reason
        ),
    });
    launch
}

/// Puts the instances a scale-in should remove first at the front.
fn order_for_termination(
    candidates: &mut [(&ObservedInstance, Option<f64>)],
    policy: TerminationPolicy,
) {
    match policy {
        TerminationPolicy::Newest => candidates.sort_by_key(|c| c.0.age),
        TerminationPolicy::Oldest => candidates.sort_by_key(|c| std::cmp::Reverse(c.0.age)),
        TerminationPolicy::LeastLoaded => candidates.sort_by(|a, b| {
            let load = |c: &(&ObservedInstance, Option<f64>)| c.1.unwrap_or(-1.0);
            load(a).total_cmp(&load(b)).then(b.0.age.cmp(&a.0.age))
        }),
    }
}
