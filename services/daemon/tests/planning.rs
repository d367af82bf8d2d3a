//! Planning ahead, end to end on the local provider: a group whose store holds two days of its
//! demand, recorded by a previous leader, with a daily rise due in three minutes. The new leader
//! takes the history up, its forecaster launches for the rise while the load is still low (rule
//! `forecast`), keeps the floor against the reactive policy's wish to scale in, shows the
//! forecast in the Status API, `/api/status` and `/metrics`, and records the group's demand in
//! the store once a minute; and that demand exported as a trace for `cargo xtask simulate
//! --history`.

use std::time::Duration;

use autoscaler_policy::forecast::{DemandSample, PredictiveConfig, PredictiveMode};
use autoscaler_policy::time::now_ms;
use autoscaler_store::{SqliteStore, Store};
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

#[tokio::test]
async fn a_recorded_daily_rise_makes_the_new_leader_launch_before_the_load_rises() {
    let state_dir = StateDir::new("planning");
    // A previous leader recorded two days: 0.6 capacities, and 1.5 for half an hour from three
    // minutes from now (time of day).
    std::fs::create_dir_all(&state_dir.0).unwrap();
    let store = SqliteStore::open(&state_dir.0.join("store.sqlite")).expect("the store");
    let lease = store
        .acquire("previous", "127.0.0.1:1", Duration::from_millis(1))
        .await
        .unwrap()
        .expect("a free lease");
    let now = now_ms();
    let rise = now + 3 * MINUTE;
    let history: Vec<DemandSample> = (1..2 * DAY / MINUTE)
        .map(|ago| {
            let at_ms = (now - ago * MINUTE).div_euclid(MINUTE) * MINUTE;
            let into_rise = (at_ms - rise).rem_euclid(DAY);
            DemandSample {
                at_ms,
                capacities: if into_rise < 30 * MINUTE { 1.5 } else { 0.6 },
            }
        })
        .collect();
    store.record_demand(lease.epoch, &history).await.unwrap();
    store.release("previous", lease.epoch).await.unwrap();

    let mut config = fast_daemon_config(&state_dir.0);
    config.controller.predictive = Some(PredictiveConfig {
        mode: PredictiveMode::ForecastAndScale,
        min_lead_secs: 600,
        ..PredictiveConfig::default()
    });
    config.validate().expect("a valid config");
    let daemon = RunningDaemon::start(config).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut client = status_client(daemon.address);
    // Every agent reports 30 %: the reactive policy alone keeps 2 (and would scale 3 in).
    let status = wait_status(
        &mut client,
        "3 healthy: the forecast's floor for 1.5 capacities at 50 %",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 3,
    )
    .await;
    assert!(
        now_ms() < rise,
        "the launch came before the rise it was for"
    );
    let forecast = status
        .forecast
        .clone()
        .expect("the status shows the forecast");
    assert!(forecast.acting, "{forecast:?}");
    assert_eq!(forecast.floor, 3, "{forecast:?}");
    assert!((forecast.demand - 1.5).abs() < 0.05, "{forecast:?}");
    assert!(
        forecast.history_hours > 47.0,
        "the previous leader's history: {forecast:?}"
    );
    // The launches it made are timed (launch to in service): the lead time's measure.
    wait_status(
        &mut client,
        "the launches timed",
        4,
        Duration::from_secs(10),
        |s| s.forecast.as_ref().is_some_and(|f| f.lead_samples == 3),
    )
    .await;
    assert!(
        forecast.error_percent.is_some_and(|e| e < 5.0),
        "its check of the last 24 hours: {forecast:?}"
    );
    let rule = status
        .decisions
        .iter()
        .find(|d| d.rules.iter().any(|r| r == "forecast"))
        .unwrap_or_else(|| panic!("a decision names rule forecast: {:#?}", status.decisions));
    assert!(
        rule.summary.contains("forecast demand 1.50 capacities"),
        "the record gives the forecast's figures: {rule:#?}"
    );
    // The floor holds against the reactive policy's scale-in (3 at 30 % is below its band).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = client
        .get_status(autoscaler_proto::v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(healthy(&status), 3, "{:#?}", status.decisions.last());

    let (code, body) = http_get(daemon.http, "/api/status").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"forecast\":{\"acting\":true")
            && body.contains("\"mode\":\"forecast-and-scale\""),
        "{body}"
    );
    let (code, metrics) = http_get(daemon.http, "/metrics").await;
    assert_eq!(code, 200);
    for metric in [
        "autoscaler_forecast_floor_instances 3",
        "autoscaler_forecast_acting 1",
        "autoscaler_forecast_demand_capacities 1.5",
        "autoscaler_forecast_error_percent ",
    ] {
        assert!(metrics.contains(metric), "{metric}:\n{metrics}");
    }

    // The leader records the group's demand once a minute: the 3 agents at 30 %.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    let recorded = loop {
        // The previous leader's history ends the minute before this one.
        let recorded = store.demand(now.div_euclid(MINUTE) * MINUTE).await.unwrap();
        if !recorded.is_empty() {
            break recorded;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no demand recorded in 75 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        recorded.iter().all(|s| (0.5..=1.0).contains(&s.capacities)),
        "{recorded:?}"
    );
    invariant.check();
    daemon.stop().await;
}

#[tokio::test]
async fn the_recorded_demand_is_exported_as_a_trace_the_simulator_replays() {
    let state_dir = StateDir::new("export-demand");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let store = SqliteStore::open(&state_dir.0.join("store.sqlite")).expect("the store");
    let lease = store
        .acquire("leader", "127.0.0.1:1", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a free lease");
    let now = now_ms().div_euclid(MINUTE) * MINUTE;
    let day: Vec<DemandSample> = (0..DAY / MINUTE)
        .map(|m| DemandSample {
            at_ms: now - DAY + m * MINUTE,
            capacities: 1.0 + (m % 60) as f64 / 60.0,
        })
        .collect();
    store.record_demand(lease.epoch, &day).await.unwrap();
    let trace = state_dir.0.join("history.csv");
    let exported = tokio::process::Command::new(monitor_binary())
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state_dir.0)
        .arg("--export-demand")
        .arg(&trace)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let start = autoscaler_policy::schedule::rfc3339(now - DAY);
    assert!(text.contains(&format!("# start {start}")), "{text:.200}");
    let replayable = autoscaler_policy::simulate::trace::Trace::from_csv("history", &text)
        .expect("a trace the simulator reads");
    assert_eq!(replayable.demand.len(), (DAY - MINUTE) as usize / 1_000 + 1);
    assert!((replayable.demand[30 * 60] - 1.5).abs() < 1e-3);

    // A group whose store recorded nothing says so.
    let empty = StateDir::new("export-nothing");
    let config = process_config_file(&empty.0, 4, 30.0);
    let exported = tokio::process::Command::new(monitor_binary())
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&empty.0)
        .arg("--export-demand")
        .arg(empty.0.join("history.csv"))
        .env("AUTOSCALER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!exported.status.success());
    assert!(
        String::from_utf8_lossy(&exported.stderr).contains("holds no recorded demand"),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
}
