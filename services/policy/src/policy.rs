//! The scaling policy: a pure function of what is observed, the config, the policy's own memory
//! and the time, returning a decision that explains itself. No I/O and no clock reads: the live
//! controller, the tests and the simulator call the same code.

use std::time::Duration;

use crate::config::{ControllerConfig, PolicyConfig, TerminationPolicy};
use crate::instance::{Health, InstanceState};

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
}

/// Everything the policy looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub instances: Vec<ObservedInstance>,
    /// Time since the controller started: the registration grace never ends before it does, so
    /// a restarted controller does not replace instances that have yet to register again.
    pub controller_uptime: Duration,
}

/// The policy's memory between evaluations. Times are the evaluation clock's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyState {
    above_since: Option<Duration>,
    below_since: Option<Duration>,
    last_scale_out: Option<Duration>,
    last_scale_in: Option<Duration>,
}

/// A rule that changed the recommendation, or held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    MissingMetrics,
    Tolerance,
    Sustain,
    WarmUp,
    Cooldown,
    Bounds,
    Health,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::MissingMetrics => "missing-metrics",
            Rule::Tolerance => "tolerance",
            Rule::Sustain => "sustain",
            Rule::WarmUp => "warm-up",
            Rule::Cooldown => "cooldown",
            Rule::Bounds => "bounds",
            Rule::Health => "health",
        }
    }
}

/// A rule's effect on the desired size.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RuleApplied {
    pub rule: Rule,
    pub from: u32,
    pub to: u32,
    pub detail: String,
}

/// What was observed, in counts.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Observed {
    pub total: u32,
    pub in_service: u32,
    pub warming: u32,
    pub without_metrics: u32,
    pub to_replace: u32,
    /// Average load of the in-service instances, percent.
    pub average_load: Option<f64>,
}

/// An instance to terminate and replace, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Replacement {
    pub instance_id: String,
    pub reason: String,
}

/// One evaluation: what was seen, what the rule recommended, what changed it, what to do.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub observed: Observed,
    /// Instances listed by the provider.
    pub current: u32,
    /// What the creation/destruction rule alone asked for.
    pub recommendation: u32,
    pub desired: u32,
    pub rules: Vec<RuleApplied>,
    pub replace: Vec<Replacement>,
    /// New instances to launch (replacements included).
    pub launch: u32,
    /// Instances removed by scale-in.
    pub scale_in: Vec<String>,
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
    WithoutMetrics,
    Replace(String),
}

fn role(instance: &ObservedInstance, config: &ControllerConfig, uptime: Duration) -> Role {
    if instance.cloud_state == InstanceState::Stopped {
        return Role::Replace("not running".to_string());
    }
    match instance.health {
        Some(Health::Unhealthy) => return Role::Replace("unhealthy per the monitor".to_string()),
        None if instance.age.min(uptime) > config.registration_grace() => {
            return Role::Replace(format!(
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
        _ => Role::WithoutMetrics,
    }
}

/// Evaluates the policy at time `now` (of the same clock as earlier calls with `state`).
pub fn evaluate(
    observation: &Observation,
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
) -> Decision {
    let mut observed = Observed {
        total: observation.instances.len() as u32,
        ..Observed::default()
    };
    let mut replace = Vec::new();
    let mut candidates: Vec<(&ObservedInstance, Option<f64>)> =
        Vec::with_capacity(observation.instances.len());
    let mut loads = Vec::with_capacity(observation.instances.len());
    for instance in &observation.instances {
        match role(instance, config, observation.controller_uptime) {
            Role::InService(load) => {
                observed.in_service += 1;
                loads.push(load);
                candidates.push((instance, Some(load)));
            }
            Role::Warming => observed.warming += 1,
            Role::WithoutMetrics => {
                observed.without_metrics += 1;
                candidates.push((instance, None));
            }
            Role::Replace(reason) => {
                observed.to_replace += 1;
                replace.push(Replacement {
                    instance_id: instance.instance_id.clone(),
                    reason,
                });
            }
        }
    }
    let sum: f64 = loads.iter().sum();
    observed.average_load = (!loads.is_empty()).then(|| sum / loads.len() as f64);

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

    // The creation / destruction rule.
    let recommendation = match observed.average_load {
        None => {
            state.above_since = None;
            state.below_since = None;
            apply(&mut rules, Rule::MissingMetrics, current, current, || {
                "no in-service instance reported a load; holding".to_string()
            })
        }
        Some(average) => match &config.policy {
            PolicyConfig::TargetTracking { target, .. } => (sum / target).ceil() as u32,
            PolicyConfig::Step {
                scale_out,
                scale_in,
            } => {
                let high = scale_out.above.unwrap_or(100.0);
                let low = scale_in.below.unwrap_or(0.0);
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
        (&config.policy, observed.average_load)
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
    // Rule-driven scaling starts a cooldown; filling up to the minimum or trimming down to the
    // maximum alone does not.
    if desired > current && rule_driven > current {
        state.last_scale_out = Some(now);
        state.above_since = None;
    } else if desired < current && rule_driven < current {
        state.last_scale_in = Some(now);
        state.below_since = None;
    }

    if !replace.is_empty() {
        rules.push(RuleApplied {
            rule: Rule::Health,
            from: desired,
            to: desired,
            detail: format!("{} instance(s) replaced", replace.len()),
        });
    }
    let remaining = current - replace.len() as u32;
    let launch = desired.saturating_sub(remaining);
    let mut scale_in = Vec::new();
    if desired < remaining {
        order_for_termination(&mut candidates, config.termination_policy);
        scale_in = candidates
            .iter()
            .take((remaining - desired) as usize)
            .map(|(instance, _)| instance.instance_id.clone())
            .collect();
    }
    Decision {
        observed,
        current,
        recommendation,
        desired,
        rules,
        replace,
        launch,
        scale_in,
    }
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
