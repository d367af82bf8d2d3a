//! The simulator planning ahead: the weekly shapes, a warm-up whose demand is the forecasters'
//! history and is not scored, the EC2 target tracking reference (3 breaching minutes out, 15 in,
//! warming instances left out of the metric), the EC2 predictive scaling reference (an hourly
//! capacity set 300 s before its hour), and our forecaster launching before the weekday ramp
//! that a boot-long lag cannot follow.

use std::time::Duration;

use autoscaler_policy::policy::{Observation, ObservedInstance};
use autoscaler_policy::simulate::aws_predictive::AwsPredictive;
use autoscaler_policy::simulate::reference::{AwsTarget, Reference};
use autoscaler_policy::simulate::trace::{Shape, ShapeParams, Trace};
use autoscaler_policy::simulate::{CloudModel, Options, Policy, forecast_error, simulate};

const DAY: usize = 86_400;
const HOUR: usize = 3_600;

mod common;

/// `loads` in service an hour or more, and `warming` instances serving at 10 % inside their
/// 300 s warm-up, seen by a controller up for `uptime` seconds.
fn fleet(loads: &[f64], warming: usize, uptime: u64) -> Observation {
    let uptime = Duration::from_secs(uptime);
    let mut instances: Vec<ObservedInstance> = loads
        .iter()
        .enumerate()
        .map(|(i, &load)| common::serving(&format!("r{i}"), uptime, load))
        .collect();
    instances.extend(
        (0..warming).map(|i| common::serving(&format!("w{i}"), Duration::from_secs(120), 10.0)),
    );
    Observation {
        instances,
        controller_uptime: uptime,
        ..Observation::default()
    }
}

fn minute(model: &mut impl FnMut(), times: usize) {
    for _ in 0..times {
        model();
    }
}

#[test]
fn aws_target_scales_out_after_three_breaching_minutes_and_in_after_fifteen() {
    let mut aws = AwsTarget::new(50.0, 2, 10);
    let hot = fleet(&[90.0, 90.0], 0, 3_600);
    let mut desired = Vec::new();
    for m in 1..=3 {
        minute(&mut || aws.sample(&hot), 60);
        desired.push(aws.desired(&hot, 60 * m));
    }
    // ceil(2 x 90 / 50) = 4, after the third breaching minute.
    assert_eq!(desired, [2, 2, 4]);

    // A warming instance (at 10 %) is left out of the average, and holds scale-in.
    let warming = fleet(&[20.0; 4], 1, 3_600);
    let mut desired = Vec::new();
    for m in 1..=16 {
        minute(&mut || aws.sample(&warming), 60);
        desired.push(aws.desired(&warming, 240 + 60 * m));
    }
    assert!(desired.iter().all(|&d| d == 5), "{desired:?}");
    let cold = fleet(&[20.0; 4], 0, 3_600);
    let mut desired = Vec::new();
    for m in 1..=15 {
        minute(&mut || aws.sample(&cold), 60);
        desired.push(aws.desired(&cold, 1_300 + 60 * m));
    }
    // The low streak carried on from the warming minutes: ceil(4 x 20 / 50) = 2 at once.
    assert_eq!(desired[0], 2, "{desired:?}");
}

#[test]
fn aws_predictive_sets_each_hours_capacity_300_s_before_it() {
    let mut aws = AwsPredictive::new(50.0, 2, 20);
    // Two days where 09:00-10:00 needs 4 capacities and the rest 1.
    let demand: Vec<f64> = (0..2 * DAY)
        .map(|s| if s % DAY / HOUR == 9 { 4.0 } else { 1.0 })
        .collect();
    aws.preload(&demand);
    let quiet = fleet(&[25.0, 25.0], 0, 3_600);
    let at = |h: usize, m: usize| (2 * DAY + h * HOUR + m * 60) as u64;
    assert_eq!(aws.desired(&quiet, at(8, 50)), 2);
    // From 08:55 the 09:00 hour's forecast (4 capacities at 50 %: 8) holds.
    assert_eq!(aws.desired(&quiet, at(8, 56)), 8);
    assert_eq!(aws.desired(&quiet, at(9, 30)), 8);
    assert_eq!(aws.desired(&quiet, at(10, 0)), 2);
}

fn office(days: usize, seed: u64) -> Trace {
    Trace::shape(
        Shape::OfficeWeek,
        &ShapeParams {
            duration_secs: days * DAY,
            base: 1.0,
            peak: 8.0,
            noise: 0.05,
            seed,
        },
    )
    .unwrap()
}

#[test]
fn the_weekly_shapes_have_their_weekday_ramps_and_quiet_weekends() {
    let trace = office(7, 1);
    let at = |day: usize, hour: usize| trace.demand[day * DAY + hour * HOUR];
    assert!(at(0, 3) < 1.1, "night: base");
    assert!(at(2, 10) > 6.5, "a weekday at 10:00: near the peak");
    assert!(at(5, 11) < 3.0, "Saturday: a fifth of the span");
    let consumer = Trace::shape(Shape::ConsumerWeek, &ShapeParams::default()).unwrap();
    assert_eq!(consumer.demand.len(), DAY);
}

#[test]
fn after_a_warm_up_our_forecaster_launches_before_the_weekday_ramp_and_is_not_scored_on_it() {
    // 9 days: the first 8 are history; the ninth (a Tuesday) is replayed. Boot 180 s.
    let trace = office(9, 3);
    let options = Options {
        cloud: CloudModel {
            boot_delay_secs: 180,
            ..CloudModel::default()
        },
        warm_up_secs: 8 * DAY,
        keep_series: true,
        ..Options::default()
    };
    let predictive = simulate(&trace, &Policy::ours_predictive(2, 20), &options);
    assert_eq!(
        predictive.supply.len(),
        DAY,
        "only the replayed day is scored"
    );
    assert_eq!(
        predictive.scores.slo_violation_secs, 0,
        "{:?}",
        predictive.scores
    );
    // At 07:30 the ramp is a quarter done; the forecaster had launched for it.
    let needed = (trace.demand[8 * DAY + 7 * HOUR + 1_800] / 0.8).ceil() as u32;
    assert!(
        predictive.supply[7 * HOUR + 1_800] >= needed,
        "{} serving, {needed} needed",
        predictive.supply[7 * HOUR + 1_800]
    );
    // The reactive policy at the same target, without the forecast, falls behind the ramp.
    let mut reactive = Policy::ours_predictive(2, 20);
    if let Policy::Project { config, .. } = &mut reactive {
        config.predictive = None;
    }
    let reactive = simulate(&trace, &reactive, &options);
    assert!(
        reactive.scores.slo_violation_secs > 0,
        "{:?}",
        reactive.scores
    );

    let (ours, naive) = forecast_error(&trace, &options).expect("a day scored");
    assert!(
        ours.error_percent < naive.error_percent,
        "{ours:?} {naive:?}"
    );
}
