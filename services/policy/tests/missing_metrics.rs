//! The policy decides only on what it sees: instances without a fresh metric are counted as the
//! Kubernetes HPA counts pods without metrics, and never make room for a scale-in.

use std::time::Duration;

use autoscaler_policy::config::{ControllerConfig, PolicyConfig};
use autoscaler_policy::kinds::{Step, StepRule, TargetTracking};
use autoscaler_policy::policy::{
    MissingReason, Observation, ObservedInstance, PolicyState, Rule, evaluate,
};
use autoscaler_policy::{Health, InstanceState};
use proptest::prelude::*;

const MINUTE: Duration = Duration::from_secs(60);

fn instance(
    id: &str,
    health: Option<Health>,
    load: Option<f64>,
    reported: bool,
) -> ObservedInstance {
    ObservedInstance {
        instance_id: id.to_string(),
        cloud_state: InstanceState::Running,
        // Past the warm-up (60 s), within the registration grace (300 s).
        age: 4 * MINUTE,
        health,
        load,
        has_reported: reported,
        state_reason: None,
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
    }
}

fn tracking() -> ControllerConfig {
    ControllerConfig {
        min_instances: 2,
        max_instances: 4,
        policy: PolicyConfig::TargetTracking(TargetTracking {
            target: 50.0,
            tolerance: 0.1,
        }),
        ..ControllerConfig::default()
    }
}

#[test]
fn a_restarted_controller_does_not_scale_in_adopted_instances_that_have_yet_to_report() {
    // The finding: 4 at 95 %, one reported again, three not yet: the old rule summed
    // the one load (95 / 50 -> 2) and scaled in two, the reporting one among them.
    let observation = Observation {
        instances: vec![
            instance("local-0001", Some(Health::Healthy), Some(95.0), true),
            instance("local-0002", None, None, false),
            instance("local-0003", None, None, false),
            instance("local-0004", Some(Health::Unknown), None, false),
        ],
        controller_uptime: Duration::from_secs(2),
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        Duration::from_secs(2),
    );
    assert!(decision.scale_in.is_empty(), "{}", decision.summary());
    assert_eq!(decision.launch, 0, "{}", decision.summary());
    assert_eq!(decision.observed.without_metrics, 3);
    let missing: Vec<(&str, MissingReason)> = decision
        .missing
        .iter()
        .map(|m| (m.instance_id.as_str(), m.reason))
        .collect();
    assert_eq!(
        missing,
        [
            ("local-0002", MissingReason::NotRegistered),
            ("local-0003", MissingReason::NotRegistered),
            ("local-0004", MissingReason::NotPolled),
        ]
    );
    // 95 % is above the target: the others count at 0 % on the way up.
    assert!(
        decision.missing.iter().all(|m| m.counted_as == Some(0.0)),
        "{:?}",
        decision.missing
    );
    assert!(
        decision
            .summary()
            .contains("local-0002 (not registered, counted at 0%)"),
        "{}",
        decision.summary()
    );
}

#[test]
fn a_frozen_agent_does_not_make_room_for_a_scale_in() {
    // 4 at 41.8 % (sized at 4), one misses a poll: 3 x 41.8 / 50 -> 3 by the old rule.
    let mut instances: Vec<ObservedInstance> = (1..=4)
        .map(|i| {
            instance(
                &format!("local-000{i}"),
                Some(Health::Healthy),
                Some(41.8),
                true,
            )
        })
        .collect();
    instances[3].health = Some(Health::Suspect);
    let observation = Observation {
        instances,
        controller_uptime: 60 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        60 * MINUTE,
    );
    assert!(decision.scale_in.is_empty(), "{}", decision.summary());
    assert_eq!(decision.desired, 4, "{}", decision.summary());
    // Below the target, the frozen one counts at the target: (3 x 41.8 + 50) / 50 -> 4.
    assert_eq!(decision.recommendation, 4, "{}", decision.summary());
    assert_eq!(decision.missing.len(), 1);
    assert_eq!(decision.missing[0].reason, MissingReason::Suspect);
    assert_eq!(decision.missing[0].counted_as, Some(50.0));
}

#[test]
fn counting_the_missing_ones_can_reverse_the_direction_and_then_nothing_changes() {
    // 2 at 20 % point to a scale-in; 2 missing counted at the target give (40 + 100) / 4 =
    // 35 %: still in. 1 at 45 % with 3 missing: (45 + 150) / 4 = 48.75 %, within tolerance.
    let observation = Observation {
        instances: vec![
            instance("a", Some(Health::Healthy), Some(45.0), true),
            instance("b", Some(Health::Suspect), Some(45.0), true),
            instance("c", Some(Health::Suspect), Some(45.0), true),
            instance("d", Some(Health::Healthy), None, true),
        ],
        controller_uptime: 60 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        60 * MINUTE,
    );
    assert_eq!(decision.desired, 4, "{}", decision.summary());
    assert!(
        decision
            .rules
            .iter()
            .any(|r| r.rule == Rule::MissingMetrics),
        "{}",
        decision.summary()
    );
    assert!(decision.scale_in.is_empty());
}

#[test]
fn on_the_way_up_missing_ones_count_at_zero() {
    // 2 at 90 % and one missing: 180 / 50 -> 4 (the missing one at 0 % adds nothing).
    let observation = Observation {
        instances: vec![
            instance("a", Some(Health::Healthy), Some(90.0), true),
            instance("b", Some(Health::Healthy), Some(90.0), true),
            instance("c", None, None, false),
        ],
        controller_uptime: 60 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        60 * MINUTE,
    );
    assert_eq!(decision.recommendation, 4, "{}", decision.summary());
    assert_eq!(decision.launch, 1, "{}", decision.summary());
    assert_eq!(decision.missing[0].counted_as, Some(0.0));
}

/// What one instance of a random observation is.
#[derive(Clone, Copy, Debug)]
enum Kind {
    InService(f64),
    NotRegistered,
    NotPolled,
    Suspect(f64),
    NoLoad,
    Warming,
    Unhealthy,
    Stopped,
}

impl Kind {
    fn lacks_a_fresh_metric(self) -> bool {
        matches!(
            self,
            Kind::NotRegistered | Kind::NotPolled | Kind::Suspect(_) | Kind::NoLoad | Kind::Warming
        )
    }

    fn missing(self) -> bool {
        self.lacks_a_fresh_metric() && !matches!(self, Kind::Warming)
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (0.0..=100.0f64).prop_map(Kind::InService),
        1 => Just(Kind::NotRegistered),
        1 => Just(Kind::NotPolled),
        1 => (0.0..=100.0f64).prop_map(Kind::Suspect),
        1 => Just(Kind::NoLoad),
        1 => Just(Kind::Warming),
        1 => Just(Kind::Unhealthy),
        1 => Just(Kind::Stopped),
    ]
}

fn observed(index: usize, kind: Kind) -> ObservedInstance {
    let mut seen = instance(&format!("i-{index:02}"), Some(Health::Healthy), None, true);
    match kind {
        Kind::InService(load) => seen.load = Some(load),
        Kind::NotRegistered => {
            seen.health = None;
            seen.has_reported = false;
        }
        Kind::NotPolled => {
            seen.health = Some(Health::Unknown);
            seen.has_reported = false;
        }
        Kind::Suspect(load) => {
            seen.health = Some(Health::Suspect);
            seen.load = Some(load);
        }
        Kind::NoLoad => {}
        Kind::Warming => {
            seen.health = None;
            seen.has_reported = false;
            seen.age = Duration::from_secs(5);
        }
        Kind::Unhealthy => {
            seen.health = Some(Health::Unhealthy);
            seen.load = Some(50.0);
        }
        Kind::Stopped => seen.cloud_state = InstanceState::Stopped,
    }
    seen
}

fn any_config() -> impl Strategy<Value = ControllerConfig> {
    (2u32..5, 0u32..4, any::<bool>(), 1.0..100.0f64, 0u64..3).prop_map(
        |(min, extra, tracking, level, cooldown)| ControllerConfig {
            min_instances: min,
            max_instances: (min + extra).min(5),
            scale_out_cooldown_secs: cooldown,
            scale_in_cooldown_secs: cooldown,
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
                        for_secs: 0,
                        step: 1,
                    },
                    scale_in: StepRule {
                        above: None,
                        below: Some(level / 2.0),
                        for_secs: 0,
                        step: 1,
                    },
                })
            },
            ..ControllerConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The invariant: no decision scales in an instance while any instance the provider lists,
    /// other than those being replaced, lacks a fresh metric (unless the fleet is above its
    /// maximum, where the bound trims it); and the decision names exactly the instances
    /// without a metric, with how each was counted.
    #[test]
    fn nothing_is_scaled_in_while_a_listed_instance_lacks_a_fresh_metric(
        config in any_config(),
        history in proptest::collection::vec(proptest::collection::vec(kind(), 0..7), 0..6),
        kinds in proptest::collection::vec(kind(), 1..8),
    ) {
        let mut state = PolicyState::default();
        let mut now = 60 * MINUTE;
        for earlier in &history {
            let observation = Observation {
                instances: earlier.iter().enumerate().map(|(i, k)| observed(i, *k)).collect(),
                controller_uptime: now,
                ..Default::default()
            };
            evaluate(&observation, &config, &mut state, now);
            now += Duration::from_secs(5);
        }
        let observation = Observation {
            instances: kinds.iter().enumerate().map(|(i, k)| observed(i, *k)).collect(),
            controller_uptime: now,
            ..Default::default()
        };
        let decision = evaluate(&observation, &config, &mut state, now);
        let remaining = decision.current - decision.replace.len() as u32;
        let above_max = remaining.saturating_sub(config.max_instances) as usize;
        if kinds.iter().any(|k| k.lacks_a_fresh_metric()) {
            prop_assert!(decision.scale_in.len() <= above_max,
                "{} scaled in from {:?}", decision.summary(), kinds);
        }
        let expected: Vec<String> = kinds.iter().enumerate()
            .filter(|(_, k)| k.missing())
            .map(|(i, _)| format!("i-{i:02}"))
            .collect();
        let named: Vec<String> = decision.missing.iter().map(|m| m.instance_id.clone()).collect();
        prop_assert_eq!(named, expected);
        let level = match &config.policy {
            PolicyConfig::TargetTracking(TargetTracking { target, .. }) => *target,
            PolicyConfig::Step(Step { scale_in, .. }) => scale_in.below.unwrap_or(0.0),
        };
        for metric in &decision.missing {
            prop_assert!(matches!(metric.counted_as, None | Some(0.0)) || metric.counted_as == Some(level),
                "{:?}", metric);
        }
        // A scale-in only ever takes in-service instances: never one without a metric.
        for id in &decision.scale_in {
            let index: usize = id[2..].parse().unwrap();
            prop_assert!(matches!(kinds[index], Kind::InService(_)) || above_max > 0,
                "{} scaled in {id} ({:?})", decision.summary(), kinds[index]);
        }
    }
}

#[test]
fn a_replaced_instance_keeps_its_place_in_the_fleet() {
    // The freeze case once the frozen agent is unhealthy: three at 40 % alone size the fleet at
    // 3, but a replacement keeps the desired size, as EC2 Auto Scaling keeps the desired
    // capacity through a replacement: it is one launch, not a scale-in in disguise.
    let mut instances: Vec<ObservedInstance> = ["local-0002", "local-0003", "local-0004"]
        .iter()
        .map(|id| instance(id, Some(Health::Healthy), Some(40.0), true))
        .collect();
    instances.insert(
        0,
        instance("local-0001", Some(Health::Unhealthy), Some(40.0), true),
    );
    let observation = Observation {
        instances,
        controller_uptime: 10 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        10 * MINUTE,
    );
    assert_eq!(decision.replace.len(), 1, "{}", decision.summary());
    assert_eq!(decision.replace[0].instance_id, "local-0001");
    assert_eq!(decision.desired, 4, "{}", decision.summary());
    assert_eq!(decision.launch, 1, "{}", decision.summary());
    assert!(decision.scale_in.is_empty(), "{}", decision.summary());
}

/// An instance its launch hook holds in Pending:Wait reports no load, as one booting does: it
/// is warming (EC2 leaves it out of the group's metric), not an instance whose metric is
/// missing, even past the warm-up, and it is not replaced while its hook runs.
#[test]
fn an_instance_in_pending_wait_is_warming_past_the_warm_up() {
    let held = ObservedInstance {
        lifecycle: autoscaler_policy::Lifecycle::PendingWait,
        // Past the registration grace too.
        age: 10 * MINUTE,
        ..instance("local-0003", Some(Health::Healthy), None, false)
    };
    let observation = Observation {
        instances: vec![
            instance("local-0001", Some(Health::Healthy), Some(20.0), true),
            instance("local-0002", Some(Health::Healthy), Some(20.0), true),
            held,
        ],
        controller_uptime: 60 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        60 * MINUTE,
    );
    assert_eq!(decision.observed.warming, 1, "{}", decision.summary());
    assert!(decision.missing.is_empty(), "{:?}", decision.missing);
    assert!(decision.replace.is_empty(), "{}", decision.summary());
    assert_eq!(decision.observed.in_service, 2);
}

/// An instance whose termination hook an earlier controller started (its wait is not in the
/// store; the agent reports Terminating:Wait) is leaving: the next controller replaces it, and
/// so tells its agent again, which answers how long the hook may still run.
#[test]
fn an_instance_a_previous_controller_left_in_terminating_wait_is_replaced() {
    let leaving = ObservedInstance {
        lifecycle: autoscaler_policy::Lifecycle::TerminatingWait,
        ..instance("local-0003", Some(Health::Healthy), None, true)
    };
    let observation = Observation {
        instances: vec![
            instance("local-0001", Some(Health::Healthy), Some(50.0), true),
            instance("local-0002", Some(Health::Healthy), Some(50.0), true),
            leaving,
        ],
        controller_uptime: 60 * MINUTE,
        ..Default::default()
    };
    let decision = evaluate(
        &observation,
        &tracking(),
        &mut PolicyState::default(),
        60 * MINUTE,
    );
    let replaced: Vec<(&str, &str)> = decision
        .replace
        .iter()
        .map(|r| (r.instance_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(replaced, [("local-0003", "leaving: Terminating:Wait")]);
    assert!(!decision.replace[0].failed_launch);
}
