//! The controller decides only on what it sees, end to end on the local provider: a restarted
//! daemon scales nothing in while adopted instances have yet to report again, a frozen agent
//! does not make room for a scale-in, agents that die at start are launched again only after a
//! growing pause (and the status says why), and no content of the state directory makes the
//! daemon panic or leaves an agent behind. Each test prints its figures (`figure:` lines) for
//! docs/RELIABILITY.md.

use autoscaler_policy::time::now_ms;
use std::path::Path;
use std::time::{Duration, Instant};

use autoscaler_daemon::daemon::{DaemonConfig, TlsSource};
use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Instances the provider lists as running that the monitor polls successfully and that
/// reported a load to this daemon.
fn reported(status: &v1::GetStatusResponse) -> usize {
    status
        .instances
        .iter()
        .filter(|i| {
            i.state() == v1::InstanceState::Running && i.is_healthy() && i.load_percent.is_some()
        })
        .count()
}

fn sigkill(child: &tokio::process::Child) {
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGKILL).unwrap();
}

fn sigterm(child: &tokio::process::Child) {
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
}

#[tokio::test]
async fn twenty_restarts_of_a_loaded_fleet_scale_nothing_in_and_launch_nothing() {
    let state_dir = StateDir::new("restarts");
    // Every agent holds 95 %: target tracking at 50 % wants 8, the maximum is 4.
    let config = process_config_file(&state_dir.0, 4, 95.0);
    let port = free_port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let mut client = status_client(address);
    let first = wait_status(
        &mut client,
        "4 instances reporting 95 %",
        4,
        Duration::from_secs(60),
        |s| reported(s) == 4,
    )
    .await;
    let ids = listed(&first);
    let invariant = FleetInvariant::watch(address, 2, 4);
    let (mut launched, mut terminated, mut evaluations) = (0, 0, 0u64);
    let mut slowest = Duration::ZERO;
    for restart in 1..=20 {
        sigkill(&daemon);
        daemon.wait().await.unwrap();
        let started = Instant::now();
        daemon = spawn_daemon_process(&state_dir.0, port, &config);
        let mut client = status_client(address);
        let again = wait_status(
            &mut client,
            "every adopted instance reporting again",
            4,
            Duration::from_secs(30),
            |s| reported(s) == 4,
        )
        .await;
        slowest = slowest.max(started.elapsed());
        // A second of evaluations after the last one reported, then read the whole record.
        let after = now_ms() + 1_000;
        let status = wait_status(
            &mut client,
            "a second of evaluations on a fully reported fleet",
            4,
            Duration::from_secs(10),
            |s| s.decisions.last().is_some_and(|d| d.at_unix_ms >= after),
        )
        .await;
        for decision in &status.decisions {
            launched += decision.launched.len();
            terminated += decision.terminated.len();
            evaluations += u64::from(decision.repeated) + 1;
        }
        assert_eq!(
            listed(&again),
            ids,
            "restart {restart}: the fleet changed: {:#?}",
            status.decisions
        );
        assert!(
            status
                .decisions
                .iter()
                .all(|d| d.launched.is_empty() && d.terminated.is_empty()),
            "restart {restart}: the restarted daemon acted on a loaded fleet: {:#?}",
            status.decisions
        );
    }
    eprintln!(
        "figure: 20 restarts of a fleet of 4 at 95 %: {launched} launched, {terminated} terminated in {evaluations} evaluations; every adopted instance reported again within {:.1} s",
        slowest.as_secs_f64()
    );
    invariant.check();
    sigterm(&daemon);
    let exit = tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn a_frozen_agent_is_replaced_without_scaling_in_a_healthy_one() {
    let state_dir = StateDir::new("freeze-loaded");
    let mut config: DaemonConfig = fast_daemon_config(&state_dir.0);
    // No scale-in cooldown: nothing but the rule itself stands between a freeze and a scale-in.
    config.controller.scale_in_cooldown_secs = 0;
    let daemon = RunningDaemon::start(config).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut client = status_client(daemon.address);
    let load = LoadDriver::start(daemon.address, 90.0);
    wait_status(&mut client, "4 healthy", 4, Duration::from_secs(60), |s| {
        healthy(s) == 4
    })
    .await;
    // About 40 % on 4 instances: target tracking at 50 % sizes the fleet at exactly 4.
    load.set(40.0);
    let settled = wait_status(
        &mut client,
        "4 instances at 40 %",
        4,
        Duration::from_secs(30),
        |s| {
            healthy(s) == 4
                && s.instances
                    .iter()
                    .all(|i| i.load_percent.is_some_and(|l| (l - 40.0).abs() < 1.0))
        },
    )
    .await;
    let victim = settled.instances[0].instance_id.clone();
    let pid = state_dir.pid_of(&victim).expect("the victim's pid");
    let seen_before = settled.decisions.last().map_or(0, |d| d.sequence);
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    let status = wait_status(
        &mut client,
        "the frozen instance replaced and 4 healthy again",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 4 && s.instances.iter().all(|i| i.instance_id != victim),
    )
    .await;
    let healed = frozen.elapsed();
    let since: Vec<&v1::DecisionRecord> = status
        .decisions
        .iter()
        .filter(|d| d.sequence > seen_before)
        .collect();
    let terminated: Vec<&String> = since.iter().flat_map(|d| &d.terminated).collect();
    assert_eq!(
        terminated,
        [&victim],
        "only the frozen instance may be terminated: {since:#?}"
    );
    let held = since
        .iter()
        .filter(|d| d.rules.iter().any(|r| r == "missing-metrics"))
        .count();
    // While it missed polls, the records say it had no metric, why, and how it was counted.
    let unseen = since
        .iter()
        .find(|d| d.without_metric == 1)
        .unwrap_or_else(|| {
            panic!("no record saw the frozen instance without a metric: {since:#?}")
        });
    assert_eq!(unseen.missing.len(), 1, "{unseen:#?}");
    assert!(
        unseen.missing[0].starts_with(&format!("{victim} (")),
        "{unseen:#?}"
    );
    assert_eq!(unseen.in_service, 3, "{unseen:#?}");
    eprintln!(
        "figure: frozen agent at 40 % on 4: replaced and 4 healthy again {:.1} s after SIGSTOP; {held} decision records name missing metrics; 0 healthy instances scaled in",
        healed.as_secs_f64()
    );
    drop(load);
    invariant.check();
    daemon.stop().await;
}

/// Starts a daemon whose agents all exit at start, and watches it for `window`: returns the
/// instances launched and the last status.
async fn watch_a_launch_storm(
    state_dir: &StateDir,
    tls: TlsSource,
    advertise: Option<String>,
    window: Duration,
) -> (usize, v1::GetStatusResponse) {
    let daemon = RunningDaemon::start_with(fast_daemon_config(&state_dir.0), tls, advertise).await;
    let mut client = status_client(daemon.address);
    let end = Instant::now() + window;
    let status = wait_status(
        &mut client,
        "the end of the observation window",
        4,
        window + Duration::from_secs(10),
        |_| Instant::now() >= end,
    )
    .await;
    let launched = status.decisions.iter().map(|d| d.launched.len()).sum();
    daemon.stop().await;
    (launched, status)
}

fn assert_launches_back_off(launched: usize, status: &v1::GetStatusResponse, why: &str) {
    // Two at the start; the next launch waits 10 s (the default first pause), then 20 s.
    assert!(
        launched <= 3,
        "{launched} launches in 8 s from agents that die at start: {:#?}",
        status.decisions
    );
    let failing = status
        .launch_failures
        .as_ref()
        .unwrap_or_else(|| panic!("the status does not say launches fail: {status:#?}"));
    assert!(failing.consecutive >= 1, "{failing:?}");
    assert!(failing.next_attempt_in_ms > 0, "{failing:?}");
    assert!(
        failing.last_reason.contains("exit status: 64") && failing.last_reason.contains(why),
        "the reason names neither the exit status nor the agent's last words: {failing:?}"
    );
    let recorded = status
        .decisions
        .iter()
        .find(|d| d.rules.iter().any(|r| r == "launch-backoff"))
        .expect("a decision held back by the launch backoff");
    assert!(
        recorded.summary.contains("launches failing"),
        "{recorded:#?}"
    );
}

#[tokio::test]
async fn agents_without_their_tls_material_are_launched_again_only_after_a_growing_pause() {
    let state_dir = StateDir::new("storm-tls");
    // The monitor's material, but not the agents'.
    let tls_dir = state_dir.0.join("tls");
    write_tls_dir(&tls_dir);
    std::fs::remove_file(tls_dir.join("agent.pem")).unwrap();
    std::fs::remove_file(tls_dir.join("agent.key")).unwrap();
    let (launched, status) = watch_a_launch_storm(
        &state_dir,
        TlsSource::Dir(tls_dir),
        None,
        Duration::from_secs(8),
    )
    .await;
    eprintln!(
        "figure: agents without TLS material: {launched} launches in 8 s; status: {:?}",
        status.launch_failures
    );
    assert_launches_back_off(launched, &status, "agent.pem");
}

#[tokio::test]
async fn agents_told_a_bad_monitor_address_are_launched_again_only_after_a_growing_pause() {
    let state_dir = StateDir::new("storm-advertise");
    let tls_dir = state_dir.0.join("tls");
    write_tls_dir(&tls_dir);
    let (launched, status) = watch_a_launch_storm(
        &state_dir,
        TlsSource::Dir(tls_dir),
        Some("not an address".to_string()),
        Duration::from_secs(8),
    )
    .await;
    eprintln!(
        "figure: agents told `not an address`: {launched} launches in 8 s; status: {:?}",
        status.launch_failures
    );
    assert_launches_back_off(launched, &status, "not an address");
}

/// The files the local provider set aside in its state directory.
fn set_aside(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join("set-aside"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_counter_at_its_limit_is_set_aside_and_the_fleet_still_launches() {
    let state_dir = StateDir::new("corrupt-counter");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    std::fs::write(state_dir.0.join("next-id"), "18446744073709551615\n").unwrap();
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let aside = set_aside(&state_dir.0);
    assert!(
        aside.iter().any(|name| name.starts_with("next-id")),
        "the bad counter was not set aside: {aside:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_record_with_an_impossible_id_is_set_aside_and_the_daemon_starts() {
    let state_dir = StateDir::new("corrupt-id");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    std::fs::write(
        state_dir.0.join("local-18446744073709551615.instance"),
        "1 1700000000000\n",
    )
    .unwrap();
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let aside = set_aside(&state_dir.0);
    assert!(
        aside
            .iter()
            .any(|name| name.starts_with("local-18446744073709551615.instance")),
        "the impossible record was not set aside: {aside:?}"
    );
    daemon.stop().await;
}

/// Processes started with this state directory's TLS material: the group's agents.
fn agent_processes(state_dir: &Path) -> Vec<i32> {
    let tls_dir = state_dir.join("tls");
    let tls_dir = tls_dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                        args.windows(2)
                            .any(|pair| pair[0] == b"--tls-dir" && pair[1] == tls_dir)
                    }) && alive(*pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_truncated_record_is_set_aside_and_its_agent_is_not_left_behind() {
    let state_dir = StateDir::new("corrupt-record");
    let config = process_config_file(&state_dir.0, 2, 30.0);
    let port = free_port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let mut client = status_client(address);
    let before = wait_status(&mut client, "2 healthy", 2, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let victim = before.instances[0].instance_id.clone();
    let pid = state_dir.pid_of(&victim).expect("a pid");
    sigkill(&daemon);
    daemon.wait().await.unwrap();
    // Only the pid survives of the record.
    std::fs::write(
        state_dir.0.join(format!("{victim}.instance")),
        format!("{pid}"),
    )
    .unwrap();

    daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let mut client = status_client(address);
    let most = std::cell::Cell::new(0);
    let end = Instant::now() + Duration::from_secs(6);
    let after = wait_status(
        &mut client,
        "2 healthy, then 6 s of watching",
        2,
        Duration::from_secs(30),
        |s| {
            most.set(most.get().max(agent_processes(&state_dir.0).len()));
            healthy(s) == 2 && Instant::now() >= end
        },
    )
    .await;
    let most = most.get();
    eprintln!(
        "figure: a truncated record: at most {most} agent processes for a maximum of 2; listed {:?}",
        listed(&after)
    );
    assert!(most <= 2, "{most} agents ran against a maximum of 2");
    let aside = set_aside(&state_dir.0);
    assert!(
        aside
            .iter()
            .any(|name| name.starts_with(&format!("{victim}.instance"))),
        "the truncated record was not set aside: {aside:?}"
    );
    sigterm(&daemon);
    let exit = tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(
        !alive(pid),
        "the agent of the truncated record outlived the daemon"
    );
    let left = agent_processes(&state_dir.0);
    assert!(left.is_empty(), "agents left behind: {left:?}");
}
