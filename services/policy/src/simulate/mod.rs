//! The policy simulator: replays a demand trace through the very `policy::evaluate` the live
//! controller runs (or a reference policy) on a virtual clock, against a model of the cloud
//! (boot delay, listing lag, drain time behind a load balancer, termination delay, refused
//! launches), and scores the run. The live controller acts on the decision as it is, so what is
//! replayed is what would act. No sleeping: a month at one-second resolution replays in well
//! under a second.

pub mod aws_predictive;
pub mod chart;
pub mod reference;
pub mod score;
pub mod trace;

use std::time::Duration;

use crate::config::{ControllerConfig, PolicyConfig};
use crate::forecast::model::{self, Model, Score, Series};
use crate::forecast::{DemandSample, PredictiveConfig, PredictiveMode};
use crate::instance::{Health, InstanceState};
use crate::kinds::{Step, StepRule};
use crate::policy::{self, Observation, ObservedInstance, PolicyState};
use crate::random::SplitMix64;
use aws_predictive::AwsPredictive;
use reference::{AwsStep, AwsTarget, Hpa, Reference};
use score::{Scorer, Scores};
use trace::Trace;

/// How the simulated cloud behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudModel {
    /// Seconds from a launch to the instance serving (and reporting load).
    pub boot_delay_secs: u64,
    /// Seconds a terminated instance is still paid for. It stops serving at once.
    pub termination_delay_secs: u64,
    /// Probability that the provider refuses one launch (insufficient capacity): no instance,
    /// and the launch backoff counts it (`policy::launch_refused`), as live.
    pub launch_failure_rate: f64,
    /// Seconds from a launch until the provider lists the instance (EC2's listing lags its
    /// launches): until then it counts towards the fleet and cannot be terminated, as live.
    pub listing_lag_secs: u64,
    /// Seconds a removed instance with requests in flight takes to drain from the load balancer
    /// before its termination (the longest request); 0: no load balancer, removals terminate at
    /// once. A draining instance serves no new request, is paid for, and counts against the
    /// account's instance limit; an idle one is done by the next evaluation.
    pub drain_secs: u64,
    pub seed: u64,
}

impl Default for CloudModel {
    fn default() -> Self {
        CloudModel {
            boot_delay_secs: 60,
            termination_delay_secs: 30,
            launch_failure_rate: 0.0,
            listing_lag_secs: 0,
            drain_secs: 0,
            seed: 1,
        }
    }
}

/// Settings of a run that are not the policy's.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub cloud: CloudModel,
    /// Per-instance load above which a second counts against the SLO, percent.
    pub slo: f64,
    /// A scale-in this many seconds or fewer after a scale-out is a reversal.
    pub reversal_window_secs: u64,
    /// Keep the per-second supply for a chart.
    pub keep_series: bool,
    /// The wall-clock time of the trace's first second, in seconds since the Unix epoch: the
    /// policy's clock, at which scheduled windows hold.
    pub start_secs: u64,
    /// The trace's first seconds that are not replayed nor scored: their demand is the history
    /// the forecasters start with (a group that has been recording it).
    pub warm_up_secs: usize,
}

/// 2026-01-05T00:00:00Z, a Monday: where a trace starts unless told.
pub const DEFAULT_START_SECS: u64 = 1_767_571_200;

impl Default for Options {
    fn default() -> Self {
        Options {
            cloud: CloudModel::default(),
            slo: 80.0,
            reversal_window_secs: 300,
            keep_series: true,
            start_secs: DEFAULT_START_SECS,
            warm_up_secs: 0,
        }
    }
}

/// A policy to replay.
#[derive(Clone, Debug)]
pub enum Policy {
    /// The project's own policy, run by `policy::evaluate` with this config.
    Project {
        name: String,
        config: Box<ControllerConfig>,
    },
    /// The Kubernetes HPA reference.
    Hpa { name: String, model: Hpa },
    /// The AWS step scaling reference.
    AwsStep { name: String, model: AwsStep },
    /// The EC2 target tracking reference.
    AwsTarget { name: String, model: AwsTarget },
    /// The EC2 predictive scaling reference (with its target tracking).
    AwsPredictive {
        name: String,
        model: Box<AwsPredictive>,
    },
}

impl Policy {
    /// The project's target tracking with its default settings, within `[min, max]`.
    pub fn ours_target(min: u32, max: u32) -> Policy {
        Policy::Project {
            name: "ours-target".to_string(),
            config: Box::new(bounded(ControllerConfig::default(), min, max)),
        }
    }

    /// The project's step policy: above 70 % for 60 s adds one, below 30 % for 120 s removes one.
    pub fn ours_step(min: u32, max: u32) -> Policy {
        let config = ControllerConfig {
            policy: PolicyConfig::Step(Step {
                scale_out: StepRule {
                    above: Some(70.0),
                    below: None,
                    for_secs: 60,
                    step: 1,
                },
                scale_in: StepRule {
                    above: None,
                    below: Some(30.0),
                    for_secs: 120,
                    step: 1,
                },
            }),
            ..ControllerConfig::default()
        };
        Policy::Project {
            name: "ours-step".to_string(),
            config: Box::new(bounded(config, min, max)),
        }
    }

    pub fn hpa(target: f64, min: u32, max: u32) -> Policy {
        Policy::Hpa {
            name: "k8s-hpa".to_string(),
            model: Hpa::new(target, min, max),
        }
    }

    /// The project's target tracking at 70 % with its forecaster acting (`forecast-and-scale`,
    /// the floor sized at 78 %: the reactive policy keeps the margin, the forecast covers the
    /// ramps a boot-long lag cannot follow). Chosen on the planning benchmark's traces
    /// (docs/BENCHMARKS.md).
    pub fn ours_predictive(min: u32, max: u32) -> Policy {
        let config = ControllerConfig {
            policy: PolicyConfig::TargetTracking(crate::kinds::TargetTracking {
                target: 70.0,
                tolerance: 0.1,
            }),
            predictive: Some(PredictiveConfig {
                mode: PredictiveMode::ForecastAndScale,
                target_percent: Some(78.0),
                ..PredictiveConfig::default()
            }),
            ..ControllerConfig::default()
        };
        Policy::Project {
            name: "ours-predictive".to_string(),
            config: Box::new(bounded(config, min, max)),
        }
    }

    pub fn aws_target(target: f64, min: u32, max: u32) -> Policy {
        Policy::AwsTarget {
            name: "aws-target".to_string(),
            model: AwsTarget::new(target, min, max),
        }
    }

    pub fn aws_predictive(target: f64, min: u32, max: u32) -> Policy {
        Policy::AwsPredictive {
            name: "aws-predictive".to_string(),
            model: Box::new(AwsPredictive::new(target, min, max)),
        }
    }

    pub fn aws_step(min: u32, max: u32) -> Policy {
        Policy::AwsStep {
            name: "aws-step".to_string(),
            model: AwsStep::new(min, max),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Policy::Project { name, .. }
            | Policy::Hpa { name, .. }
            | Policy::AwsStep { name, .. }
            | Policy::AwsTarget { name, .. }
            | Policy::AwsPredictive { name, .. } => name,
        }
    }

    /// One line on what the policy does.
    pub fn describe(&self) -> String {
        match self {
            Policy::Project { config, .. } => {
                let rule = config.policy.kind().describe();
                let windows: Vec<String> = config
                    .schedule
                    .iter()
                    .map(|w| {
                        format!(
                            "; window {} \"{}\" {} for {}s: min {}",
                            w.name, w.cron, w.time_zone, w.duration_secs, w.min_instances
                        )
                    })
                    .collect();
                let forecast = config.predictive.as_ref().map_or(String::new(), |p| {
                    format!(
                        "; forecast {} at {}%, lead time p95 of its launches (at least {}s)",
                        p.mode.as_str(),
                        p.target_for(&config.policy),
                        p.min_lead_secs
                    )
                });
                format!(
                    "{rule}; cooldowns out {}s, in {}s; every {}ms; [{}, {}]{}{forecast}",
                    config.scale_out_cooldown_secs,
                    config.scale_in_cooldown_secs,
                    config.evaluation_interval_ms,
                    config.min_instances,
                    config.max_instances,
                    windows.concat()
                )
            }
            Policy::Hpa { model, .. } => format!(
                "Kubernetes HPA: target {}% +/-{:.0}%, every 15s, scale-in stabilised {}s; [{}, {}]",
                model.target,
                model.tolerance * 100.0,
                model.stabilization_secs,
                model.min,
                model.max
            ),
            Policy::AwsStep { model, .. } => format!(
                "AWS step scaling: 1-min CloudWatch average, +1 above {}% (+2 at {}%), -1 below {}% for {} periods, cooldown {}s; [{}, {}]",
                model.high,
                model.very_high,
                model.low,
                model.low_periods,
                model.cooldown_secs,
                model.min,
                model.max
            ),
            Policy::AwsTarget { model, .. } => aws_target_text(model),
            Policy::AwsPredictive { model, .. } => format!(
                "EC2 predictive scaling: hourly forecast for 48 h from up to 14 days (after 24 h), buffer {}s, desired = max(forecast, target tracking); {}",
                model.buffer_secs,
                aws_target_text(&model.target_tracking)
            ),
        }
    }

    fn min_instances(&self) -> u32 {
        match self {
            Policy::Project { config, .. } => config.min_instances,
            Policy::Hpa { model, .. } => model.min,
            Policy::AwsStep { model, .. } => model.min,
            Policy::AwsTarget { model, .. } => model.min,
            Policy::AwsPredictive { model, .. } => model.target_tracking.min,
        }
    }

    fn max_instances(&self) -> u32 {
        match self {
            Policy::Project { config, .. } => config.max_instances,
            Policy::Hpa { model, .. } => model.max,
            Policy::AwsStep { model, .. } => model.max,
            Policy::AwsTarget { model, .. } => model.max,
            Policy::AwsPredictive { model, .. } => model.target_tracking.max,
        }
    }

    fn period_secs(&self) -> u64 {
        match self {
            Policy::Project { config, .. } => config.evaluation_interval_ms.div_ceil(1_000).max(1),
            Policy::Hpa { model, .. } => model.period(),
            Policy::AwsStep { model, .. } => model.period(),
            Policy::AwsTarget { model, .. } => model.period(),
            Policy::AwsPredictive { model, .. } => model.period(),
        }
    }
}

fn aws_target_text(model: &AwsTarget) -> String {
    format!(
        "EC2 target tracking: {}%, 1-min metrics, out after {} periods above, in after {} below 90 % of it, warm-up {}s; [{}, {}]",
        model.target, model.out_periods, model.in_periods, model.warmup_secs, model.min, model.max
    )
}

fn bounded(mut config: ControllerConfig, min: u32, max: u32) -> ControllerConfig {
    config.min_instances = min;
    config.max_instances = max;
    config.instance_limit = config.instance_limit.max(max);
    config
}

/// The result of one replay.
#[derive(Clone, Debug)]
pub struct Run {
    pub policy: String,
    pub description: String,
    pub scores: Scores,
    /// Instances serving, per second (empty unless `keep_series`).
    pub supply: Vec<u32>,
    /// Instances paid for, per second (empty unless `keep_series`).
    pub billed: Vec<u32>,
    /// What makes this replay unlike a sound deployment (a boot slower than the grace).
    pub warnings: Vec<String>,
}

/// Settings of `policy` that the modelled cloud defeats.
pub fn warnings(policy: &Policy, cloud: &CloudModel) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Policy::Project { name, config } = policy
        && cloud.boot_delay_secs > config.registration_grace_secs
    {
        warnings.push(format!(
            "{name}: the modelled boot delay ({} s) exceeds registration_grace_secs ({} s): every booting instance is replaced before it can register, and launches back off as failing",
            cloud.boot_delay_secs, config.registration_grace_secs
        ));
    }
    warnings
}

#[derive(Clone, Debug)]
struct Instance {
    launched_at: u64,
    ready_at: u64,
    listed_at: u64,
}

/// The simulated cloud: the group's instances (parallel to the observation), instances draining
/// from the load balancer (when they are done), and instances that are terminating and still
/// paid for (when they are gone).
struct World {
    listed: Vec<Instance>,
    observation: Observation,
    draining: Vec<u64>,
    terminating: Vec<u64>,
    next_id: u64,
    random: SplitMix64,
}

impl World {
    fn launch(&mut self, now: u64, ready_at: u64, listed_at: u64) {
        self.next_id += 1;
        self.listed.push(Instance {
            launched_at: now,
            ready_at,
            listed_at,
        });
        self.observation.instances.push(ObservedInstance {
            instance_id: format!("sim-{:06}", self.next_id),
            cloud_state: InstanceState::Pending,
            age: Duration::ZERO,
            health: None,
            load: None,
            has_reported: false,
            state_reason: None,
            target_unhealthy: None,
            listed: listed_at <= now,
            version: None,
            protected: false,
            serving: None,
            lifecycle: crate::Lifecycle::InService,
        });
    }

    /// Removes `instance_id` from the group at `now`: behind a load balancer it drains first
    /// (for `drain_secs` when it had requests in flight), else it terminates at once.
    fn remove(&mut self, instance_id: &str, now: u64, cloud: &CloudModel) -> bool {
        let Some(at) = self
            .observation
            .instances
            .iter()
            .position(|i| i.instance_id == instance_id)
        else {
            return false;
        };
        self.listed.swap_remove(at);
        let seen = self.observation.instances.swap_remove(at);
        if cloud.drain_secs == 0 {
            self.terminating.push(now + cloud.termination_delay_secs);
        } else {
            let busy = seen.load.is_some_and(|load| load > 0.0);
            self.draining
                .push(now + if busy { cloud.drain_secs } else { 0 });
        }
        true
    }

    /// Terminates the instances whose drain is done by `now`.
    fn drained(&mut self, now: u64, cloud: &CloudModel) {
        let terminating = &mut self.terminating;
        self.draining.retain(|&done_at| {
            if done_at > now {
                return true;
            }
            terminating.push(now + cloud.termination_delay_secs);
            false
        });
    }

    fn serving(&self, now: u64) -> u32 {
        self.listed.iter().filter(|i| i.ready_at <= now).count() as u32
    }

    /// Brings the observation up to second `now` (the replay began at `first`) with every
    /// serving instance at `load`.
    fn observe(&mut self, now: u64, first: u64, load: f64) {
        self.observation.controller_uptime = Duration::from_secs(now - first);
        self.observation.leaving = self.draining.len() as u32;
        for (instance, seen) in self.listed.iter().zip(&mut self.observation.instances) {
            seen.age = Duration::from_secs(now - instance.launched_at);
            seen.listed = instance.listed_at <= now;
            if instance.ready_at <= now {
                seen.cloud_state = InstanceState::Running;
                seen.health = Some(Health::Healthy);
                seen.load = Some(load);
                seen.has_reported = true;
            }
        }
    }

    /// Instances to remove: booting ones first, then the newest.
    fn victims(&self, count: usize, now: u64) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.listed.len()).collect();
        order.sort_by_key(|&i| {
            let instance = &self.listed[i];
            (
                instance.ready_at <= now,
                std::cmp::Reverse(instance.launched_at),
            )
        });
        order
            .into_iter()
            .take(count)
            .map(|i| self.observation.instances[i].instance_id.clone())
            .collect()
    }
}

/// Replays `trace` through `policy`. The fleet starts serving, with the policy's minimum (after
/// a warm-up: with what the first replayed second needs under the SLO, within the bounds).
pub fn simulate(trace: &Trace, policy: &Policy, options: &Options) -> Run {
    let mut policy = policy.clone();
    let mut state = PolicyState::default();
    let cloud = &options.cloud;
    let mut world = World {
        listed: Vec::new(),
        observation: Observation {
            removals_drain: cloud.drain_secs > 0,
            ..Observation::default()
        },
        draining: Vec::new(),
        terminating: Vec::new(),
        next_id: 0,
        random: SplitMix64(cloud.seed),
    };
    // The warm-up: history for the forecasters, neither replayed nor scored.
    let first = options.warm_up_secs.min(trace.demand.len());
    match &mut policy {
        Policy::Project { config, .. } if config.predictive.is_some() => {
            state
                .forecaster()
                .load_history(minutes(&trace.demand[..first], options.start_secs));
        }
        Policy::AwsPredictive { model, .. } => model.preload(&trace.demand[..first]),
        _ => {}
    }
    // A new group starts with its minimum; after a warm-up the group has been running, and
    // starts with what the first second needs under the SLO (the policy's minimum at least),
    // so that a replay that starts mid-day does not begin with a breach.
    let needed = match trace.demand.get(first) {
        Some(&demand) if first > 0 => (demand * 100.0 / options.slo - 1e-9).ceil().max(0.0) as u32,
        _ => 0,
    };
    let first = first as u64;
    for _ in 0..policy
        .min_instances()
        .max(needed.min(policy.max_instances()))
    {
        world.launch(first, first, first);
    }
    let period = policy.period_secs();
    let mut scorer = Scorer::new(options.slo, options.reversal_window_secs);
    let keep = options.keep_series;
    let mut supply_series = Vec::with_capacity(if keep { trace.demand.len() } else { 0 });
    let mut billed_series = Vec::with_capacity(supply_series.capacity());
    for (second, &demand) in trace.demand.iter().enumerate().skip(first as usize) {
        let now = second as u64;
        if !world.terminating.is_empty() {
            world.terminating.retain(|&gone_at| gone_at > now);
        }
        let serving = world.serving(now);
        let load = if serving == 0 {
            0.0
        } else {
            (demand / f64::from(serving) * 100.0).min(100.0)
        };
        let evaluating = now.is_multiple_of(period);
        let sampling = matches!(
            policy,
            Policy::AwsStep { .. } | Policy::AwsTarget { .. } | Policy::AwsPredictive { .. }
        );
        if evaluating && !world.draining.is_empty() {
            world.drained(now, cloud);
        }
        if evaluating || sampling {
            world.observe(now, first, load);
        }
        match &mut policy {
            Policy::AwsStep { model, .. } => model.sample(&world.observation),
            Policy::AwsTarget { model, .. } => model.sample(&world.observation),
            Policy::AwsPredictive { model, .. } => model.sample(&world.observation, now),
            _ => {}
        }
        if evaluating && now > first {
            let (launch, terminate) = match &mut policy {
                Policy::Project { config, .. } => {
                    let decided = policy::evaluate(
                        &world.observation,
                        config,
                        &mut state,
                        Duration::from_secs(options.start_secs + now),
                    );
                    let mut terminate = decided.scale_in;
                    terminate.extend(decided.replace.into_iter().map(|r| r.instance_id));
                    (decided.launch, terminate)
                }
                Policy::Hpa { model, .. } => {
                    plan(&world, model.desired(&world.observation, now), now)
                }
                Policy::AwsStep { model, .. } => {
                    plan(&world, model.desired(&world.observation, now), now)
                }
                Policy::AwsTarget { model, .. } => {
                    plan(&world, model.desired(&world.observation, now), now)
                }
                Policy::AwsPredictive { model, .. } => {
                    plan(&world, model.desired(&world.observation, now), now)
                }
            };
            if !terminate.is_empty() {
                for instance_id in &terminate {
                    world.remove(instance_id, now, cloud);
                }
                scorer.scale_in(now);
            }
            if launch > 0 {
                scorer.scale_out(now);
                let mut refused = 0;
                for _ in 0..launch {
                    if cloud.launch_failure_rate > 0.0
                        && world.random.next_f64() < cloud.launch_failure_rate
                    {
                        scorer.launch_failed();
                        refused += 1;
                    } else {
                        world.launch(
                            now,
                            now + cloud.boot_delay_secs,
                            now + cloud.listing_lag_secs,
                        );
                    }
                }
                // The live controller backs off after a refused launch; so does the replay.
                if refused > 0
                    && let Policy::Project { config, .. } = &policy
                {
                    policy::launch_refused(
                        config,
                        &mut state,
                        Duration::from_secs(options.start_secs + now),
                        "insufficient capacity (simulated)",
                    );
                }
            }
        }
        let serving = world.serving(now);
        // Paid for: the group, the draining, and the terminating not yet gone by this second.
        let terminating = world.terminating.iter().filter(|&&gone| gone > now).count();
        let billed = (world.listed.len() + world.draining.len() + terminating) as u32;
        scorer.second(demand, serving, billed);
        if keep {
            supply_series.push(serving);
            billed_series.push(billed);
        }
    }
    Run {
        policy: policy.name().to_string(),
        description: policy.describe(),
        scores: scorer.finish(),
        supply: supply_series,
        billed: billed_series,
        warnings: warnings(&policy, cloud),
    }
}

/// The oracle: what a policy that knows the future and launches in no time would pay to keep
/// every second under the SLO: supply = ceil(demand / SLO) at every second, within `[min, max]`.
/// Its instance-hours are the least any policy can pay for the SLO: the others are read as a
/// ratio to it.
pub fn oracle(trace: &Trace, min: u32, max: u32, options: &Options) -> Run {
    let mut scorer = Scorer::new(options.slo, options.reversal_window_secs);
    let keep = options.keep_series;
    let mut supply = Vec::with_capacity(if keep { trace.demand.len() } else { 0 });
    for &demand in trace.after(options.warm_up_secs) {
        let needed = (demand * 100.0 / options.slo - 1e-9).ceil().max(0.0) as u32;
        let serving = needed.clamp(min, max);
        scorer.second(demand, serving, serving);
        if keep {
            supply.push(serving);
        }
    }
    Run {
        policy: "oracle".to_string(),
        description: format!(
            "knows the future, boots in no time: supply = ceil(demand / {}%) every second; [{min}, {max}]",
            options.slo
        ),
        scores: scorer.finish(),
        billed: supply.clone(),
        supply,
        warnings: Vec::new(),
    }
}

/// How the forecaster did on the replayed part of `trace`: each hour forecast from its start on
/// what came before it (the warm-up included), scored against the trace's demand; beside it the
/// seasonal-naive baseline. `None` when less than a day of it could be scored.
pub fn forecast_error(trace: &Trace, options: &Options) -> Option<(Score, Score)> {
    let samples = minutes(&trace.demand, options.start_secs);
    let series = Series::from_samples(&samples, i64::MAX);
    let end = series.end_slot();
    let first = series.first_slot() + model::DAY.max((options.warm_up_secs as i64) / 300);
    let hours = (end - first) / 12;
    (hours >= 24).then(|| {
        (
            model::backtest(&series, end, hours, Model::Seasonal),
            model::backtest(&series, end, hours, Model::SeasonalNaive),
        )
    })
}

/// The demand of each whole minute of `demand` (one value a second from `start_secs`), as the
/// leader records it.
fn minutes(demand: &[f64], start_secs: u64) -> Vec<DemandSample> {
    demand
        .chunks_exact(60)
        .enumerate()
        .map(|(minute, values)| DemandSample {
            at_ms: (start_secs as i64 + minute as i64 * 60) * 1_000,
            capacities: values.iter().sum::<f64>() / 60.0,
        })
        .collect()
}

/// Launches or victims that take the listed fleet to `desired`.
fn plan(world: &World, desired: u32, now: u64) -> (u32, Vec<String>) {
    let current = world.listed.len() as u32;
    if desired > current {
        (desired - current, Vec::new())
    } else {
        (0, world.victims((current - desired) as usize, now))
    }
}
