//! Scheduled actions: which windows hold at an instant across time zones and daylight-saving
//! changes, overlapping windows (the largest floor wins), one-off changes of the bounds, bad
//! schedules refused by name, the policy raising its floor through a window (rule `schedule`),
//! and the simulator launching ahead of a morning ramp at the trace's clock.

use std::time::Duration;

use autoscaler_policy::config::ControllerConfig;
use autoscaler_policy::policy::{self, PolicyState, Rule};
use autoscaler_policy::schedule::{BoundsChange, ScheduleCache, Schedules, WindowConfig};
use autoscaler_policy::simulate::trace::Trace;
use autoscaler_policy::simulate::{Options, Policy, simulate};
use chrono::{TimeZone, Utc};

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .timestamp_millis()
}

fn window(name: &str, cron: &str, zone: &str, secs: u64, min: u32) -> WindowConfig {
    WindowConfig {
        name: name.to_string(),
        cron: cron.to_string(),
        time_zone: zone.to_string(),
        duration_secs: secs,
        min_instances: min,
        max_instances: None,
    }
}

fn holds(schedules: &Schedules, at_ms: i64) -> Vec<String> {
    let (scheduled, _) = schedules.at(2, 5, at_ms);
    scheduled.active.into_iter().map(|w| w.name).collect()
}

#[test]
fn a_start_that_spring_forward_skips_happens_after_the_change_and_fall_back_starts_once() {
    // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
    let schedules = Schedules::new(
        &[window("night", "30 2 * * *", "Europe/Berlin", 3_600, 3)],
        &[],
        5,
    )
    .unwrap();
    // An ordinary day: 02:30 CET is 01:30 UTC.
    assert!(holds(&schedules, ms(2026, 3, 28, 1, 29)).is_empty());
    assert_eq!(holds(&schedules, ms(2026, 3, 28, 1, 30)), ["night"]);
    assert!(holds(&schedules, ms(2026, 3, 28, 2, 30)).is_empty());
    // Spring forward: 02:30 does not exist; the window starts at 03:00 CEST (01:00 UTC).
    assert!(holds(&schedules, ms(2026, 3, 29, 0, 59)).is_empty());
    assert_eq!(holds(&schedules, ms(2026, 3, 29, 1, 0)), ["night"]);
    assert_eq!(holds(&schedules, ms(2026, 3, 29, 1, 59)), ["night"]);
    assert!(holds(&schedules, ms(2026, 3, 29, 2, 0)).is_empty());
    // Fall back: 02:30 happens twice (00:30 and 01:30 UTC); the window starts at the first.
    assert_eq!(holds(&schedules, ms(2026, 10, 25, 0, 30)), ["night"]);
    assert_eq!(holds(&schedules, ms(2026, 10, 25, 1, 29)), ["night"]);
    assert!(holds(&schedules, ms(2026, 10, 25, 1, 45)).is_empty());
}

#[test]
fn a_weekday_morning_follows_its_zone_through_the_year() {
    let schedules = Schedules::new(
        &[window("open", "0 8 * * 1-5", "America/New_York", 7_200, 4)],
        &[],
        5,
    )
    .unwrap();
    // Monday 2026-01-05, EST (UTC-5): 08:00 is 13:00 UTC.
    assert_eq!(holds(&schedules, ms(2026, 1, 5, 13, 0)), ["open"]);
    assert!(holds(&schedules, ms(2026, 1, 5, 12, 0)).is_empty());
    // Monday 2026-07-06, EDT (UTC-4): 08:00 is 12:00 UTC.
    assert_eq!(holds(&schedules, ms(2026, 7, 6, 12, 0)), ["open"]);
    assert!(holds(&schedules, ms(2026, 7, 6, 14, 0)).is_empty());
    // Saturday 2026-07-11: no window; the next is Monday's.
    let (scheduled, until) = schedules.at(2, 5, ms(2026, 7, 11, 12, 0));
    assert!(scheduled.active.is_empty());
    let next = scheduled.next.expect("a next window");
    assert_eq!(next.starts_at_ms, ms(2026, 7, 13, 12, 0));
    assert_eq!(until, next.starts_at_ms, "nothing changes before it");
    assert_eq!((scheduled.min_instances, scheduled.max_instances), (2, 5));
}

#[test]
fn overlapping_windows_take_the_largest_floor_and_a_window_may_set_the_ceiling() {
    let mut big = window("sale", "0 9 * * *", "UTC", 3 * 3_600, 4);
    big.max_instances = Some(8);
    let schedules = Schedules::new(
        &[window("morning", "0 8 * * *", "UTC", 2 * 3_600, 3), big],
        &[],
        10,
    )
    .unwrap();
    let at = |h, mi| schedules.at(2, 5, ms(2026, 2, 2, h, mi)).0;
    assert_eq!((at(8, 30).min_instances, at(8, 30).max_instances), (3, 5));
    let both = at(9, 30);
    assert_eq!(both.active.len(), 2);
    assert_eq!((both.min_instances, both.max_instances), (4, 8));
    assert_eq!((at(11, 0).min_instances, at(11, 0).max_instances), (4, 8));
    assert_eq!((at(12, 0).min_instances, at(12, 0).max_instances), (2, 5));
}

#[test]
fn a_window_that_starts_again_while_it_holds_ends_a_duration_after_its_latest_start() {
    let schedules =
        Schedules::new(&[window("busy", "*/10 * * * *", "UTC", 3_600, 3)], &[], 5).unwrap();
    let (scheduled, until) = schedules.at(2, 5, ms(2026, 2, 2, 12, 5));
    assert_eq!(scheduled.active[0].ends_at_ms, ms(2026, 2, 2, 13, 0));
    assert_eq!(
        until,
        ms(2026, 2, 2, 12, 10),
        "the next start changes what holds"
    );
}

#[test]
fn a_one_off_change_holds_from_its_time_on() {
    let change = BoundsChange {
        name: "holidays".to_string(),
        at: "2026-12-24T18:00:00+01:00".to_string(),
        min_instances: Some(3),
        max_instances: None,
    };
    let schedules = Schedules::new(&[], &[change], 5).unwrap();
    let (before, until) = schedules.at(2, 5, ms(2026, 12, 24, 16, 59));
    assert_eq!((before.min_instances, before.change), (2, None));
    assert_eq!(until, ms(2026, 12, 24, 17, 0));
    let (after, _) = schedules.at(2, 5, ms(2026, 12, 24, 17, 0));
    assert_eq!(after.min_instances, 3);
    assert_eq!(after.change.as_deref(), Some("holidays"));
}

#[test]
fn a_bad_schedule_is_refused_naming_its_entry_and_field() {
    let cases = [
        (window("a", "61 * * * *", "UTC", 60, 3), "[0].cron"),
        (
            window("a", "0 8 * * *", "Mars/Olympus", 60, 3),
            "[0].time_zone",
        ),
        (window("a", "0 8 * * *", "UTC", 0, 3), "[0].duration_secs"),
        (window("a", "0 8 * * *", "UTC", 60, 9), "[0].min_instances"),
        (window("", "0 8 * * *", "UTC", 60, 3), "[0].name"),
    ];
    for (bad, words) in cases {
        let config = ControllerConfig {
            schedule: vec![bad.clone()],
            ..ControllerConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "schedule", "{bad:?}");
        assert!(error.to_string().contains(words), "{bad:?}: {error}");
    }
    let config = ControllerConfig {
        scheduled_change: vec![BoundsChange {
            name: "x".to_string(),
            at: "tomorrow".to_string(),
            min_instances: Some(3),
            max_instances: None,
        }],
        ..ControllerConfig::default()
    };
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("[0].at")
    );
}

#[test]
fn the_cache_answers_as_the_schedules_do_second_by_second() {
    let config = ControllerConfig {
        schedule: vec![
            window("a", "*/7 * * * *", "Europe/Paris", 200, 3),
            window("b", "0 */2 * * *", "Asia/Kolkata", 5_000, 4),
        ],
        ..ControllerConfig::default()
    };
    let schedules = Schedules::new(&config.schedule, &[], 5).unwrap();
    let mut cache = ScheduleCache::default();
    let start = ms(2026, 3, 29, 0, 0);
    for second in (0..6 * 3_600).step_by(13) {
        let now = start + second * 1_000;
        assert_eq!(
            cache.at(&config, now),
            Some(schedules.at(2, 5, now).0),
            "at {now}"
        );
    }
}

mod common;
use common::fleet;

#[test]
fn a_window_raises_the_floor_and_says_so() {
    let config = ControllerConfig {
        schedule: vec![window("open", "0 8 * * 1-5", "UTC", 3_600, 4)],
        ..ControllerConfig::default()
    };
    let mut state = PolicyState::default();
    let at = |ms: i64| Duration::from_millis(ms as u64);
    // Before the window: 2 at 50 % holds.
    let before = policy::evaluate(
        &fleet(&[50.0, 50.0]),
        &config,
        &mut state,
        at(ms(2026, 1, 5, 7, 59)),
    );
    assert_eq!(before.desired, 2);
    let next = before
        .scheduled
        .as_ref()
        .and_then(|s| s.next.clone())
        .unwrap();
    assert_eq!(next.starts_at_ms, ms(2026, 1, 5, 8, 0));
    // In the window: the floor is 4, whatever the load, and the record says why.
    let during = policy::evaluate(
        &fleet(&[10.0, 10.0]),
        &config,
        &mut state,
        at(ms(2026, 1, 5, 8, 0)),
    );
    assert_eq!((during.desired, during.launch), (4, 2));
    let rule = during
        .rules
        .iter()
        .find(|r| r.rule == Rule::Schedule)
        .unwrap();
    assert!(rule.detail.contains("window open"), "{}", rule.detail);
    // A floor raised by a schedule starts no cooldown: the policy may scale out at once.
    let busy = policy::evaluate(
        &fleet(&[95.0, 95.0, 95.0, 95.0]),
        &config,
        &mut state,
        at(ms(2026, 1, 5, 8, 1)),
    );
    assert!(busy.desired > 4, "{}", busy.summary());
}

#[test]
fn the_simulator_launches_ahead_of_a_morning_ramp_through_a_window() {
    // Monday 2026-01-05 from 06:00 UTC: demand 1 until 08:00, then 3.5 (a ramp a 180 s boot
    // cannot follow); a window from 07:50 holds 5.
    let start = ms(2026, 1, 5, 6, 0) as u64 / 1_000;
    let demand: Vec<f64> = (0..4 * 3_600)
        .map(|t| if t < 2 * 3_600 { 1.0 } else { 3.5 })
        .collect();
    let trace = Trace {
        name: "morning".to_string(),
        demand,
    };
    let options = Options {
        start_secs: start,
        cloud: autoscaler_policy::simulate::CloudModel {
            boot_delay_secs: 180,
            ..Default::default()
        },
        ..Options::default()
    };
    let reactive = Policy::ours_target(2, 5);
    let mut scheduled = Policy::ours_target(2, 5);
    if let Policy::Project { config, .. } = &mut scheduled {
        config.schedule = vec![window("ramp", "50 7 * * 1-5", "UTC", 3_600, 5)];
    }
    let without = simulate(&trace, &reactive, &options).scores;
    let with = simulate(&trace, &scheduled, &options).scores;
    assert!(without.slo_violation_secs >= 120, "{without:?}");
    assert_eq!(with.slo_violation_secs, 0, "{with:?}");
}
