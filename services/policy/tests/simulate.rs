//! The simulator's scores against hand-computed small traces, replays checked second by second,
//! the reference policies' documented behaviour, and the chart.

use std::time::Duration;

use autoscaler_policy::policy::{Observation, ObservedInstance};
use autoscaler_policy::simulate::reference::{AwsStep, Hpa, Reference};
use autoscaler_policy::simulate::score::{Scorer, required};
use autoscaler_policy::simulate::trace::Trace;
use autoscaler_policy::simulate::{CloudModel, Options, Policy, chart, simulate};
use autoscaler_policy::{Health, InstanceState};

fn close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{actual} is not {expected}"
    );
}

#[test]
fn elasticity_metrics_match_a_hand_computed_trace() {
    // second: demand, supply, billed -> needed, under/over, load
    // 0: 1.0, 2, 2 -> 1, over 1, 50 %
    // 1: 1.0, 2, 3 -> 1, over 1, 50 %
    // 2: 2.5, 2, 3 -> 3, under 1, 125 % (SLO)
    // 3: 2.5, 3, 3 -> 3, even, 83 % (SLO)
    let mut scorer = Scorer::new(80.0, 300);
    for (demand, supply, billed) in [(1.0, 2, 2), (1.0, 2, 3), (2.5, 2, 3), (2.5, 3, 3)] {
        scorer.second(demand, supply, billed);
    }
    let scores = scorer.finish();
    assert_eq!(scores.duration_secs, 4);
    close(scores.accuracy_u, 1.0 / 4.0);
    close(scores.accuracy_o, 2.0 / 4.0);
    close(scores.timeshare_u, 25.0);
    close(scores.timeshare_o, 50.0);
    // supply events: 1 (2 -> 3); demand events: 2 (1 -> 3 instances), in 4 s
    close(scores.jitter, (1.0 - 2.0) / (4.0 / 60.0));
    close(scores.instance_hours, 11.0 / 3_600.0);
    assert_eq!(scores.slo_violation_secs, 2);
    close(scores.slo_violation_share, 50.0);
}

#[test]
fn jitter_counts_supply_moves_beyond_the_demand_s_per_minute() {
    let mut scorer = Scorer::new(80.0, 300);
    for supply in [2, 1, 2, 1] {
        scorer.second(1.0, supply, supply);
    }
    // 3 supply changes, no demand change, in 4 s = 1/15 minute
    close(scorer.finish().jitter, 45.0);

    let mut lagging = Scorer::new(80.0, 300);
    for demand in [1.0, 2.0, 3.0, 2.0, 1.0, 1.0] {
        lagging.second(demand, 2, 2);
    }
    // 4 demand changes, no supply change, in 6 s = 1/10 minute
    close(lagging.finish().jitter, -40.0);
}

#[test]
fn jitter_counts_every_instance_added_or_removed_as_bungee_does() {
    // BUNGEE's AbstractScaleEvents adds each step's amount: demand 1 -> 4 is 3 events, supply
    // 2 -> 4 -> 5 is 2 + 1 = 3 events; over 20 minutes the jitter is (3 - 3) / 20 = 0.
    let mut scorer = Scorer::new(80.0, 300);
    for second in 0..1200 {
        let demand = if second < 600 { 0.8 } else { 3.8 };
        let supply = match second {
            0..=659 => 2,
            660..=719 => 4,
            _ => 5,
        };
        scorer.second(demand, supply, supply);
    }
    close(scorer.finish().jitter, 0.0);

    // A single step of +3 against a demand that does not move: 3 events in 2 minutes.
    let mut jumpy = Scorer::new(80.0, 300);
    for second in 0..120 {
        jumpy.second(1.0, if second < 60 { 2 } else { 5 }, 5);
    }
    close(jumpy.finish().jitter, 3.0 / 2.0);
}

#[test]
fn a_scale_in_soon_after_a_scale_out_is_a_reversal() {
    let mut scorer = Scorer::new(80.0, 300);
    scorer.scale_out(10);
    scorer.scale_in(200);
    scorer.scale_in(311);
    scorer.scale_out(400);
    scorer.scale_in(700);
    scorer.scale_in(701);
    let scores = scorer.finish();
    assert_eq!((scores.scale_outs, scores.scale_ins), (2, 4));
    assert_eq!(
        scores.reversals, 2,
        "200 and 700 are within 300 s of a scale-out"
    );
}

#[test]
fn demand_in_whole_instances_rounds_up() {
    assert_eq!(required(0.0), 0);
    assert_eq!(required(1.0), 1);
    assert_eq!(required(1.000_001), 2);
    assert_eq!(required(2.5), 3);
}

fn flat_then(first: f64, until: usize, then: f64, length: usize) -> Trace {
    Trace {
        name: "test".to_string(),
        demand: (0..length)
            .map(|t| if t < until { first } else { then })
            .collect(),
    }
}

#[test]
fn a_replay_runs_the_controller_s_policy_second_by_second() {
    // Demand 3 for 200 s; target tracking 50 %, bounds [2, 5], boot 60 s, cooldown out 60 s.
    // t=1: 2 serving at 100 % -> ceil(200/50) = 4: launch 2, serving at t=61.
    // t=61: 4 serving at 75 % -> 6, bounded to 5: launch 1, serving at t=121.
    let trace = flat_then(3.0, 200, 3.0, 200);
    let run = simulate(&trace, &Policy::ours_target(2, 5), &Options::default());
    let mut expected = vec![2; 61];
    expected.extend([4; 60]);
    expected.extend([5; 79]);
    assert_eq!(run.supply, expected);
    let s = &run.scores;
    assert_eq!((s.scale_outs, s.scale_ins, s.reversals), (2, 0, 0));
    close(s.accuracy_u, 61.0 / 200.0);
    close(s.accuracy_o, (60.0 + 79.0 * 2.0) / 200.0);
    close(s.timeshare_u, 30.5);
    close(s.timeshare_o, 69.5);
    // supply events: 2 (2 -> 4) + 1 (4 -> 5); no demand event
    close(s.jitter, 3.0 / (200.0 / 60.0));
    // billed: 2 at t=0, 4 for t=1..60, 5 for t=61..199
    close(s.instance_hours, (2.0 + 4.0 * 60.0 + 5.0 * 139.0) / 3_600.0);
    assert_eq!(s.slo_violation_secs, 61);
}

#[test]
fn scale_in_waits_for_warm_up_bills_the_termination_delay_and_counts_a_reversal() {
    // Demand 3 until t=100, then 0.2. No cooldowns; boot 60 s; termination 30 s.
    // t=1 launch 2 (serving at 61); t=61 launch 1 (serving at 121); from t=100 the load is
    // low but the booting instance holds scale-in (warm-up); t=121: 5 serving at 4 % -> 1,
    // bounded to 2: 3 terminated, paid for until t=150.
    let trace = flat_then(3.0, 100, 0.2, 200);
    let mut policy = Policy::ours_target(2, 5);
    if let Policy::Project { config, .. } = &mut policy {
        config.scale_out_cooldown_secs = 0;
        config.scale_in_cooldown_secs = 0;
    }
    let run = simulate(&trace, &policy, &Options::default());
    let mut supply = vec![2; 61];
    supply.extend([4; 60]);
    supply.extend([2; 79]);
    assert_eq!(run.supply, supply);
    let mut billed = vec![2];
    billed.extend([4; 60]);
    billed.extend([5; 90]);
    billed.extend([2; 49]);
    assert_eq!(run.billed, billed);
    let s = &run.scores;
    assert_eq!((s.scale_outs, s.scale_ins, s.reversals), (2, 1, 1));
    close(s.instance_hours, 790.0 / 3_600.0);
}

#[test]
fn failed_launches_are_counted_and_the_fleet_stays() {
    let trace = flat_then(3.0, 120, 3.0, 120);
    let options = Options {
        cloud: CloudModel {
            launch_failure_rate: 1.0,
            ..CloudModel::default()
        },
        ..Options::default()
    };
    let run = simulate(&trace, &Policy::ours_target(2, 5), &options);
    assert!(run.supply.iter().all(|&s| s == 2));
    assert!(run.scores.launch_failures >= 2, "{:?}", run.scores);
}

fn observation(ready: &[f64], booting: usize) -> Observation {
    let mut instances: Vec<ObservedInstance> = ready
        .iter()
        .enumerate()
        .map(|(i, &load)| ObservedInstance {
            instance_id: format!("r{i}"),
            cloud_state: InstanceState::Running,
            age: Duration::from_secs(600),
            health: Some(Health::Healthy),
            load: Some(load),
            has_reported: true,
            state_reason: None,
            target_unhealthy: None,
            listed: true,
            version: None,
            protected: false,
            serving: None,
            lifecycle: autoscaler_policy::Lifecycle::InService,
        })
        .collect();
    instances.extend((0..booting).map(|i| ObservedInstance {
        instance_id: format!("b{i}"),
        cloud_state: InstanceState::Pending,
        age: Duration::from_secs(10),
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
    }));
    Observation {
        instances,
        controller_uptime: Duration::from_secs(3_600),
        ..Default::default()
    }
}

#[test]
fn hpa_follows_the_replica_calculator() {
    let mut hpa = Hpa::new(50.0, 2, 10);
    // 2 ready at 100 %: ratio 2 -> 4
    assert_eq!(hpa.desired(&observation(&[100.0, 100.0], 0), 0), 4);
    // within the 10 % tolerance: hold
    assert_eq!(hpa.desired(&observation(&[54.0; 4], 0), 15), 4);
    // 2 ready at 90 % and 2 booting (counted at 0 % on the way up): 0.9 reverses: hold
    assert_eq!(hpa.desired(&observation(&[90.0, 90.0], 2), 30), 4);
    // scale-up is limited to max(2x, +4) per period: 1 ready at 100 % with target 5 % asks 20
    let mut eager = Hpa::new(5.0, 1, 50);
    assert_eq!(eager.desired(&observation(&[100.0], 0), 0), 5);
}

#[test]
fn hpa_stabilises_scale_in_over_300_s() {
    let mut hpa = Hpa::new(50.0, 2, 10);
    assert_eq!(hpa.desired(&observation(&[100.0; 4], 0), 0), 8);
    // the load falls: the recommendation of 8 made within 300 s holds the fleet of 4
    assert_eq!(hpa.desired(&observation(&[10.0; 4], 0), 60), 4);
    assert_eq!(hpa.desired(&observation(&[10.0; 4], 0), 240), 4);
    // 301 s later it has left the window: scale in, to the minimum
    assert_eq!(hpa.desired(&observation(&[10.0; 4], 0), 301), 2);
}

#[test]
fn aws_step_uses_minute_averages_steps_and_a_300_s_cooldown() {
    let mut aws = AwsStep::new(2, 5);
    let hot = observation(&[80.0, 80.0], 0);
    for _ in 0..60 {
        aws.sample(&hot);
    }
    assert_eq!(aws.desired(&hot, 60), 3, "above 70 %: +1");
    for _ in 0..60 {
        aws.sample(&hot);
    }
    assert_eq!(aws.desired(&hot, 120), 2, "cooling down: no change");
    let very_hot = observation(&[95.0, 95.0], 0);
    for _ in 0..60 {
        aws.sample(&very_hot);
    }
    assert_eq!(
        aws.desired(&very_hot, 360),
        4,
        "at 85 % or more, after the cooldown: +2"
    );
    let cold = observation(&[10.0, 10.0, 10.0, 10.0], 0);
    let mut desired = Vec::new();
    for minute in 1..=5 {
        for _ in 0..60 {
            aws.sample(&cold);
        }
        desired.push(aws.desired(&cold, 660 + 60 * minute));
    }
    assert_eq!(
        desired,
        vec![4, 4, 3, 4, 4],
        "-1 after three low periods, then the cooldown"
    );
}

#[test]
fn the_chart_draws_every_policy_on_the_trace() {
    let mut trace = flat_then(1.0, 200, 3.0, 600);
    trace.name = "spike <test>".to_string();
    let runs: Vec<_> = [Policy::ours_target(2, 5), Policy::hpa(50.0, 2, 5)]
        .iter()
        .map(|p| simulate(&trace, p, &Options::default()))
        .collect();
    let svg = chart::svg(&trace, &runs);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("spike &lt;test&gt;"));
    for name in ["ours-target", "k8s-hpa"] {
        assert!(svg.contains(&format!(">{name}</text>")), "{name}");
    }
    // per panel: the demand area, the paid-for line and the supply line
    assert_eq!(svg.matches("<path").count(), 6);
}

fn slow_boot_day() -> (Trace, Options) {
    let trace = Trace::shape(
        autoscaler_policy::simulate::trace::Shape::Steady,
        &autoscaler_policy::simulate::trace::ShapeParams {
            duration_secs: 86_400,
            base: 0.95,
            peak: 4.9,
            noise: 0.0,
            seed: 1,
        },
    )
    .expect("a steady day");
    let options = Options {
        cloud: CloudModel {
            boot_delay_secs: 180,
            ..CloudModel::default()
        },
        keep_series: false,
        ..Options::default()
    };
    (trace, options)
}

#[test]
fn a_boot_slower_than_the_old_grace_is_served_by_the_default_one() {
    // Booting for 180 s: the old 120 s grace replaced every booting instance, forever (714
    // reversals a day, 100 % under-provisioned). The default grace (300 s) covers the boot.
    let (trace, options) = slow_boot_day();
    let run = simulate(&trace, &Policy::ours_target(2, 5), &options);
    assert!(run.warnings.is_empty(), "{:?}", run.warnings);
    let s = &run.scores;
    assert!(s.timeshare_u < 1.0, "{s:?}");
    assert_eq!(s.reversals, 0, "{s:?}");
}

#[test]
fn a_boot_slower_than_the_grace_is_warned_of_and_its_launches_back_off() {
    let (trace, options) = slow_boot_day();
    let mut policy = Policy::ours_target(2, 5);
    if let Policy::Project { config, .. } = &mut policy {
        config.registration_grace_secs = 120;
    }
    let run = simulate(&trace, &policy, &options);
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains("boot delay (180 s) exceeds registration_grace_secs (120 s)")),
        "{:?}",
        run.warnings
    );
    // Every launch fails (nothing registers before it is replaced): after the first, the
    // controller waits 10 s, 20 s, ... up to 300 s, and launches one instance at a time, each
    // living 120 s before it is replaced: at most a launch every 420 s once the cap is reached.
    let s = &run.scores;
    assert!(
        s.scale_outs <= 86_400 / 420 + 10,
        "{} launches in a day, {} before the backoff: {s:?}",
        s.scale_outs,
        715
    );
}

#[test]
fn a_listing_lag_neither_launches_twice_nor_scales_in_what_is_not_listed() {
    // As `scale_in_waits_for_warm_up...`, with the provider listing launches 90 s late: the
    // instance launched at t=61 is serving at t=121 but listed only at t=151, so the scale-in
    // at t=121 takes 3 of the 4 listed ones and keeps it. Nothing is launched twice meanwhile.
    let trace = flat_then(3.0, 100, 0.2, 200);
    let mut policy = Policy::ours_target(2, 5);
    if let Policy::Project { config, .. } = &mut policy {
        config.scale_out_cooldown_secs = 0;
        config.scale_in_cooldown_secs = 0;
    }
    let lagging = Options {
        cloud: CloudModel {
            listing_lag_secs: 90,
            ..CloudModel::default()
        },
        ..Options::default()
    };
    let run = simulate(&trace, &policy, &lagging);
    let mut supply = vec![2; 61];
    supply.extend([4; 60]);
    supply.extend([2; 79]);
    assert_eq!(run.supply, supply);
    let s = &run.scores;
    assert_eq!((s.scale_outs, s.scale_ins), (2, 1));
}

#[test]
fn draining_instances_count_against_the_instance_limit() {
    // Demand 4.5 (5 instances at 90 %), a dip to 0.2 that scales in to 2, and back to 4.5
    // while the removed ones still drain for 120 s: the group never runs more than the
    // account's limit of 5, draining included, and reaches 5 serving once the drains end.
    let demand: Vec<f64> = (0..900)
        .map(|t| if (300..330).contains(&t) { 0.2 } else { 4.5 })
        .collect();
    let trace = Trace {
        name: "dip".to_string(),
        demand,
    };
    let mut policy = Policy::ours_target(2, 5);
    if let Policy::Project { config, .. } = &mut policy {
        config.scale_out_cooldown_secs = 0;
        config.scale_in_cooldown_secs = 0;
        config.instance_limit = 5;
    }
    let options = Options {
        cloud: CloudModel {
            drain_secs: 120,
            termination_delay_secs: 0,
            ..CloudModel::default()
        },
        ..Options::default()
    };
    let run = simulate(&trace, &policy, &options);
    assert!(
        run.supply[..300].contains(&5) && run.supply[300..340].contains(&2),
        "it scales out, then in on the dip: {:?}",
        &run.supply[..400]
    );
    let most = run.billed.iter().max().copied().unwrap();
    assert_eq!(most, 5, "instances running, draining ones included");
    assert_eq!(run.supply.last(), Some(&5), "{:?}", &run.supply[300..]);
}

#[test]
fn the_oracle_pays_the_least_that_keeps_every_second_under_the_slo() {
    // Demand 1.0 then 2.0 capacities at an 80 % SLO: ceil(1 / 0.8) = 2, ceil(2 / 0.8) = 3.
    let trace = flat_then(1.0, 100, 2.0, 200);
    let oracle = autoscaler_policy::simulate::oracle(&trace, 1, 5, &Options::default());
    assert_eq!(oracle.supply[..100], [2; 100]);
    assert_eq!(oracle.supply[100..], [3; 100]);
    close(oracle.scores.instance_hours, (200.0 + 300.0) / 3_600.0);
    assert_eq!(oracle.scores.slo_violation_secs, 0);
    // Held to at most 2, it cannot keep the second half under the SLO either.
    let capped = autoscaler_policy::simulate::oracle(&trace, 1, 2, &Options::default());
    assert_eq!(capped.scores.slo_violation_secs, 100);
    // Every reactive policy pays at least as much for the same SLO.
    let ours = simulate(&trace, &Policy::ours_target(1, 5), &Options::default());
    assert!(ours.scores.instance_hours >= oracle.scores.instance_hours);
}
