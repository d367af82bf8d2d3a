//! Failed launches back off, as EC2 Auto Scaling's do: an instance that exits or is replaced
//! before it ever reported, or a launch the provider refused, pauses launches for a time that
//! doubles up to a cap; then one instance is tried at a time until one reports.

use std::time::Duration;

use autoscaler_policy::config::ControllerConfig;
use autoscaler_policy::policy::{
    Decision, Observation, ObservedInstance, PolicyState, Rule, evaluate,
};
use autoscaler_policy::{Health, InstanceState};

const SECOND: Duration = Duration::from_secs(1);

fn launched(id: &str, age: Duration) -> ObservedInstance {
    ObservedInstance {
        instance_id: id.to_string(),
        cloud_state: InstanceState::Running,
        age,
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
    }
}

fn died(id: &str, age: Duration) -> ObservedInstance {
    ObservedInstance {
        cloud_state: InstanceState::Stopped,
        state_reason: Some("exit status: 64: autoscaler-agent: cannot read tls/agent.pem".into()),
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
        ..launched(id, age)
    }
}

fn serving(id: &str, age: Duration) -> ObservedInstance {
    ObservedInstance {
        health: Some(Health::Healthy),
        load: Some(40.0),
        has_reported: true,
        ..launched(id, age)
    }
}

fn at(instances: Vec<ObservedInstance>, now: Duration) -> Observation {
    Observation {
        instances,
        controller_uptime: now,
        ..Default::default()
    }
}

fn backoff_rule(decision: &Decision) -> Option<&str> {
    decision
        .rules
        .iter()
        .find(|r| r.rule == Rule::LaunchBackoff)
        .map(|r| r.detail.as_str())
}

#[test]
fn agents_that_die_at_start_are_launched_again_after_a_doubling_pause() {
    let config = ControllerConfig::default();
    let mut state = PolicyState::default();
    let mut now = 10 * SECOND;
    // An empty group fills up to its minimum of 2.
    let first = evaluate(&at(vec![], now), &config, &mut state, now);
    assert_eq!(first.launch, 2);
    // Both die at start, every time: each launch waits twice as long as the last (10, 20,
    // 40, ... up to 300 s), and only one instance is tried at a time.
    let mut pauses = Vec::new();
    let mut last_launch = now;
    let mut alive: Vec<String> = vec!["a".into(), "b".into()];
    let mut next_id = 0;
    for _ in 0..2_000 {
        now += SECOND;
        let instances = alive.iter().map(|id| died(id, SECOND)).collect();
        let decision = evaluate(&at(instances, now), &config, &mut state, now);
        assert!(
            decision.replace.iter().all(|r| r.failed_launch),
            "{}",
            decision.summary()
        );
        alive.clear();
        if decision.launch > 0 {
            assert_eq!(decision.launch, 1, "one at a time: {}", decision.summary());
            pauses.push((now - last_launch).as_secs());
            last_launch = now;
            next_id += 1;
            alive.push(format!("probe-{next_id}"));
        } else if let Some(detail) = backoff_rule(&decision) {
            assert!(
                detail.contains("launches failing") && detail.contains("exit status: 64"),
                "{detail}"
            );
        }
        let backoff = decision.launch_backoff.expect("launches are failing");
        assert!(backoff.last_reason.contains("cannot read tls/agent.pem"));
    }
    // Each pause is the backoff plus the second the probe took to die.
    assert_eq!(&pauses[..7], [11, 21, 41, 81, 161, 301, 301], "{pauses:?}");
}

#[test]
fn a_probe_that_reports_ends_the_backoff() {
    let config = ControllerConfig::default();
    let mut state = PolicyState::default();
    let now = 100 * SECOND;
    state.launch_failed(&config, now, "InsufficientInstanceCapacity");
    let held = evaluate(&at(vec![], now), &config, &mut state, now);
    assert_eq!(held.launch, 0, "{}", held.summary());
    assert!(backoff_rule(&held).unwrap().contains("next attempt in 10s"));
    let probing_at = now + 10 * SECOND;
    let probe = evaluate(&at(vec![], probing_at), &config, &mut state, probing_at);
    assert_eq!(probe.launch, 1, "{}", probe.summary());
    // While the probe boots, nothing more is launched.
    let booting_at = probing_at + 30 * SECOND;
    let booting = evaluate(
        &at(vec![launched("p", 30 * SECOND)], booting_at),
        &config,
        &mut state,
        booting_at,
    );
    assert_eq!(booting.launch, 0, "{}", booting.summary());
    assert!(
        backoff_rule(&booting)
            .unwrap()
            .contains("waiting for p to report")
    );
    // It reports: the backoff is over and the rest is launched at once.
    let proven_at = booting_at + 30 * SECOND;
    let proven = evaluate(
        &at(vec![serving("p", 60 * SECOND)], proven_at),
        &config,
        &mut state,
        proven_at,
    );
    assert_eq!(proven.launch, 1, "{}", proven.summary());
    assert_eq!(proven.launch_backoff, None);
    assert_eq!(backoff_rule(&proven), None);
}

#[test]
fn a_lost_adopted_instance_is_not_a_failed_launch() {
    // Launched before this controller started, never heard of again: replaced at once.
    let config = ControllerConfig::default();
    let mut state = PolicyState::default();
    let now = 400 * SECOND;
    let observation = at(
        vec![
            serving("a", 3_600 * SECOND),
            launched("old", 3_600 * SECOND),
        ],
        now,
    );
    let decision = evaluate(&observation, &config, &mut state, now);
    assert_eq!(decision.replace.len(), 1, "{}", decision.summary());
    assert!(!decision.replace[0].failed_launch);
    assert_eq!(decision.launch, 1, "{}", decision.summary());
    assert_eq!(decision.launch_backoff, None);
}

#[test]
fn a_scale_out_held_by_the_backoff_starts_no_cooldown() {
    // Otherwise the cooldown and the backoff could keep missing each other.
    let config = ControllerConfig {
        launch_backoff_secs: 5,
        ..ControllerConfig::default()
    };
    let mut state = PolicyState::default();
    let now = 1_000 * SECOND;
    let loaded = || {
        vec![
            ObservedInstance {
                load: Some(90.0),
                ..serving("a", 3_600 * SECOND)
            },
            ObservedInstance {
                load: Some(90.0),
                ..serving("b", 3_600 * SECOND)
            },
        ]
    };
    state.launch_failed(&config, now, "RequestLimitExceeded");
    for second in 0..5 {
        let t = now + second * SECOND;
        let held = evaluate(&at(loaded(), t), &config, &mut state, t);
        assert_eq!(held.launch, 0, "{}", held.summary());
        assert!(
            !held.rules.iter().any(|r| r.rule == Rule::Cooldown),
            "{}",
            held.summary()
        );
    }
    let t = now + 5 * SECOND;
    let probe = evaluate(&at(loaded(), t), &config, &mut state, t);
    assert_eq!(probe.launch, 1, "{}", probe.summary());
}
