//! Faults and hostile input against the whole daemon on the local provider: strangers and a
//! flood of registrations are refused and change nothing, oversized messages are refused before
//! they are parsed, a briefly frozen agent (SIGSTOP) is forgiven, one frozen for good is
//! replaced and not counted twice. A background watcher checks the fleet's bounds throughout.
//! Each test prints its figures (`figure:` lines) for docs/RELIABILITY.md.

use std::time::{Duration, Instant};

use autoscaler_daemon::daemon::DaemonConfig;
use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn register(instance_id: &str, address: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        instance_id: instance_id.to_string(),
        address: address.to_string(),
        agent_version: "test".to_string(),
    }
}

fn listed_ids(status: &v1::GetStatusResponse) -> Vec<String> {
    let mut ids: Vec<String> = status
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn strangers_a_flood_and_oversized_messages_are_refused_and_change_nothing() {
    let state_dir = StateDir::new("strangers");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    let before = wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut monitor = monitor_client(daemon.address, Some(TOKEN));

    // A stranger with the right token but an instance the provider does not list.
    let started = Instant::now();
    let refused = monitor
        .register(register("i-0123456789abcdef0", "127.0.0.1:9"))
        .await
        .expect_err("a stranger is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("not an instance of this group"),
        "{refused:?}"
    );
    eprintln!(
        "figure: stranger refused after {:.2} s (waits at most 1.5 s for the next list)",
        started.elapsed().as_secs_f64()
    );

    // A flood: 2,000 registrations of unknown instances at once.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..2_000 {
        let mut monitor = monitor.clone();
        calls.spawn(async move {
            monitor
                .register(register(&format!("i-flood{n:012}"), "127.0.0.1:9"))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        });
    }
    let mut denied = 0;
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Err(tonic::Code::PermissionDenied) => denied += 1,
            other => panic!("a flooding registration got {other:?}"),
        }
    }
    assert_eq!(denied, 2_000);
    eprintln!(
        "figure: 2000 concurrent stranger registrations all refused in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // An oversized message: refused before it is decoded.
    let huge = monitor
        .register(register(&"i".repeat(1 << 20), "127.0.0.1:9"))
        .await
        .expect_err("a 1 MiB registration is refused");
    assert_eq!(huge.code(), tonic::Code::ResourceExhausted, "{huge:?}");
    eprintln!(
        "figure: a 1 MiB registration refused with {:?}",
        huge.code()
    );
    // Out-of-range fields: refused at the edge.
    for (request, words) in [
        (register("", "127.0.0.1:9"), "instance_id is empty"),
        (register("i-x", "127.0.0.1:0"), "port"),
        (register("i-x", "no port"), "no port"),
        (
            register(&"x".repeat(129), "127.0.0.1:9"),
            "at most 128 are accepted",
        ),
    ] {
        let refused = monitor.register(request).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains(words), "{refused:?}");
    }

    // Nothing changed: the same two instances, still healthy, and the daemon still decides.
    let after = wait_status(
        &mut client,
        "the same 2 healthy after the flood",
        4,
        Duration::from_secs(10),
        |s| healthy(s) == 2,
    )
    .await;
    assert_eq!(listed_ids(&after), listed_ids(&before));
    assert!(
        after
            .decisions
            .iter()
            .all(|d| d.launched.is_empty()
                || before.decisions.iter().any(|b| b.sequence == d.sequence)),
        "something was launched: {:#?}",
        after.decisions
    );
    invariant.check();
    daemon.stop().await;
}

/// The fast config, with a higher unhealthy threshold so that a brief freeze stays below it
/// however busy the machine is.
fn freeze_config(state_dir: &std::path::Path) -> DaemonConfig {
    let mut config = fast_daemon_config(state_dir);
    config.monitor.unhealthy_after = 10;
    config
}

#[tokio::test]
async fn a_brief_freeze_is_forgiven_and_a_frozen_agent_is_replaced_once() {
    let state_dir = StateDir::new("freeze");
    let config = freeze_config(&state_dir.0);
    let poll = config.monitor.poll_interval_ms;
    let threshold = config.monitor.unhealthy_after;
    let daemon = RunningDaemon::start(config).await;
    let mut client = status_client(daemon.address);
    let before = wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let ids = listed_ids(&before);

    // A freeze of 300 ms (below the 10 x 200 ms threshold): suspect at most, never replaced.
    let pid = Pid::from_raw(state_dir.pid_of(&ids[0]).expect("a pid"));
    kill(pid, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    let after = wait_status(
        &mut client,
        "both healthy again",
        4,
        Duration::from_secs(10),
        |s| healthy(s) == 2,
    )
    .await;
    assert_eq!(
        listed_ids(&after),
        ids,
        "a brief freeze replaced an instance"
    );

    // Frozen for good: marked unhealthy after the threshold of missed polls, then replaced.
    let victim = ids[1].clone();
    let pid = Pid::from_raw(state_dir.pid_of(&victim).expect("a pid"));
    let frozen = Instant::now();
    kill(pid, Signal::SIGSTOP).unwrap();
    let status = wait_status(
        &mut client,
        "the frozen agent replaced and 2 healthy",
        4,
        Duration::from_secs(60),
        |s| healthy(s) == 2 && s.instances.iter().all(|i| i.instance_id != victim),
    )
    .await;
    let recovered = frozen.elapsed();
    let replacing = status
        .decisions
        .iter()
        .find(|d| d.replaced.iter().any(|r| r.starts_with(&victim)))
        .expect("a decision that replaced the frozen agent");
    assert!(
        replacing.replaced[0].contains("unhealthy per the monitor"),
        "{replacing:#?}"
    );
    assert_eq!(
        replacing.launched.len(),
        1,
        "one replacement: {replacing:#?}"
    );
    let launches: usize = status.decisions.iter().map(|d| d.launched.len()).sum();
    assert_eq!(
        launches, 3,
        "2 at start and 1 replacement: {:#?}",
        status.decisions
    );
    eprintln!(
        "figure: frozen agent replaced and the fleet healthy again {:.1} s after SIGSTOP \
         (threshold {threshold} x {poll} ms polls)",
        recovered.as_secs_f64()
    );
    // The frozen process does not come back: the provider killed it (SIGTERM stays pending on
    // a stopped process; SIGKILL after the grace does not).
    eventually(
        "the frozen process gone",
        Duration::from_secs(15),
        || async { !alive(pid.as_raw()) },
    )
    .await;
    let later = client
        .get_status(v1::GetStatusRequest { decisions_after: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.instances.len(), 2, "{:#?}", later.instances);
    assert!(later.instances.iter().all(|i| i.instance_id != victim));
    invariant.check();
    daemon.stop().await;
}
