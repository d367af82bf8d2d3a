//! Benchmark of the group serving real traffic (`cargo xtask bench` runs it; one
//! `figure|value|unit|note` line per measurement): the daemon with `provisioning/demo-traffic.toml`
//! (an app beside every agent, HAProxy in front, 1 s polls, evaluations and health checks), a
//! steady open-loop load of requests through HAProxy, and
//!
//! - a step in offered load: the time to capacity (from the step to the first request served by
//!   the instance launched for it) and its parts, and the requests that failed meanwhile;
//! - a fall in load: the scale-ins, each drained first, and the requests that failed meanwhile;
//! - `kill -9` of an instance's agent and app, several times: the requests that failed, for how
//!   long, and the time until the replacement serves;
//! - instance refreshes of a fleet of 4 under steady load: to a version with lifecycle hooks, at
//!   a maximum healthy of 100 % and of 150 %, and the rollbacks of an application that exits at
//!   start and of one that fails its health path: the requests that failed,
//!   the duration, and the fewest instances serving.

use autoscaler_policy::time::now_ms;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use autoscaler_controller::local::InstanceRecord;
use autoscaler_daemon::daemon::DaemonConfig;
use autoscaler_proto::v1;
use autoscaler_testkit::daemon::{RunningDaemon, serving};
use autoscaler_testkit::traffic::{Traffic, tally};
use autoscaler_testkit::*;

/// What one instance serves at most in the demo's config: 4 slots of 50 ms.
const CAPACITY_RPS: f64 = 80.0;

fn figure(name: &str, value: f64, unit: &str, note: &str) {
    println!("{name}|{value:.2}|{unit}|{note}");
}

/// The demo's traffic config, with this run's state dir, balancer port and binaries.
fn config(state_dir: &std::path::Path) -> (DaemonConfig, std::net::SocketAddr) {
    let path = workspace_root().join("provisioning/demo-traffic.toml");
    let text = std::fs::read_to_string(&path).expect("provisioning/demo-traffic.toml");
    let mut table: toml::Table = text.parse().expect("the demo's traffic config");
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let provider = table["provider"].as_table_mut().expect("[provider]");
    provider.insert("state_dir".into(), state_dir.display().to_string().into());
    provider.insert(
        "app_binary".into(),
        app_binary().display().to_string().into(),
    );
    let balancer = table["load_balancer"]
        .as_table_mut()
        .expect("[load_balancer]");
    balancer.insert("listen".into(), listen.to_string().into());
    balancer.insert(
        "binary".into(),
        haproxy_binary().display().to_string().into(),
    );
    let config =
        DaemonConfig::from_toml(&toml::to_string(&table).unwrap()).expect("a valid config");
    (config, listen)
}

/// Reads the status every 100 ms until `done` says so (or `deadline`).
async fn watch(
    client: &mut Status,
    what: &str,
    deadline: Duration,
    mut done: impl FnMut(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let give_up = Instant::now() + deadline;
    loop {
        if let Ok(status) = client
            .get_status(v1::GetStatusRequest { decisions_after: 0 })
            .await
        {
            let status = status.into_inner();
            if done(&status) {
                return status;
            }
        }
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn listed(status: &v1::GetStatusResponse) -> usize {
    status.instances.iter().filter(|i| i.listed()).count()
}

#[tokio::main]
async fn main() {
    let kills: usize = std::env::args()
        .skip_while(|a| a != "--kills")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let state_dir: PathBuf =
        std::env::temp_dir().join(format!("autoscaler-bench-traffic-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let (config, balancer) = config(&state_dir);
    let daemon = RunningDaemon::start(config).await;
    let mut client = status_client(daemon.address);
    watch(&mut client, "2 serving", Duration::from_secs(120), |s| {
        serving(s).len() == 2
    })
    .await;

    // The traffic's clock in wall-clock time, to place the decision records on it.
    let traffic = Traffic::start(balancer, 0.8 * CAPACITY_RPS);
    let started_ms = now_ms() - traffic.elapsed().as_millis() as i64;
    let on_clock = |at_unix_ms: i64| Duration::from_millis((at_unix_ms - started_ms).max(0) as u64);
    tokio::time::sleep(Duration::from_secs(10)).await;

    // A step: 0.8 -> 2.4 instances' worth of requests on 2 instances.
    let before = traffic.tally(Duration::ZERO, traffic.elapsed());
    let step = traffic.elapsed();
    let step_ms = now_ms();
    traffic.set_rate(2.4 * CAPACITY_RPS);
    let mut new: Option<String> = None;
    let mut healthy_at = None;
    let grown = watch(
        &mut client,
        "an instance launched for the step to serve",
        Duration::from_secs(120),
        |s| {
            if new.is_none() {
                new = s
                    .decisions
                    .iter()
                    .find(|d| d.at_unix_ms >= step_ms && !d.launched.is_empty())
                    .map(|d| d.launched[0].clone());
            }
            let Some(id) = &new else { return false };
            let Some(instance) = s.instances.iter().find(|i| &i.instance_id == id) else {
                return false;
            };
            if healthy_at.is_none() && instance.is_healthy() {
                healthy_at = Some(traffic.elapsed());
            }
            // The status shows the balancer's targets as of the last evaluation: a lagging
            // view, used only to know that it serves; the time is the first request's.
            instance.target_state() == v1::TargetState::Healthy
        },
    )
    .await;
    let new = new.expect("set with serving_at");
    let decided = grown
        .decisions
        .iter()
        .find(|d| d.launched.contains(&new))
        .map(|d| on_clock(d.at_unix_ms))
        .expect("the launch's decision");
    let registered = grown
        .decisions
        .iter()
        .find(|d| {
            d.outcome
                .iter()
                .any(|o| o.starts_with(&format!("registered {new} ")))
        })
        .map(|d| on_clock(d.at_unix_ms))
        .expect("the registration's record");
    // A record is timed at its evaluation's start; its registrations come a moment later.
    let first_served = loop {
        if let Some(first) = traffic
            .outcomes()
            .iter()
            .filter(|o| o.served_by.as_deref() == Some(new.as_str()))
            .map(|o| o.sent)
            .min()
        {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let healthy_at = healthy_at.expect("healthy before serving");
    let seconds = |from: Duration, to: Duration| to.saturating_sub(from).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let out = traffic.tally(step, traffic.elapsed());
    let peak = listed(&status(&mut client).await);

    // The fall: 2.4 -> 0.4 instances' worth, back to the minimum, each leaving instance drained.
    let fall = traffic.elapsed();
    traffic.set_rate(0.4 * CAPACITY_RPS);
    let shrunk = watch(&mut client, "back to 2", Duration::from_secs(180), |s| {
        listed(s) == 2 && serving(s).len() == 2
    })
    .await;
    let shrunk_at = traffic.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scale_in = traffic.tally(fall, traffic.elapsed());
    let drains: Vec<f64> = shrunk
        .decisions
        .iter()
        .flat_map(|d| &d.outcome)
        .filter_map(|o| {
            o.strip_prefix("drained ")?
                .split_once(" in ")?
                .1
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .collect();

    // kill -9 of an instance (its agent and its app) under 0.8 instances' worth on 2.
    traffic.set_rate(0.8 * CAPACITY_RPS);
    let mut killed_failures = Vec::new();
    let mut failing_for = Vec::new();
    let mut replaced_in = Vec::new();
    for _ in 0..kills {
        let current = watch(&mut client, "2 serving", Duration::from_secs(120), |s| {
            serving(s).len() == 2 && listed(s) == 2
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = serving(&current)[0].clone();
        let record = InstanceRecord::read(&state_dir, &victim).expect("the victim's record");
        let killed = traffic.elapsed();
        signal_pid(record.pid as i32, nix::sys::signal::Signal::SIGKILL);
        if let Some(app) = record.app {
            signal_pid(app.pid as i32, nix::sys::signal::Signal::SIGKILL);
        }
        watch(
            &mut client,
            "the replacement serving",
            Duration::from_secs(120),
            |s| serving(s).len() == 2 && !serving(s).contains(&victim),
        )
        .await;
        let back = traffic.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outcomes = traffic.outcomes();
        let failed: Vec<Duration> = outcomes
            .iter()
            .filter(|o| o.sent >= killed && o.sent < back && !o.ok())
            .map(|o| o.sent)
            .collect();
        killed_failures.push(failed.len() as f64);
        failing_for.push(match (failed.iter().min(), failed.iter().max()) {
            (Some(first), Some(last)) => (*last - *first).as_secs_f64(),
            _ => 0.0,
        });
        replaced_in.push(seconds(killed, back));
    }
    // Rolling out: a fleet held at 4 under 2 instances' worth of requests, refreshed to a
    // version with lifecycle hooks, at a maximum healthy of 100 % (one at a time) and of 150 %
    // (two launched first), then to versions whose application exits at start or fails its
    // health path (150 %, rolled back by themselves). A watcher reads the instances serving
    // every 100 ms.
    let mut operator = operator_client(daemon.address);
    operator
        .update_group(v1::UpdateGroupRequest {
            min_instances: Some(4),
            max_instances: Some(4),
            ..Default::default()
        })
        .await
        .expect("the bounds change");
    traffic.set_rate(2.0 * CAPACITY_RPS);
    watch(&mut client, "4 serving", Duration::from_secs(120), |s| {
        serving(s).len() == 4 && listed(s) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut refreshes = Vec::new();
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for (name, max_healthy, agent_args, app_args, ends) in [
        // Lifecycle hooks: a launch hook of 2 s before the balancer gets each new instance;
        // the next refresh runs their termination hook (1 s) after each drain.
        (
            "refresh-hooks",
            150,
            args(&["--launch-hook", "sleep 2", "--termination-hook", "sleep 1"]),
            vec![],
            "successful",
        ),
        (
            "refresh-100",
            100,
            vec![],
            args(&["--max-queue", "300"]),
            "successful",
        ),
        (
            "refresh-150",
            150,
            vec![],
            args(&["--max-queue", "400"]),
            "successful",
        ),
        (
            "refresh-rollback",
            150,
            vec![],
            args(&["--no-such-flag"]),
            "rolled-back",
        ),
        (
            "refresh-rollback-health",
            150,
            vec![],
            args(&["--fail-health"]),
            "rolled-back",
        ),
    ] {
        let from = traffic.elapsed();
        let started = operator
            .start_instance_refresh(v1::StartInstanceRefreshRequest {
                spec: Some(v1::LaunchSpec {
                    agent_args,
                    app_args,
                    ..v1::LaunchSpec::default()
                }),
                preferences: Some(v1::RefreshPreferences {
                    max_healthy_percentage: Some(max_healthy),
                    ..v1::RefreshPreferences::default()
                }),
            })
            .await
            .expect("the refresh starts")
            .into_inner()
            .refresh
            .expect("the refresh");
        let mut fewest = usize::MAX;
        watch(
            &mut client,
            "the refresh to end",
            Duration::from_secs(300),
            |s| {
                fewest = fewest.min(serving(s).len());
                s.refresh
                    .as_ref()
                    .is_some_and(|r| r.id == started.id && r.status == ends)
                    && listed(s) == 4
                    && serving(s).len() == 4
            },
        )
        .await;
        let to = traffic.elapsed();
        refreshes.push((
            name,
            max_healthy,
            ends,
            seconds(from, to),
            traffic.tally(from, to),
            fewest,
        ));
    }
    let all = traffic.stop().await;
    let total = tally(&all, Duration::ZERO, Duration::MAX);
    daemon.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);

    let max = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    let sum = |values: &[f64]| values.iter().sum::<f64>();
    figure(
        "traffic-requests",
        total.served as f64,
        "requests",
        "served in the whole run",
    );
    figure(
        "traffic-failed",
        total.failed as f64,
        "requests",
        "failed in the whole run",
    );
    figure(
        "traffic-before-failed",
        before.failed as f64,
        "requests",
        "failed before the step",
    );
    figure(
        "capacity-time",
        seconds(step, first_served),
        "s",
        "step in offered load to the first request served by the new instance",
    );
    figure(
        "capacity-decision",
        seconds(step, decided),
        "s",
        "step to the launch decision (the load seen over a second, polled, evaluated)",
    );
    figure(
        "capacity-start",
        seconds(decided, healthy_at),
        "s",
        "launch to the agent polled healthy (process start, registration, first poll)",
    );
    figure(
        "capacity-registration",
        seconds(healthy_at, registered),
        "s",
        "healthy to registered with the balancer (first load seen, next evaluation)",
    );
    figure(
        "capacity-health-check",
        seconds(registered, first_served),
        "s",
        "registered to the first request served (the balancer's first passed health check)",
    );
    figure(
        "scale-out-failed",
        out.failed as f64,
        "requests",
        &format!(
            "failed from the step until 20 s after capacity ({} served; peak {peak} instances)",
            out.served
        ),
    );
    figure(
        "scale-in-failed",
        scale_in.failed as f64,
        "requests",
        &format!(
            "failed from the fall until 3 s after the group was back at 2 ({} served; {:.1} s)",
            scale_in.served,
            seconds(fall, shrunk_at)
        ),
    );
    figure(
        "scale-in-drains",
        drains.len() as f64,
        "drains",
        "instances drained before they were terminated",
    );
    figure("scale-in-drain-max", max(&drains), "s", "longest drain");
    for (name, max_healthy, ends, took, tally, fewest) in &refreshes {
        figure(
            &format!("{name}-duration"),
            *took,
            "s",
            &format!("a refresh of 4 at max healthy {max_healthy} %, {ends}"),
        );
        figure(
            &format!("{name}-failed"),
            tally.failed as f64,
            "requests",
            &format!("failed during it ({} served)", tally.served),
        );
        figure(
            &format!("{name}-fewest-serving"),
            *fewest as f64,
            "instances",
            "the fewest serving at any read of the watcher (min healthy 90 % of 4 rounds up to 4: at 100 % EC2 too goes one at a time)",
        );
    }
    figure(
        "kill-count",
        kills as f64,
        "kills",
        "kill -9 of an instance's agent and app",
    );
    figure(
        "kill-failed",
        sum(&killed_failures),
        "requests",
        "failed from the kills until their replacements served, in all",
    );
    figure(
        "kill-failed-max",
        max(&killed_failures),
        "requests",
        "failed for one kill, at most",
    );
    figure(
        "kill-failing-max",
        max(&failing_for),
        "s",
        "from the first to the last failed request of one kill, at most",
    );
    figure(
        "kill-replaced-max",
        max(&replaced_in),
        "s",
        "kill to the replacement serving, at most",
    );
    figure(
        "kill-replaced-median",
        median(&replaced_in),
        "s",
        "kill to the replacement serving, median",
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn status(client: &mut Status) -> v1::GetStatusResponse {
    loop {
        if let Ok(status) = client
            .get_status(v1::GetStatusRequest { decisions_after: 0 })
            .await
        {
            return status.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
