//! The forecaster: it finds the daily and weekly cycles it was given and beats its seasonal-naive
//! baseline on a noisy one, follows a change of level, waits for 24 hours of history, measures
//! its lead time on the group's own launches, falls back to forecast-only by itself when its
//! error passes the bound (and comes back), and makes the policy launch before a daily ramp
//! (rule `forecast`), where `forecast-only` records the same forecast without acting.

use std::time::Duration;

use autoscaler_policy::config::ControllerConfig;
use autoscaler_policy::forecast::model::{self, Model, SLOT_MS};
use autoscaler_policy::forecast::{
    DemandSample, Predictive, PredictiveConfig, PredictiveMode, Series,
};
use autoscaler_policy::policy::{self, Observation, ObservedInstance, PolicyState, Rule};
use autoscaler_policy::random::SplitMix64 as Rng;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// A Monday, 00:00 UTC.
const START: i64 = 1_764_547_200_000;

/// Demand with a daily cycle (low at night, high from 9 to 17) and a weekly one (weekends at
/// half), in capacities.
fn cycle(at_ms: i64) -> f64 {
    let day = (at_ms - START).div_euclid(DAY);
    let hour = (at_ms - START).rem_euclid(DAY) as f64 / HOUR as f64;
    let daily = if (9.0..17.0).contains(&hour) {
        6.0
    } else if (7.0..9.0).contains(&hour) {
        1.0 + 2.5 * (hour - 7.0)
    } else {
        1.0
    };
    if day.rem_euclid(7) >= 5 {
        daily * 0.5
    } else {
        daily
    }
}

fn samples(from_ms: i64, until_ms: i64, noise: f64, seed: u64) -> Vec<DemandSample> {
    let mut rng = Rng(seed);
    (from_ms / MINUTE..until_ms / MINUTE)
        .map(|m| {
            let at_ms = m * MINUTE;
            let jitter = 1.0 + noise * (2.0 * rng.next_f64() - 1.0);
            DemandSample {
                at_ms,
                capacities: cycle(at_ms) * jitter,
            }
        })
        .collect()
}

/// WAPE, percent, of `values` (one per slot from `from_slot`) against the noiseless cycle.
fn error_against_cycle(values: &[f64], from_slot: i64) -> f64 {
    let (mut error, mut total) = (0.0, 0.0);
    for (i, v) in values.iter().enumerate() {
        let at = (from_slot + i as i64) * SLOT_MS;
        let actual = (0..5).map(|m| cycle(at + m * MINUTE)).sum::<f64>() / 5.0;
        error += (v - actual).abs();
        total += actual;
    }
    100.0 * error / total
}

#[test]
fn it_finds_the_daily_and_weekly_cycles_it_was_given_and_beats_its_baseline_on_noise() {
    let now = START + 14 * DAY;
    let history = samples(START, now, 0.3, 7);
    let series = Series::from_samples(&history, now);
    let from = now / SLOT_MS;
    let seasonal = model::forecast(&series, from, model::HORIZON, Model::Seasonal);
    let naive = model::forecast(&series, from, model::HORIZON, Model::SeasonalNaive);
    assert_eq!(seasonal.len(), 576, "48 hours of 5-minute slots");
    let (ours, baseline) = (
        error_against_cycle(&seasonal, from),
        error_against_cycle(&naive, from),
    );
    // The noise is +-30 % a minute (about 8 % on a 5-minute mean); a profile averaged over
    // weeks is closer to the cycle than last week's single copy.
    assert!(ours < 6.0, "seasonal model's error {ours:.1} %");
    assert!(
        ours < baseline,
        "seasonal {ours:.1} % vs naive {baseline:.1} %"
    );
    // The weekly cycle: Monday's 10:00 is forecast at the weekday level, Sunday's was not.
    let monday_10 = usize::try_from((now + 10 * HOUR) / SLOT_MS - from).unwrap();
    assert!(
        (seasonal[monday_10] - 6.0).abs() < 0.6,
        "{}",
        seasonal[monday_10]
    );
    // Pure: the same history, the same forecast.
    assert_eq!(
        seasonal,
        model::forecast(&series, from, model::HORIZON, Model::Seasonal)
    );
}

#[test]
fn a_change_of_level_is_followed_within_the_hour_and_fades_with_the_horizon() {
    let now = START + 14 * DAY + 11 * HOUR;
    let mut history = samples(START, now, 0.0, 1);
    // Since 10:00 today, 30 % more than the cycle.
    for sample in history.iter_mut().filter(|s| s.at_ms >= now - HOUR) {
        sample.capacities *= 1.3;
    }
    let series = Series::from_samples(&history, now);
    let from = now / SLOT_MS;
    let values = model::forecast(&series, from, model::HORIZON, Model::Seasonal);
    assert!((values[0] - 7.8).abs() < 0.3, "next slot {}", values[0]);
    let tomorrow = usize::try_from(model::DAY).unwrap();
    assert!(
        (values[tomorrow] - 6.0).abs() < 0.3,
        "a day on {}",
        values[tomorrow]
    );
}

fn config(mode: PredictiveMode) -> PredictiveConfig {
    PredictiveConfig {
        mode,
        target_percent: Some(50.0),
        ..PredictiveConfig::default()
    }
}

#[test]
fn it_waits_for_24_hours_of_history_then_acts_in_forecast_and_scale_only() {
    let predictive_config = config(PredictiveMode::ForecastAndScale);
    let mut predictive = Predictive::default();
    predictive.load_history(samples(START, START + 20 * HOUR, 0.0, 1));
    predictive.observe(
        Some(&predictive_config),
        START + 20 * HOUR,
        Some(1.0),
        &[],
        Duration::ZERO,
    );
    let early = predictive.view(&predictive_config, 50.0, START + 20 * HOUR);
    assert!(!early.acting && early.made_at_ms.is_none(), "{early:?}");

    predictive.load_history(samples(START + 20 * HOUR, START + 2 * DAY, 0.0, 1));
    let now = START + 2 * DAY + 8 * HOUR; // Wednesday 08:00, an hour before the peak
    predictive.observe(
        Some(&predictive_config),
        now,
        Some(1.0),
        &[],
        Duration::ZERO,
    );
    let view = predictive.view(&predictive_config, 50.0, now);
    assert!(view.acting, "{view:?}");
    assert_eq!(
        view.lead_secs, 300,
        "no launch timed yet: EC2's scheduling buffer"
    );
    assert_eq!(view.next.len(), 24);

    let only = config(PredictiveMode::ForecastOnly);
    let view = predictive.view(&only, 50.0, now);
    assert!(!view.acting && view.made_at_ms.is_some(), "{view:?}");
}

fn instance(id: &str, age_secs: u64, reported: bool) -> ObservedInstance {
    let age = Duration::from_secs(age_secs);
    match reported {
        true => common::serving(id, age, 50.0),
        false => common::booting(id, age),
    }
}

#[test]
fn the_lead_time_is_the_95th_percentile_of_this_groups_launches_with_a_floor() {
    let predictive_config = config(PredictiveMode::ForecastAndScale);
    let mut predictive = Predictive::default();
    // The controller has run for two hours. Instances launched while it watched are timed when
    // first seen in service (their age then), once: 100 + 10 i seconds. One older than the
    // controller (it started after that launch) is not timed, nor is a second sighting.
    let uptime = Duration::from_secs(7_200);
    let observe = |predictive: &mut Predictive, seen: &[ObservedInstance]| {
        predictive.observe(Some(&predictive_config), START, None, seen, uptime)
    };
    observe(&mut predictive, &[instance("old", 8_000, true)]);
    for i in 0..20u64 {
        let id = format!("i-{i}");
        observe(&mut predictive, &[instance(&id, 1, false)]);
        observe(&mut predictive, &[instance(&id, 100 + 10 * i, true)]);
        observe(&mut predictive, &[instance(&id, 500, true)]);
    }
    // 20 times 100..=290 s: the 95th percentile is the 19th, 280 s.
    assert_eq!(predictive.leads().len(), 20);
    assert_eq!(predictive.lead_ms(&predictive_config), 280_000);
    let floored = PredictiveConfig {
        min_lead_secs: 600,
        ..predictive_config.clone()
    };
    assert_eq!(predictive.lead_ms(&floored), 600_000);
}

#[test]
fn past_its_error_bound_it_falls_back_to_forecast_only_by_itself_and_comes_back() {
    let predictive_config = config(PredictiveMode::ForecastAndScale);
    let now = START + 7 * DAY;
    // A week of the cycle, then a day where the demand did something else entirely.
    let mut history = samples(START, now - DAY, 0.05, 3);
    let mut rng = Rng(9);
    history.extend((0..DAY / MINUTE).map(|m| DemandSample {
        at_ms: now - DAY + m * MINUTE,
        capacities: if (m / 90) % 2 == 0 {
            0.5
        } else {
            5.0 + rng.next_f64()
        },
    }));
    let mut predictive = Predictive::default();
    predictive.load_history(history.clone());
    predictive.observe(
        Some(&predictive_config),
        now,
        Some(1.0),
        &[],
        Duration::ZERO,
    );
    let view = predictive.view(&predictive_config, 50.0, now);
    assert!(view.fallen_back && !view.acting, "{view:?}");
    assert!(view.error_percent.unwrap() > 30.0);
    assert!(view.under_percent.is_some() && view.baseline_error_percent.is_some());

    // The next day the cycle is back: at its next check (hourly), it acts again.
    let later = now + DAY;
    predictive.load_history(samples(now, later, 0.05, 4));
    predictive.observe(
        Some(&predictive_config),
        later,
        Some(1.0),
        &[],
        Duration::ZERO,
    );
    let view = predictive.view(&predictive_config, 50.0, later);
    assert!(!view.fallen_back && view.acting, "{view:?}");
    assert!(view.error_percent.unwrap() < 30.0);
}

mod common;

/// A fleet of `n` in service at `load` percent each.
fn fleet(n: usize, load: f64) -> Observation {
    Observation {
        instances: (0..n)
            .map(|i| common::serving(&format!("i-{i}"), Duration::from_secs(3_600), load))
            .collect(),
        controller_uptime: common::UPTIME,
        ..Observation::default()
    }
}

#[test]
fn the_policy_launches_before_the_daily_ramp_and_forecast_only_records_without_acting() {
    // Wednesday 06:59: two instances at 50 % (demand 1 capacity), the ramp starts at 07:00 and
    // the forecaster has two days of it.
    let now = START + 2 * DAY + 7 * HOUR - MINUTE;
    let scale = ControllerConfig {
        max_instances: 5,
        predictive: Some(PredictiveConfig {
            min_lead_secs: 300,
            ..config(PredictiveMode::ForecastAndScale)
        }),
        ..ControllerConfig::default()
    };
    let mut state = PolicyState::default();
    state
        .forecaster()
        .load_history(samples(START, now - MINUTE, 0.0, 1));
    let decision = policy::evaluate(
        &fleet(2, 50.0),
        &scale,
        &mut state,
        Duration::from_millis(now as u64),
    );
    let forecast = decision.forecast.clone().expect("forecast shown");
    // The next five minutes reach 1.0 + 2.5 * 5/60 capacities: 3 instances at 50 %.
    assert_eq!(forecast.floor, 3, "{forecast:?}");
    assert_eq!(decision.desired, 3);
    assert_eq!(decision.launch, 1);
    let rule = decision
        .rules
        .iter()
        .find(|r| r.rule == Rule::Forecast)
        .expect("rule forecast");
    assert!(rule.detail.contains("lead time 300s"), "{}", rule.detail);

    let only = ControllerConfig {
        predictive: Some(PredictiveConfig {
            mode: PredictiveMode::ForecastOnly,
            ..scale.predictive.clone().unwrap()
        }),
        ..scale.clone()
    };
    let mut state = PolicyState::default();
    state
        .forecaster()
        .load_history(samples(START, now - MINUTE, 0.0, 1));
    let decision = policy::evaluate(
        &fleet(2, 50.0),
        &only,
        &mut state,
        Duration::from_millis(now as u64),
    );
    assert_eq!(decision.forecast.as_ref().map(|f| f.floor), Some(3));
    assert_eq!((decision.desired, decision.launch), (2, 0));
}

#[test]
fn the_demand_is_recorded_once_a_minute_as_the_minutes_mean() {
    let predictive_config = config(PredictiveMode::ForecastOnly);
    let mut predictive = Predictive::default();
    for second in 0..125 {
        let demand = if second < 60 { 1.0 } else { 3.0 };
        predictive.observe(
            Some(&predictive_config),
            START + second * 1_000,
            Some(demand),
            &[],
            Duration::ZERO,
        );
    }
    let recorded = predictive.take_unsaved();
    assert_eq!(
        recorded,
        [
            DemandSample {
                at_ms: START,
                capacities: 1.0
            },
            DemandSample {
                at_ms: START + MINUTE,
                capacities: 3.0
            }
        ]
    );
    assert!(predictive.take_unsaved().is_empty(), "taken once");
}

#[test]
fn a_bad_predictive_section_is_refused_by_name() {
    for (bad, field) in [
        (
            PredictiveConfig {
                history_days: 7,
                ..PredictiveConfig::default()
            },
            "history_days",
        ),
        (
            PredictiveConfig {
                target_percent: Some(0.0),
                ..PredictiveConfig::default()
            },
            "target_percent",
        ),
        (
            PredictiveConfig {
                min_lead_secs: 0,
                ..PredictiveConfig::default()
            },
            "min_lead_secs",
        ),
        (
            PredictiveConfig {
                max_error_percent: f64::NAN,
                ..PredictiveConfig::default()
            },
            "max_error_percent",
        ),
    ] {
        let error = ControllerConfig {
            predictive: Some(bad),
            ..ControllerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains(field), "{error}");
    }
}
