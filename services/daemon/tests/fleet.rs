//! End-to-end tests of the controller on the local provider: scale out under high load, scale in
//! under low load, a killed agent replaced, a restarted daemon (monitor and controller) adopting
//! its running instances without duplicates or replacements, an invalid config refused, JSON
//! logs, a scheduled window raising the floor. The fleet stays within its bounds throughout (a
//! background watcher, `FleetInvariant`).

use std::collections::BTreeSet;
use std::time::Duration;

use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;

#[tokio::test]
async fn scales_out_under_high_load_and_in_under_low_load() {
    let state_dir = StateDir::new("scale");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut client = status_client(daemon.address);
    wait_status(
        &mut client,
        "the minimum of 2 healthy",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;

    let load = LoadDriver::start(daemon.address, 90.0);
    let status = wait_status(
        &mut client,
        "scaled out to the maximum of 4",
        4,
        Duration::from_secs(60),
        |s| healthy(s) == 4,
    )
    .await;
    let launched: usize = status.decisions.iter().map(|d| d.launched.len()).sum();
    assert_eq!(
        launched, 4,
        "2 at start and 2 for the load: {:#?}",
        status.decisions
    );

    load.set(5.0);
    let status = wait_status(
        &mut client,
        "scaled in to the minimum of 2",
        4,
        Duration::from_secs(60),
        |s| s.instances.len() == 2 && healthy(s) == 2,
    )
    .await;
    let scale_ins: Vec<&v1::DecisionRecord> = status
        .decisions
        .iter()
        .filter(|d| !d.terminated.is_empty())
        .collect();
    assert!(!scale_ins.is_empty());
    assert!(
        scale_ins.iter().all(|d| d.summary.contains("scale in")),
        "{scale_ins:#?}"
    );
    drop(load);

    let pids = state_dir.pids();
    assert_eq!(pids.len(), 2);
    invariant.check();
    daemon.stop().await;
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the daemon");
    }
}

#[tokio::test]
async fn a_killed_agent_is_replaced() {
    let state_dir = StateDir::new("replace");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut client = status_client(daemon.address);
    let status = wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let victim = status.instances[0].instance_id.clone();
    let pid = state_dir.pid_of(&victim).expect("a pid for the victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let status = wait_status(
        &mut client,
        "the victim replaced and 2 healthy again",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 2 && s.instances.iter().all(|i| i.instance_id != victim),
    )
    .await;
    let replacing = status
        .decisions
        .iter()
        .find(|d| d.replaced.iter().any(|r| r.starts_with(&victim)))
        .expect("a decision that replaced the victim");
    assert_eq!(replacing.terminated, [victim]);
    assert_eq!(replacing.launched.len(), 1, "{replacing:#?}");
    assert!(replacing.rules.contains(&"health".to_string()));
    invariant.check();
    daemon.stop().await;
}

#[tokio::test]
async fn a_restarted_daemon_adopts_its_running_instances_without_duplicates() {
    let state_dir = StateDir::new("adopt");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    let config_path = state_dir.0.join("config.toml");
    std::fs::write(
        &config_path,
        "[monitor]\npoll_interval_ms = 200\npoll_timeout_ms = 150\n[controller]\nevaluation_interval_ms = 250\nregistration_grace_secs = 5\nwarmup_secs = 3\n[provider]\nkind = \"local\"\nagent_args = [\"--reregister-after-ms\", \"1000\"]\n",
    )
    .unwrap();
    let port = free_port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut first = spawn_daemon_process(&state_dir.0, port, &config_path);
    let mut client = status_client(address);
    let before = wait_status(
        &mut client,
        "2 healthy under the first daemon",
        5,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;
    let ids: BTreeSet<String> = before
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();

    // A crash: the daemon dies at once, its agents live on.
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let mut second = spawn_daemon_process(&state_dir.0, port, &config_path);
    let invariant = FleetInvariant::watch(address, 2, 5);
    let mut client = status_client(address);
    let after = wait_status(
        &mut client,
        "the same 2 healthy under the second daemon",
        5,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;
    let adopted: BTreeSet<String> = after
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(adopted, ids);
    // Past the registration grace, still nothing launched or replaced.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = client
        .get_status(v1::GetStatusRequest { decisions_after: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        later
            .decisions
            .iter()
            .all(|d| d.launched.is_empty() && d.terminated.is_empty()),
        "the second daemon acted: {:#?}",
        later.decisions
    );
    assert_eq!(later.instances.len(), 2);
    invariant.check();

    let pids = state_dir.pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the daemon");
    }
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_the_field_named() {
    let state_dir = StateDir::new("invalid");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    let config_path = state_dir.0.join("bad.toml");
    std::fs::write(
        &config_path,
        "[controller]\nmin_instances = 3\nmax_instances = 2\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(agent_binary().with_file_name("autoscaler-monitor"))
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0"])
        .env("AUTOSCALER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("controller.min_instances"), "{stderr}");
    assert!(
        state_dir.pids().is_empty(),
        "an invalid config launched something"
    );
}

#[tokio::test]
async fn logs_are_json_on_request_with_one_event_per_decision() {
    let state_dir = StateDir::new("json-logs");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    write_tls_dir(&state_dir.0.join("tls"));
    let port = free_port();
    let daemon = tokio::process::Command::new(agent_binary().with_file_name("autoscaler-monitor"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .arg("--state-dir")
        .arg(&state_dir.0)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut client = status_client(format!("127.0.0.1:{port}").parse().unwrap());
    wait_status(&mut client, "2 healthy", 5, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    // A stranger's registration is refused, and the refusal logged.
    let refused = monitor_client(format!("127.0.0.1:{port}").parse().unwrap(), Some(TOKEN))
        .register(v1::RegisterRequest {
            instance_id: "i-stranger".into(),
            address: "127.0.0.1:9".into(),
            agent_version: "test".into(),
        })
        .await
        .expect_err("a stranger is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), daemon.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let decision = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("decision: launch 2"))
        })
        .expect("one event for the first decision");
    assert_eq!(decision["fields"]["desired"], 2);
    assert_eq!(decision["fields"]["current"], 0);
    // Lists are JSON arrays of the names the API and /metrics use.
    assert_eq!(
        decision["fields"]["rules"],
        serde_json::json!(["bounds"]),
        "{decision}"
    );
    assert!(decision["fields"]["missing"].is_array(), "{decision}");
    let outcome = decision["fields"]["outcome"]
        .as_array()
        .expect("outcome is an array");
    assert!(
        outcome
            .iter()
            .any(|o| o.as_str().is_some_and(|o| o.starts_with("launched"))),
        "{decision}"
    );
    assert_eq!(decision["fields"]["in_service"], 0, "{decision}");
    assert_eq!(decision["fields"]["without_metric"], 0, "{decision}");
    let refusal = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("registration refused"))
        })
        .expect("the stranger's refusal logged");
    assert_eq!(refusal["fields"]["instance_id"], "i-stranger", "{refusal}");
    assert_eq!(refusal["level"], "WARN");
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
}

#[tokio::test]
async fn a_scheduled_window_raises_the_floor_and_the_status_says_which() {
    let state_dir = StateDir::new("schedule");
    let mut config = fast_daemon_config(&state_dir.0);
    // A window that starts every minute and lasts an hour holds now, whatever the time.
    config.controller.schedule = vec![autoscaler_policy::schedule::WindowConfig {
        name: "always".to_string(),
        cron: "* * * * *".to_string(),
        time_zone: "Europe/Paris".to_string(),
        duration_secs: 3_600,
        min_instances: 3,
        max_instances: None,
    }];
    config.validate().expect("a valid schedule");
    let daemon = RunningDaemon::start(config).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 4);
    let mut client = status_client(daemon.address);
    let status = wait_status(
        &mut client,
        "3 healthy: the window's floor",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 3,
    )
    .await;
    let schedule = status
        .schedule
        .clone()
        .expect("the status shows the schedule");
    assert_eq!((schedule.min_instances, schedule.max_instances), (3, 4));
    assert_eq!(schedule.active.len(), 1, "{schedule:?}");
    assert_eq!(schedule.active[0].name, "always");
    assert!(
        schedule.next.is_some(),
        "the next start is shown: {schedule:?}"
    );
    assert!(
        status
            .decisions
            .iter()
            .any(|d| d.rules.iter().any(|r| r == "schedule")),
        "a decision names the schedule rule: {:#?}",
        status.decisions
    );
    let (code, body) = http_get(daemon.http, "/api/status").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"schedule\":{\"active\":[{") && body.contains("\"name\":\"always\""),
        "{body}"
    );
    // A window that starts again every minute holds until an hour after its latest start.
    let holding = &schedule.active[0];
    let latest_start = holding.ends_at_ms - 3_600_000;
    let now = autoscaler_policy::time::now_ms();
    assert!(
        latest_start <= now && now - latest_start <= 60_000,
        "ends an hour after its latest start: {holding:?} at {now}"
    );
    invariant.check();
    daemon.stop().await;
}
