//! Benchmark of the pure side: the cost of one policy evaluation for fleets of 5, 1,000 and
//! 10,000 instances, and the simulator's replay speed (30 days at 1 s per policy). Prints one
//! `figure|value|unit|note` line per measurement for `cargo xtask bench` to collect.

use std::hint::black_box;
use std::time::{Duration, Instant};

use autoscaler_policy::config::ControllerConfig;
use autoscaler_policy::policy::{Observation, ObservedInstance, PolicyState, evaluate};
use autoscaler_policy::simulate::trace::{Shape, ShapeParams, Trace};
use autoscaler_policy::simulate::{Options, Policy, simulate};
use autoscaler_policy::{Health, InstanceState};

fn fleet(size: usize) -> Observation {
    Observation {
        instances: (0..size)
            .map(|i| ObservedInstance {
                instance_id: format!("i-{i:017x}"),
                cloud_state: InstanceState::Running,
                age: Duration::from_secs(3_600 + i as u64),
                health: Some(Health::Healthy),
                load: Some(40.0 + (i % 20) as f64),
                has_reported: true,
                state_reason: None,
                target_unhealthy: None,
                listed: true,
                version: None,
                protected: false,
                serving: None,
                lifecycle: autoscaler_policy::Lifecycle::InService,
            })
            .collect(),
        controller_uptime: Duration::from_secs(86_400),
        ..Default::default()
    }
}

/// Median of `rounds` timings of `iterations` calls, per call.
fn per_call(rounds: usize, iterations: u32, mut call: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                call();
            }
            started.elapsed() / iterations
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    for size in [5usize, 1_000, 10_000] {
        let observation = fleet(size);
        let config = ControllerConfig {
            max_instances: size as u32 + 10,
            instance_limit: size as u32 + 10,
            ..ControllerConfig::default()
        };
        let mut state = PolicyState::default();
        let mut now = Duration::from_secs(86_400);
        let iterations = (200_000 / size as u32).max(20);
        let cost = per_call(9, iterations, || {
            now += Duration::from_secs(1);
            black_box(evaluate(black_box(&observation), &config, &mut state, now));
        });
        println!(
            "evaluate-{size}|{:.2}|us|one policy evaluation, fleet of {size}",
            cost.as_secs_f64() * 1e6
        );
    }
    let trace = Trace::shape(
        Shape::Diurnal,
        &ShapeParams {
            duration_secs: 30 * 86_400,
            ..ShapeParams::default()
        },
    )
    .expect("a valid shape");
    let options = Options {
        keep_series: false,
        ..Options::default()
    };
    for policy in [
        Policy::ours_target(2, 5),
        Policy::ours_step(2, 5),
        Policy::aws_step(2, 5),
        Policy::hpa(50.0, 2, 5),
    ] {
        let mut samples: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                black_box(simulate(&trace, &policy, &options));
                started.elapsed()
            })
            .collect();
        samples.sort();
        println!(
            "replay-30d-{}|{:.0}|ms|30 days at 1 s (2,592,000 steps), median of 5",
            policy.name(),
            samples[2].as_secs_f64() * 1e3
        );
    }
}
