//! Table-driven tests of the scaling policy (target tracking, step, cooldowns, warm-up, bounds,
//! health replacement, the load balancer's health checks, termination order) and a property test
//! of its bounds.

use std::time::Duration;

use autoscaler_policy::Health;
use autoscaler_policy::InstanceState;
use autoscaler_policy::config::{
    ControllerConfig, HealthCheckType, PolicyConfig, TerminationPolicy,
};
use autoscaler_policy::kinds::{Step, StepRule, TargetTracking};
use autoscaler_policy::policy::{
    Decision, Observation, ObservedInstance, PolicyState, Rule, evaluate,
};
use proptest::prelude::*;

const MINUTE: Duration = Duration::from_secs(60);

mod common;
use common::fleet;

fn serving(id: &str, load: f64) -> ObservedInstance {
    common::serving(id, common::AGE, load)
}

fn target_tracking(target: f64, tolerance: f64) -> ControllerConfig {
    ControllerConfig {
        policy: PolicyConfig::TargetTracking(TargetTracking { target, tolerance }),
        ..ControllerConfig::default()
    }
}

fn step(high: f64, low: f64, for_secs: u64) -> ControllerConfig {
    ControllerConfig {
        policy: PolicyConfig::Step(Step {
            scale_out: StepRule {
                above: Some(high),
                below: None,
                for_secs,
                step: 1,
            },
            scale_in: StepRule {
                above: None,
                below: Some(low),
                for_secs,
                step: 1,
            },
        }),
        ..ControllerConfig::default()
    }
}

fn once(observation: &Observation, config: &ControllerConfig) -> Decision {
    evaluate(
        observation,
        config,
        &mut PolicyState::default(),
        60 * MINUTE,
    )
}

fn rules(decision: &Decision) -> Vec<Rule> {
    decision.rules.iter().map(|r| r.rule).collect()
}

/// (loads, target, tolerance, recommendation, desired, rules that changed it)
type TrackingCase<'a> = (&'a [f64], f64, f64, u32, u32, &'a [Rule]);

#[test]
fn target_tracking_formula_and_tolerance() {
    let cases: &[TrackingCase] = &[
        (&[80.0, 80.0], 50.0, 0.1, 4, 4, &[]),
        (&[60.0, 60.0, 60.0], 50.0, 0.1, 4, 4, &[]),
        (&[54.0, 54.0], 50.0, 0.1, 3, 2, &[Rule::Tolerance]),
        (&[46.0, 46.0], 50.0, 0.1, 2, 2, &[]),
        (&[56.0, 56.0], 50.0, 0.1, 3, 3, &[]),
        (&[20.0, 20.0, 20.0], 50.0, 0.1, 2, 2, &[]),
        (&[20.0, 20.0, 20.0, 20.0], 50.0, 0.0, 2, 2, &[]),
        (&[100.0; 5], 50.0, 0.1, 10, 5, &[Rule::Bounds]),
        (&[0.0, 0.0], 50.0, 0.1, 0, 2, &[Rule::Bounds]),
        (&[70.0, 70.0, 70.0], 70.0, 0.05, 3, 3, &[]),
    ];
    for (loads, target, tolerance, recommendation, desired, expected_rules) in cases {
        let decision = once(&fleet(loads), &target_tracking(*target, *tolerance));
        assert_eq!(
            decision.recommendation,
            *recommendation,
            "{loads:?}: {}",
            decision.summary()
        );
        assert_eq!(
            decision.desired,
            *desired,
            "{loads:?}: {}",
            decision.summary()
        );
        assert_eq!(
            rules(&decision),
            *expected_rules,
            "{loads:?}: {}",
            decision.summary()
        );
        let current = loads.len() as u32;
        assert_eq!(decision.launch, desired.saturating_sub(current));
        assert_eq!(
            decision.scale_in.len() as u32,
            current.saturating_sub(*desired)
        );
    }
}

#[test]
fn step_rule_waits_for_a_sustained_breach() {
    let config = step(70.0, 30.0, 10);
    let mut state = PolicyState::default();
    let hot = fleet(&[90.0, 90.0]);
    // (seconds, desired, rules)
    let timeline: &[(u64, u32, &[Rule])] = &[
        (100, 2, &[Rule::Sustain]),
        (105, 2, &[Rule::Sustain]),
        (110, 3, &[]),
    ];
    for (at, desired, expected_rules) in timeline {
        let decision = evaluate(&hot, &config, &mut state, Duration::from_secs(*at));
        assert_eq!(decision.desired, *desired, "t={at}: {}", decision.summary());
        assert_eq!(rules(&decision), *expected_rules, "t={at}");
    }
    // A dip below the threshold restarts the wait.
    let mut state = PolicyState::default();
    evaluate(&hot, &config, &mut state, Duration::from_secs(0));
    evaluate(
        &fleet(&[50.0, 50.0]),
        &config,
        &mut state,
        Duration::from_secs(5),
    );
    let decision = evaluate(&hot, &config, &mut state, Duration::from_secs(12));
    assert_eq!(decision.desired, 2, "{}", decision.summary());

    let cold = fleet(&[10.0, 10.0, 10.0]);
    let mut state = PolicyState::default();
    evaluate(&cold, &config, &mut state, Duration::from_secs(0));
    let decision = evaluate(&cold, &config, &mut state, Duration::from_secs(10));
    assert_eq!(decision.desired, 2);
    assert_eq!(decision.scale_in.len(), 1);
}

/// Runs the policy against a cloud that does at once whatever it is told, returning the size
/// after each evaluation.
fn run_ideal(
    config: &ControllerConfig,
    loads: impl Fn(u64, u32) -> f64,
    seconds: u64,
) -> Vec<(u64, u32)> {
    let mut state = PolicyState::default();
    let mut size = config.min_instances;
    let mut sizes = Vec::new();
    for t in 0..seconds {
        let load = loads(t, size);
        let observation = fleet(&vec![load; size as usize]);
        let decision = evaluate(&observation, config, &mut state, Duration::from_secs(t));
        size = decision.desired;
        sizes.push((t, size));
    }
    sizes
}

#[test]
fn oscillating_load_does_not_flap_inside_a_cooldown() {
    for config in [target_tracking(50.0, 0.1), step(70.0, 30.0, 0)] {
        let config = ControllerConfig {
            scale_out_cooldown_secs: 60,
            scale_in_cooldown_secs: 120,
            ..config
        };
        // The load swings between 95 % and 5 % every 5 seconds.
        let sizes = run_ideal(
            &config,
            |t, _| if (t / 5) % 2 == 0 { 95.0 } else { 5.0 },
            1_800,
        );
        let mut changes: Vec<(u64, i64)> = Vec::new();
        for pair in sizes.windows(2) {
            let delta = i64::from(pair[1].1) - i64::from(pair[0].1);
            if delta != 0 {
                changes.push((pair[1].0, delta));
            }
        }
        assert!(
            !changes.is_empty(),
            "the policy never acted: {:?}",
            config.policy
        );
        for pair in changes.windows(2) {
            let ((t0, d0), (t1, d1)) = (pair[0], pair[1]);
            let gap = t1 - t0;
            if d1 > 0 {
                assert!(
                    gap >= 60 || d0 < 0,
                    "scale-out {gap}s after a scale-out: {changes:?}"
                );
            } else {
                assert!(gap >= 120, "scale-in {gap}s after a scaling: {changes:?}");
            }
        }
        assert!(changes.len() <= 1_800 / 60 + 1, "{} changes", changes.len());
    }
}

#[test]
fn warming_instances_are_excluded_from_averages_and_never_scaled_in() {
    let config = target_tracking(50.0, 0.1);
    let mut observation = fleet(&[10.0, 10.0, 10.0]);
    observation.instances.push(ObservedInstance {
        instance_id: "i-new".into(),
        age: Duration::from_secs(5),
        load: Some(100.0),
        health: Some(Health::Suspect),
        has_reported: false,
        state_reason: None,
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
        ..serving("i-new", 100.0)
    });
    let decision = once(&observation, &config);
    assert_eq!(decision.observed.warming, 1);
    assert_eq!(decision.observed.average_load, Some(10.0));
    assert_eq!(decision.recommendation, 1);
    assert_eq!(decision.desired, 4, "{}", decision.summary());
    assert!(rules(&decision).contains(&Rule::WarmUp));
    assert!(decision.scale_in.is_empty());

    // Once warm (first healthy metrics), it counts, and scale-in may go ahead without it.
    observation.instances[3].has_reported = true;
    observation.instances[3].health = Some(Health::Healthy);
    observation.instances[3].load = Some(10.0);
    let decision = once(&observation, &config);
    assert_eq!(decision.desired, 2, "{}", decision.summary());
    assert_eq!(decision.scale_in.len(), 2);

    // A warm-up ends by time too: an instance that never reported is past it after warmup_secs.
    let mut late = fleet(&[10.0, 10.0, 10.0]);
    late.instances.push(ObservedInstance {
        age: Duration::from_secs(config.warmup_secs + 1),
        health: Some(Health::Suspect),
        load: None,
        has_reported: false,
        state_reason: None,
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
        ..serving("i-late", 0.0)
    });
    let decision = once(&late, &config);
    assert_eq!(decision.observed.warming, 0);
    assert_eq!(decision.observed.without_metrics, 1);
}

#[test]
fn bounds_are_respected() {
    let config = ControllerConfig {
        min_instances: 2,
        max_instances: 4,
        ..target_tracking(50.0, 0.1)
    };
    // (loads, desired)
    let cases: &[(&[f64], u32)] = &[
        (&[], 2),
        (&[90.0], 2),
        (&[100.0; 3], 4),
        (&[50.0; 6], 4),
        (&[0.0; 3], 2),
    ];
    for (loads, desired) in cases {
        let decision = once(&fleet(loads), &config);
        assert_eq!(
            decision.desired,
            *desired,
            "{loads:?}: {}",
            decision.summary()
        );
    }
}

#[test]
fn unhealthy_stopped_and_unregistered_instances_are_replaced_despite_cooldowns() {
    let config = target_tracking(50.0, 0.1);
    let mut state = PolicyState::default();
    // A scale-out just happened: a cooldown is running.
    let now = Duration::from_secs(1_000);
    evaluate(&fleet(&[90.0, 90.0]), &config, &mut state, now);

    let mut observation = fleet(&[50.0, 50.0, 50.0]);
    observation.instances[0].health = Some(Health::Unhealthy);
    observation.instances[1].cloud_state = InstanceState::Stopped;
    observation.instances.push(ObservedInstance {
        health: None,
        load: None,
        has_reported: false,
        state_reason: None,
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
        // Launched before this controller started (adopted), and never heard of since: lost,
        // not a failed launch, so its replacement does not wait for a backoff.
        age: 2 * 60 * MINUTE,
        ..serving("i-silent", 0.0)
    });
    let decision = evaluate(
        &observation,
        &config,
        &mut state,
        now + Duration::from_secs(1),
    );
    let replaced: Vec<&str> = decision
        .replace
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(replaced, ["i-0", "i-1", "i-silent"]);
    assert_eq!(decision.desired, 4);
    assert_eq!(decision.launch, 3, "{}", decision.summary());
    assert!(rules(&decision).contains(&Rule::Health));

    // Just after a controller restart the grace runs from the restart, not from the launch.
    let mut restarted = fleet(&[50.0, 50.0]);
    restarted.controller_uptime = Duration::from_secs(5);
    restarted.instances.push(ObservedInstance {
        health: None,
        load: None,
        age: 10 * MINUTE,
        ..serving("i-old", 0.0)
    });
    let decision = once(&restarted, &config);
    assert!(decision.replace.is_empty(), "{}", decision.summary());
}

#[test]
fn with_the_load_balancer_health_check_type_a_target_it_finds_unhealthy_is_replaced_past_the_grace()
{
    let balancer = ControllerConfig {
        health_check_type: HealthCheckType::LoadBalancer,
        ..target_tracking(50.0, 0.1)
    };
    let mut observation = fleet(&[50.0, 50.0, 50.0]);
    observation.instances[1].target_unhealthy = Some("L7STS: HTTP status 503".to_string());
    // Young: within the grace (registration_grace_secs, 300 s) since its launch.
    observation.instances[2].target_unhealthy = Some("L4CON: Connection refused".to_string());
    observation.instances[2].age = Duration::from_secs(200);
    let decision = once(&observation, &balancer);
    let replaced: Vec<(&str, &str)> = decision
        .replace
        .iter()
        .map(|r| (r.instance_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        replaced,
        [(
            "i-1",
            "unhealthy per the load balancer: L7STS: HTTP status 503"
        )]
    );
    assert!(rules(&decision).contains(&Rule::Health));

    // With the monitor's health checks alone (the default), the balancer's view replaces none.
    let decision = once(&observation, &target_tracking(50.0, 0.1));
    assert!(decision.replace.is_empty(), "{}", decision.summary());
}

#[test]
fn termination_policy_chooses_the_victim() {
    let mut observation = fleet(&[10.0, 5.0, 15.0]);
    observation.instances[0].age = 30 * MINUTE;
    observation.instances[1].age = 20 * MINUTE;
    observation.instances[2].age = 10 * MINUTE;
    for (policy, victim) in [
        (TerminationPolicy::Oldest, "i-0"),
        (TerminationPolicy::Newest, "i-2"),
        (TerminationPolicy::LeastLoaded, "i-1"),
    ] {
        let config = ControllerConfig {
            termination_policy: policy,
            ..target_tracking(50.0, 0.1)
        };
        let decision = once(&observation, &config);
        assert_eq!(
            decision.scale_in,
            [victim],
            "{policy:?}: {}",
            decision.summary()
        );
    }
}

#[test]
fn missing_metrics_hold_the_size() {
    let mut observation = fleet(&[50.0, 50.0, 50.0]);
    for instance in &mut observation.instances {
        instance.health = Some(Health::Suspect);
    }
    let decision = once(&observation, &target_tracking(20.0, 0.1));
    assert_eq!(decision.desired, 3);
    assert!(rules(&decision).contains(&Rule::MissingMetrics));
    assert!(decision.summary().contains("missing-metrics"));
}

#[derive(Clone, Debug)]
struct Tick {
    loads: Vec<f64>,
    unhealthy: Vec<bool>,
    advance_secs: u64,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        proptest::collection::vec(0.0..=100.0f64, 0..8),
        proptest::collection::vec(any::<bool>(), 8),
        0u64..120,
    )
        .prop_map(|(loads, unhealthy, advance_secs)| Tick {
            loads,
            unhealthy,
            advance_secs,
        })
}

fn any_config() -> impl Strategy<Value = ControllerConfig> {
    (
        2u32..5,
        0u32..4,
        any::<bool>(),
        1.0..100.0f64,
        0u64..300,
        0u64..300,
    )
        .prop_map(
            |(min, extra, tracking, level, out_cd, in_cd)| ControllerConfig {
                min_instances: min,
                max_instances: (min + extra).min(5),
                scale_out_cooldown_secs: out_cd,
                scale_in_cooldown_secs: in_cd,
                policy: if tracking {
                    PolicyConfig::TargetTracking(TargetTracking {
                        target: level,
                        tolerance: 0.1,
                    })
                } else {
                    PolicyConfig::Step(Step {
                        scale_out: StepRule {
                            above: Some(level.max(1.0)),
                            below: None,
                            for_secs: 5,
                            step: 2,
                        },
                        scale_in: StepRule {
                            above: None,
                            below: Some(level / 2.0),
                            for_secs: 5,
                            step: 1,
                        },
                    })
                },
                ..ControllerConfig::default()
            },
        )
}

proptest! {
    #[test]
    fn desired_size_stays_within_bounds(config in any_config(), ticks in proptest::collection::vec(tick(), 1..60)) {
        let mut state = PolicyState::default();
        let mut now = Duration::ZERO;
        for tick in ticks {
            now += Duration::from_secs(tick.advance_secs);
            let mut observation = fleet(&tick.loads);
            for (instance, unhealthy) in observation.instances.iter_mut().zip(&tick.unhealthy) {
                if *unhealthy {
                    instance.health = Some(Health::Unhealthy);
                }
            }
            let decision = evaluate(&observation, &config, &mut state, now);
            prop_assert!(decision.desired >= config.min_instances && decision.desired <= config.max_instances,
                "{}", decision.summary());
            let remaining = decision.current - decision.replace.len() as u32;
            let after = remaining + decision.launch - decision.scale_in.len() as u32;
            // Launches never carry the fleet past the desired size, hence never past the maximum.
            prop_assert!(after >= decision.desired && after <= decision.desired.max(remaining),
                "{} leaves {after}", decision.summary());
            prop_assert!(decision.launch == 0 || after == decision.desired);
            if decision.desired <= remaining {
                prop_assert_eq!(decision.launch, 0);
                prop_assert_eq!(after, decision.desired);
            }
        }
    }
}

#[test]
fn the_memory_carries_a_cooldown_over_to_another_controller() {
    use autoscaler_policy::policy::PolicyMemory;
    let config = ControllerConfig {
        scale_out_cooldown_secs: 120,
        ..target_tracking(50.0, 0.1)
    };
    // The controllers' evaluation clocks read wall-clock time (since the Unix epoch).
    let wall_ms: i64 = 1_800_000_000_000;
    let at = |ms: i64| Duration::from_millis(ms as u64);
    // Controller A scales out at 90 %.
    let mut state = PolicyState::default();
    let decision = evaluate(&fleet(&[90.0, 90.0]), &config, &mut state, at(wall_ms));
    assert!(decision.launch > 0, "{decision:?}");
    let memory = state.remember(at(wall_ms), wall_ms);
    assert_eq!(memory.last_scale_out_ms, Some(wall_ms));
    // Its memory survives a round trip through the store's JSON.
    let text = serde_json::to_string(&memory).unwrap();
    let memory: PolicyMemory = serde_json::from_str(&text).unwrap();

    // Controller B takes over 30 s later: the cooldown still holds, 90 s of it...
    let b_now = wall_ms + 30_000;
    let mut taken = PolicyState::recall(&memory, at(b_now), b_now);
    let held = evaluate(&fleet(&[90.0, 90.0, 90.0]), &config, &mut taken, at(b_now));
    assert_eq!(held.launch, 0, "{held:?}");
    assert!(
        held.rules
            .iter()
            .any(|r| r.rule == Rule::Cooldown && r.detail.contains("90s left")),
        "{held:?}"
    );
    // ...and ends 120 s after A's scale-out.
    let acted = evaluate(
        &fleet(&[90.0, 90.0, 90.0]),
        &config,
        &mut taken,
        at(wall_ms + 121_000),
    );
    assert!(acted.launch > 0, "{acted:?}");

    // A memory from the future or the far past (clocks apart) reads without panicking.
    let odd = PolicyMemory {
        last_scale_out_ms: Some(i64::MAX),
        last_scale_in_ms: Some(i64::MIN),
        launch_failures: 3,
        next_launch_ms: Some(i64::MIN),
        ..PolicyMemory::default()
    };
    let mut odd = PolicyState::recall(&odd, Duration::ZERO, 0);
    evaluate(&fleet(&[50.0, 50.0]), &config, &mut odd, Duration::ZERO);
}
