//! `evaluate`: the decision, whole. Each instance's role (in service, warming, without a fresh
//! metric, to replace), the loads counted as the Kubernetes HPA counts them, the kind's
//! recommendation (`crate::kinds`), then the guards every kind shares: warm-up, missing
//! metrics, cooldowns, bounds, health, the launch backoff and the account's instance limit.

use std::time::Duration;

use super::memory::{PolicyState, hold_launches, track_launches};
use super::{
    Decision, MissingMetric, MissingReason, Observation, Observed, ObservedInstance, Replacement,
    Rule, RuleApplied,
};
use crate::config::{ControllerConfig, HealthCheckType, PolicyConfig, TerminationPolicy};
use crate::instance::{Health, InstanceState, Lifecycle};
use crate::kinds::{Counted, Direction, Kind, Rules};
use crate::refresh::{Phase, RefreshStep};

fn ids(missing: &[MissingMetric]) -> String {
    let listed: Vec<String> = missing.iter().map(MissingMetric::describe).collect();
    listed.join(", ")
}

enum Role {
    InService(f64),
    Warming,
    WithoutMetric(MissingReason),
    Replace(Replacement),
}

#[inline(always)]
fn role(instance: &ObservedInstance, config: &ControllerConfig, uptime: Duration) -> Role {
    // An instance launched since this controller started that is replaced before it ever
    // reported is a failed launch; an adopted one that is lost is not.
    // An abandoned launch is a failed one too, as on EC2, whoever launched it.
    let failed_launch = (!instance.has_reported && instance.age < uptime)
        || instance.lifecycle == Lifecycle::Abandoned;
    let replace = |reason: String| match instance.listed {
        true => Role::Replace(Replacement {
            instance_id: instance.instance_id.clone(),
            reason,
            failed_launch,
        }),
        // What the provider does not list cannot be terminated: it waits to be listed.
        false => Role::WithoutMetric(MissingReason::NotListed),
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
    match instance.lifecycle {
        // Its launch hook runs: not in service, for as long as the hook's timeout allows.
        Lifecycle::PendingWait => return Role::Warming,
        Lifecycle::Abandoned => return replace("its launch hook abandoned the launch".to_string()),
        // Left by an earlier controller after its drain: it is leaving.
        Lifecycle::TerminatingWait | Lifecycle::TerminatingProceed => {
            return replace(format!("leaving: {}", instance.lifecycle));
        }
        Lifecycle::InService => {}
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
    // Each kind gets its own copy of the evaluation (static dispatch: the simulator makes
    // millions of evaluations, and a virtual call per rule cost a third of a replay's time).
    match &config.policy {
        PolicyConfig::Step(kind) => decide(kind, observation, config, state, now),
        PolicyConfig::TargetTracking(kind) => decide(kind, observation, config, state, now),
    }
}

fn decide(
    kind: &impl Kind,
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
    // Each instance's part, for an instance refresh (only while one runs).
    let refreshing = state.refresh.as_ref().is_some_and(|r| r.status.is_active());
    let mut phases: Vec<(&ObservedInstance, Phase)> = Vec::new();
    for instance in &observation.instances {
        let role = role(instance, config, uptime);
        if refreshing {
            phases.push((
                instance,
                match &role {
                    Role::InService(_) => Phase::InService,
                    Role::Warming => Phase::Warming,
                    Role::WithoutMetric(_) => Phase::WithoutMetric,
                    Role::Replace(_) => Phase::Replaced,
                },
            ));
        }
        match role {
            Role::InService(load) => {
                observed.in_service += 1;
                sum += load;
                if instance.listed && !instance.protected {
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
                if instance.listed && !instance.protected {
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
    // The fleet being sized: the instances listed less those an instance refresh runs above
    // the desired capacity (`max_healthy_percentage` above 100), which no rule holds on to.
    let surge = match &state.refresh {
        Some(refresh) if refresh.status.is_active() => current
            .saturating_sub(refresh.last_desired)
            .min(refresh.surge),
        _ => 0,
    };
    let sized = current - surge;
    let mut rules = Rules::default();

    // Where the reported loads point, and the level at which a missing instance is counted.
    let unseen = missing.len() as u32;
    let direction = observed
        .average_load
        .map_or(Direction::Hold, |average| kind.direction(average));
    let fill = match direction {
        Direction::Out => Some(0.0),
        Direction::In => kind.scale_in_level(),
        Direction::Hold => None,
    };
    for metric in &mut missing {
        metric.counted_as = fill;
    }
    // An instance being replaced keeps its place in the sizing, as EC2 Auto Scaling keeps the
    // desired capacity through a replacement: it counts as one without a metric does, and at
    // the kind's resting level (the target) when the loads point nowhere.
    // Not the refresh's surge, though: it is no part of the fleet being sized.
    let replaced = observed.to_replace.saturating_sub(surge);
    let replaced_fill = fill.unwrap_or_else(|| kind.resting_level());
    let absent_sum = f64::from(unseen) * fill.unwrap_or(0.0) + f64::from(replaced) * replaced_fill;
    // The loads with the missing and replaced instances counted as above.
    let counted = observed.average_load.map(|_| Counted {
        current: sized,
        sum: sum + absent_sum,
        average: (sum + absent_sum) / f64::from(reported + unseen + replaced),
        direction,
        missing: &missing,
    });

    // The kind's creation / destruction rule.
    let recommendation = match &counted {
        // An empty fleet has nothing to miss: only the bounds act on it.
        None if sized == 0 => {
            state.sustain.reset();
            sized
        }
        None => {
            state.sustain.reset();
            rules.apply(Rule::MissingMetrics, sized, sized, || {
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
        Some(counted) => kind.recommend(counted, &mut state.sustain, now, &mut rules),
    };

    let mut desired = match &counted {
        Some(counted) => kind.settle(recommendation, counted, &mut rules),
        None => recommendation,
    };
    if desired < sized && observed.warming > 0 {
        desired = rules.apply(Rule::WarmUp, desired, sized, || {
            format!(
                "{} instance(s) still warming up: no scale-in",
                observed.warming
            )
        });
    }
    if desired < sized && unseen > 0 {
        desired = rules.apply(Rule::MissingMetrics, desired, sized, || {
            format!(
                "{unseen} instance(s) without a fresh metric ({}): no scale-in",
                ids(&missing)
            )
        });
    }
    if desired > sized
        && let Some(last) = state.last_scale_out
    {
        let until = last + config.scale_out_cooldown();
        if now < until {
            desired = rules.apply(Rule::Cooldown, desired, sized, || {
                format!(
                    "scale-out cooldown, {}s left",
                    (until - now).as_secs_f64().ceil()
                )
            });
        }
    }
    if desired < sized {
        let last = state.last_scale_out.max(state.last_scale_in);
        if let Some(last) = last {
            let until = last + config.scale_in_cooldown();
            if now < until {
                desired = rules.apply(Rule::Cooldown, desired, sized, || {
                    format!(
                        "scale-in cooldown, {}s left",
                        (until - now).as_secs_f64().ceil()
                    )
                });
            }
        }
    }
    // An operator's desired capacity: taken as it is (the bounds still apply), and the
    // cooldowns start from it, so the policy does not undo it at once.
    if let Some(set) = state.desired_override.take() {
        desired = rules.apply(Rule::Operator, desired, set, || {
            format!("desired capacity {set} set by an operator")
        });
        state.last_scale_out = Some(now);
        state.last_scale_in = Some(now);
    }
    let rule_driven = desired;
    let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    // The forecast: it records the demand, and raises the floor to what the demand of the next
    // lead time needs (never lowers it), when it acts. No cooldown: it is a floor, as a
    // schedule's is.
    // The demand is recorded with or without a forecaster (the store keeps it for the next
    // leader and for what-if replays).
    state.predictive.observe(
        config.predictive.as_ref(),
        now_ms,
        (reported > 0).then(|| sum / 100.0),
        &observation.instances,
        uptime,
    );
    let forecast = config.predictive.as_ref().map(|predictive| {
        state
            .predictive
            .view(predictive, predictive.target_for(&config.policy), now_ms)
    });
    if let Some(view) = &forecast
        && view.acting
        && view.floor > desired
    {
        desired = rules.apply(Rule::Forecast, desired, view.floor, || {
            format!(
                "forecast demand {:.2} capacities within the lead time {}s: floor {}",
                view.demand, view.lead_secs, view.floor
            )
        });
    }
    // The bounds: the config's, or those the schedules set now (the policy's clock is
    // wall-clock time live, and the trace's clock in the simulator).
    let scheduled = state.schedule.at(config, now_ms);
    let plain = desired.clamp(config.min_instances, config.max_instances);
    let bounded = scheduled
        .as_ref()
        .map_or(plain, |s| desired.clamp(s.min_instances, s.max_instances));
    desired = match &scheduled {
        Some(scheduled) if bounded != plain => {
            rules.apply(Rule::Schedule, desired, bounded, || scheduled.describe())
        }
        _ => rules.apply(Rule::Bounds, desired, bounded, || {
            let (min, max) = scheduled
                .as_ref()
                .map_or((config.min_instances, config.max_instances), |s| {
                    (s.min_instances, s.max_instances)
                });
            format!("kept within [{min}, {max}]")
        }),
    };

    if !replace.is_empty() {
        rules.0.push(RuleApplied {
            rule: Rule::Health,
            from: desired,
            to: desired,
            detail: format!("{} instance(s) replaced", replace.len()),
        });
    }
    // An instance refresh replaces old instances within its healthy percentages, and may
    // launch above the desired capacity first.
    let mut extra = 0;
    if let Some(refresh) = state.refresh.as_mut() {
        let step = refresh.step(
            &phases,
            &replace,
            desired,
            observation.leaving,
            config.warmup_secs,
            now_ms,
        );
        refresh.last_desired = desired;
        refresh.surge = step.extra;
        if !step.replace.is_empty() || step.extra > 0 {
            rules.0.push(RuleApplied {
                rule: Rule::Refresh,
                from: desired,
                to: desired + step.extra,
                detail: refresh_detail(refresh, &step),
            });
        }
        extra = step.extra;
        candidates.retain(|(i, _)| !step.replace.iter().any(|r| r.instance_id == i.instance_id));
        replace.extend(step.replace);
    }
    let launch_version = match &state.refresh {
        Some(refresh) if refresh.status.is_active() => Some(refresh.target.clone()),
        _ => observation.launch_version.clone(),
    };
    let remaining = current - replace.len() as u32;
    let wanted = (desired + extra).saturating_sub(remaining);
    let mut launch = hold_launches(observation, wanted, state, now, &mut rules.0);
    let room = room_under_limit(observation, &replace, config);
    if launch > room {
        rules.0.push(RuleApplied {
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
    if desired > sized && rule_driven > sized && launch == wanted {
        state.last_scale_out = Some(now);
        state.sustain.above_since = None;
    } else if desired < sized && rule_driven < sized {
        state.last_scale_in = Some(now);
        state.sustain.below_since = None;
    }
    let mut scale_in = Vec::new();
    if desired + extra < remaining {
        order_for_termination(&mut candidates, config.termination_policy);
        // Instances on another version than the launches' go first, as EC2 takes those of
        // the oldest launch template first.
        if let Some(version) = &launch_version {
            candidates.sort_by_key(|(i, _)| i.version.as_ref() == Some(version));
        }
        scale_in = candidates
            .iter()
            .take((remaining - desired - extra) as usize)
            .map(|(instance, _)| instance.instance_id.clone())
            .collect();
        let short = (remaining - desired - extra) as usize - scale_in.len();
        if short > 0 {
            let to = desired + short as u32;
            let unlisted = observation.instances.iter().filter(|i| !i.listed).count();
            desired = rules.apply(Rule::NotListed, desired, to, || {
                format!("{unlisted} instance(s) not yet listed by the provider cannot be scaled in")
            });
        }
    }
    Decision {
        observed,
        current,
        recommendation,
        desired,
        rules: rules.0,
        replace,
        missing,
        launch,
        scale_in,
        launch_backoff: state.launch_backoff(now),
        scheduled,
        forecast,
        refresh: state.refresh.clone(),
        launch_version,
    }
}

fn refresh_detail(refresh: &crate::refresh::Refresh, step: &RefreshStep) -> String {
    let mut parts = Vec::new();
    if !step.replace.is_empty() {
        let ids: Vec<&str> = step
            .replace
            .iter()
            .map(|r| r.instance_id.as_str())
            .collect();
        parts.push(format!("replacing {}", ids.join(", ")));
    }
    if step.extra > 0 {
        parts.push(format!(
            "{} above the desired capacity (max healthy {} %)",
            step.extra, refresh.preferences.max_healthy_percentage
        ));
    }
    format!("{}: {}", refresh.describe(), parts.join("; "))
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

/// The provider refused a launch (after its own retries) at `now`: the launch backoff counts it
/// as a failed launch, as for an instance that died at start; returns the backoff, which the
/// decision that asked for the launch then shows. The live controller and the simulator both
/// call this.
pub fn launch_refused(
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
    reason: &str,
) -> Option<super::LaunchBackoff> {
    state.launch_failed(config, now, reason);
    state.launch_backoff(now)
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
