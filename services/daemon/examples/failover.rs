//! Benchmark of leader and standby (`cargo xtask bench` runs it; one `figure|value|unit|note`
//! line per measurement): two `autoscaler-monitor` processes on one state dir and its SQLite
//! store, with the default timings (a 3 s lease, 1 s polls and evaluations), a fleet of 2. The
//! leader is killed (SIGKILL) and frozen (SIGSTOP) in turn, `--kills` times each; each time:
//! how long until the standby acts (its first decision), then the old leader is started again
//! (a frozen one is let go instead, and must stand by in the same process). Over the whole run: instances launched
//! twice, decisions recorded by a deposed leader after its successor began, launches missing
//! from the activity history.

use autoscaler_policy::time::now_ms;
use std::path::Path;
use std::time::{Duration, Instant};

use autoscaler_proto::v1;
use autoscaler_testkit::daemon::spawn_daemon_process;
use autoscaler_testkit::*;
use nix::sys::signal::Signal;

fn figure(name: &str, value: f64, unit: &str, note: &str) {
    println!("{name}|{value:.2}|{unit}|{note}");
}

/// The defaults, but for the fleet's size and its steady simulated load.
fn config_file(state_dir: &Path) -> std::path::PathBuf {
    let path = state_dir.join("config.toml");
    std::fs::create_dir_all(state_dir).expect("the benchmark's state dir can be made in /tmp");
    std::fs::write(
        &path,
        r#"
group = "bench"
[controller]
min_instances = 2
max_instances = 4
[provider]
kind = "local"
agent_args = ["--drift-amplitude", "0", "--initial-load", "40", "--target-load", "40"]
terminate_grace_ms = 1000
"#,
    )
    .expect("the benchmark's config can be written to its state dir");
    path
}

/// The first decision record of the daemon at `port` whose epoch is above `epoch`: (its epoch,
/// its time); `None` while it does not lead.
async fn first_decision_after(port: u16, epoch: u64) -> Option<(u64, i64)> {
    let mut client = status_client(loopback(port));
    let answer = tokio::time::timeout(
        Duration::from_millis(500),
        client.get_activity(v1::GetActivityRequest {
            since_unix_ms: 0,
            limit: 0,
        }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    answer
        .records
        .iter()
        .filter(|r| r.epoch > epoch)
        .map(|r| (r.epoch, r.at_unix_ms))
        .min_by_key(|(_, at)| *at)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--kills")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let state_dir = StateDir::new("bench-failover");
    let config = config_file(&state_dir.0);
    let ports = [free_port(), free_port()];
    let mut daemons = [
        Some(spawn_daemon_process(&state_dir.0, ports[0], &config)),
        None,
    ];
    // The first leads once it has decided; then the second stands by.
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut epoch = loop {
        if let Some((epoch, _)) = first_decision_after(ports[0], 0).await {
            break epoch;
        }
        assert!(Instant::now() < give_up, "the first daemon never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemons[1] = Some(spawn_daemon_process(&state_dir.0, ports[1], &config));
    let mut leader = 0;
    let (mut after_kill, mut after_freeze) = (Vec::new(), Vec::new());
    let mut stepped_down = 0;
    for round in 0..rounds * 2 {
        let freeze = round % 2 == 1;
        // The standby has time to start and stand by; the fleet has time to report to the leader.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let standby = 1 - leader;
        let child = daemons[leader].as_mut().expect("the leader runs");
        let pid = child.id().expect("a live leader") as i32;
        let struck_ms = now_ms();
        signal_pid(
            pid,
            if freeze {
                Signal::SIGSTOP
            } else {
                Signal::SIGKILL
            },
        );
        let give_up = Instant::now() + Duration::from_secs(60);
        let (new_epoch, acted_ms) = loop {
            if let Some(found) = first_decision_after(ports[standby], epoch).await {
                break found;
            }
            assert!(
                Instant::now() < give_up,
                "round {round}: the standby never took over"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = (acted_ms - struck_ms) as f64 / 1000.0;
        if freeze {
            &mut after_freeze
        } else {
            &mut after_kill
        }
        .push(took);
        epoch = new_epoch;
        let mut old = daemons[leader].take().expect("the old leader");
        if freeze {
            // Let go: it must find the lease taken and stand by, in the same process; it stays
            // as the next standby.
            signal_pid(pid, Signal::SIGCONT);
            if stands_by(ports[leader], &mut old).await {
                stepped_down += 1;
            }
            daemons[leader] = Some(old);
        } else {
            let _ = old.wait().await;
            daemons[leader] = Some(spawn_daemon_process(&state_dir.0, ports[leader], &config));
        }
        leader = standby;
    }

    // The whole run, read from the store through the last leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut client = status_client(loopback(ports[leader]));
    let records = client
        .get_activity(v1::GetActivityRequest {
            since_unix_ms: 0,
            limit: 0,
        })
        .await
        .expect("the activity history")
        .into_inner()
        .records;
    // A record of an epoch made after the next epoch's first record: a deposed leader acted.
    let mut deposed = 0;
    for record in &records {
        let successor_began = records
            .iter()
            .filter(|r| r.epoch > record.epoch)
            .map(|r| r.at_unix_ms)
            .min();
        if successor_began.is_some_and(|began| record.at_unix_ms > began) {
            deposed += 1;
        }
    }
    let launched_recorded: usize = records.iter().map(|r| r.launched.len()).sum();
    let launched_ever = std::fs::read_to_string(state_dir.0.join("next-id"))
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .map_or(0, |next| next - 1);
    for daemon in daemons.iter_mut().flatten() {
        // A daemon already reaped has no id: nothing to stop.
        if let Some(pid) = daemon.id() {
            signal_pid(pid as i32, Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await;
    }

    let note = |what: &str| format!("{what}, over {rounds} failovers");
    figure(
        "failover-kill-p50",
        percentile(&after_kill, 0.5),
        "s",
        &note("leader killed (SIGKILL) to the standby's first decision, p50"),
    );
    figure(
        "failover-kill-p99",
        percentile(&after_kill, 0.99),
        "s",
        &note("the same, p99"),
    );
    figure(
        "failover-freeze-p50",
        percentile(&after_freeze, 0.5),
        "s",
        &note("leader frozen (SIGSTOP) to the standby's first decision, p50"),
    );
    figure(
        "failover-freeze-p99",
        percentile(&after_freeze, 0.99),
        "s",
        &note("the same, p99"),
    );
    figure(
        "failover-rounds",
        rounds as f64,
        "",
        "kills, and as many freezes",
    );
    figure(
        "failover-stepped-down",
        stepped_down as f64,
        "",
        "frozen leaders that stood by (in the same process) once let go",
    );
    figure(
        "failover-duplicate-launches",
        launched_ever.saturating_sub(2) as f64,
        "",
        "instances launched beyond the first 2, over the whole run",
    );
    figure(
        "failover-deposed-actions",
        deposed as f64,
        "",
        "decisions recorded by a leader after its successor's first",
    );
    figure(
        "failover-records-lost",
        launched_ever.saturating_sub(launched_recorded) as f64,
        "",
        "launches missing from the activity history",
    );
}

/// Whether the deposed daemon at `port` answers as a standby within 20 s, still running.
async fn stands_by(port: u16, daemon: &mut tokio::process::Child) -> bool {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut client = status_client(loopback(port));
    while Instant::now() < give_up {
        if let Ok(Some(_)) = daemon.try_wait() {
            return false;
        }
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_status(v1::GetStatusRequest::default()),
        )
        .await;
        if let Ok(Err(status)) = answer
            && status.code() == tonic::Code::Unavailable
            && status.message().contains("stands by")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
