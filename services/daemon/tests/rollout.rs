//! Rolling out a new version on the local provider, end to end through the Operator service:
//! every instance carries its launch specification version (in the Status API), an instance
//! refresh moves the fleet to a new version launching before it terminates, a version whose
//! agents die at start is rolled back by itself, and bad requests are refused by name with
//! nothing changed.

use std::time::Duration;

use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;

fn versions(status: &v1::GetStatusResponse) -> Vec<String> {
    status
        .instances
        .iter()
        .filter(|i| i.listed())
        .map(|i| i.version.clone())
        .collect()
}

fn spec(agent_args: &[&str]) -> v1::LaunchSpec {
    v1::LaunchSpec {
        agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        ..v1::LaunchSpec::default()
    }
}

/// A refresh to `agent_args` that launches before it terminates (150 %), counting a new
/// instance after 1 s.
fn surge(agent_args: &[&str]) -> v1::StartInstanceRefreshRequest {
    v1::StartInstanceRefreshRequest {
        spec: Some(spec(agent_args)),
        preferences: Some(v1::RefreshPreferences {
            max_healthy_percentage: Some(150),
            instance_warmup_secs: Some(1),
            ..v1::RefreshPreferences::default()
        }),
    }
}

fn refresh_status(status: &v1::GetStatusResponse) -> &str {
    status.refresh.as_ref().map_or("", |r| r.status.as_str())
}

#[tokio::test]
async fn a_refresh_moves_every_instance_to_the_new_version_and_a_bad_one_is_rolled_back() {
    let state_dir = StateDir::new("rollout");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let invariant = FleetInvariant::watch(daemon.address, 2, 3);
    let mut client = status_client(daemon.address);
    let mut operator = operator_client(daemon.address);
    let status = wait_status(
        &mut client,
        "the minimum of 2 healthy",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;
    let first = status.launch_version.clone();
    assert!(first.starts_with("v1-"), "{first:?}");
    assert_eq!(versions(&status), vec![first.clone(); 2]);

    // Bad requests: refused by name, nothing changed.
    let refused = operator
        .update_launch_spec(v1::UpdateLaunchSpecRequest {
            spec: Some(v1::LaunchSpec {
                image_id: Some("ami-12345678".into()),
                ..v1::LaunchSpec::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("launch_spec.image_id"),
        "{refused}"
    );
    let refused = operator
        .update_launch_spec(v1::UpdateLaunchSpecRequest {
            spec: Some(v1::LaunchSpec {
                user_data: Some("#!/bin/sh\n".into()),
                ..v1::LaunchSpec::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("launch_spec.user_data"),
        "{refused}"
    );
    let refused = operator
        .start_instance_refresh(v1::StartInstanceRefreshRequest {
            spec: Some(spec(&["--reregister-after-ms", "5000"])),
            preferences: Some(v1::RefreshPreferences {
                min_healthy_percentage: Some(101),
                ..v1::RefreshPreferences::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("refresh.min_healthy_percentage"),
        "{refused}"
    );
    let refused = operator
        .cancel_instance_refresh(v1::CancelInstanceRefreshRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let described = operator
        .describe_instance_refresh(v1::DescribeInstanceRefreshRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        described.versions.len(),
        1,
        "nothing changed: {described:?}"
    );
    assert_eq!(described.refresh, None);

    // A refresh to a new version, launching before it terminates (150 %).
    let started = operator
        .start_instance_refresh(surge(&["--reregister-after-ms", "5000"]))
        .await
        .unwrap()
        .into_inner()
        .refresh
        .unwrap();
    let second = started.target.clone();
    assert!(second.starts_with("v2-"), "{started:?}");
    assert_eq!(started.previous, first);
    let again = operator
        .start_instance_refresh(v1::StartInstanceRefreshRequest::default())
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");
    let status = wait_status(
        &mut client,
        "the refresh succeeded",
        3,
        Duration::from_secs(90),
        |s| refresh_status(s) == "successful" && healthy(s) == 2,
    )
    .await;
    assert_eq!(versions(&status), vec![second.clone(); 2]);
    assert_eq!(status.launch_version, second);
    assert_eq!(status.refresh.as_ref().unwrap().percent_complete, 100);
    let replaced: Vec<&v1::DecisionRecord> = status
        .decisions
        .iter()
        .filter(|d| d.summary.contains("instance refresh 1"))
        .collect();
    assert!(!replaced.is_empty(), "the records say the refresh replaced");

    // A version whose agents die at start: rolled back by itself to the second, the two in
    // service throughout (launch before terminate; at 100 % a group of 2 would go down to 1
    // at a time, as EC2's does).
    operator
        .start_instance_refresh(surge(&["--no-such-flag"]))
        .await
        .unwrap();
    let status = wait_status(
        &mut client,
        "the bad version rolled back",
        3,
        Duration::from_secs(120),
        |s| refresh_status(s) == "rolled-back" && healthy(s) == 2,
    )
    .await;
    let refresh = status.refresh.as_ref().unwrap();
    assert!(refresh.reason.contains("failed"), "{refresh:?}");
    assert_eq!(refresh.target, second, "back on the second version");
    assert_eq!(status.launch_version, second);
    assert_eq!(versions(&status), vec![second.clone(); 2]);
    let said = status
        .decisions
        .iter()
        .flat_map(|d| &d.outcome)
        .any(|o| o.contains(&format!("launch specification {second} is current again")));
    assert!(said, "the record says the version went back");

    invariant.check();
    daemon.stop().await;
}

/// Waits until the daemon at `port` reports a refresh for which `condition` holds.
async fn refresh_until(
    port: u16,
    what: &str,
    condition: impl Fn(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let mut client = status_client(loopback(port));
    wait_status(&mut client, what, 3, Duration::from_secs(90), condition).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_in_the_middle_of_a_refresh_is_followed_by_one_that_resumes_it() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let state_dir = StateDir::new("rollout-failover");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_daemon_process(&state_dir.0, port_a, &config);
    refresh_until(port_a, "a leads 2", |s| healthy(s) == 2).await;
    let mut operator = operator_client(loopback(port_a));
    // Paused at 50 % (one of two replaced) for long enough to change leaders.
    let started = operator
        .start_instance_refresh(v1::StartInstanceRefreshRequest {
            spec: Some(spec(&["--log-format", "json"])),
            preferences: Some(v1::RefreshPreferences {
                instance_warmup_secs: Some(1),
                checkpoints: vec![50],
                checkpoint_delay_secs: Some(12),
                ..v1::RefreshPreferences::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .refresh
        .unwrap();
    refresh_until(port_a, "a pauses at the checkpoint", |s| {
        refresh_status(s) == "paused"
    })
    .await;
    // A policy set at run time goes to the store with the rest of the memory.
    let policy = "kind = \"target-tracking\"\ntarget = 45.0\ntolerance = 0.2";
    operator
        .update_group(v1::UpdateGroupRequest {
            policy_toml: Some(policy.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut b = spawn_standby_process(&state_dir.0, port_b, None, &config).await;
    kill(Pid::from_raw(a.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    let _ = a.wait().await;
    // Its memory, from the store: the same refresh, still paused, half done once the agents
    // have registered with it.
    refresh_until(port_b, "b shows the refresh paused half way", |s| {
        s.refresh
            .as_ref()
            .is_some_and(|r| r.id == started.id && r.status == "paused" && r.percent_complete == 50)
    })
    .await;
    let done = refresh_until(port_b, "b ends the refresh", |s| {
        refresh_status(s) == "successful" && healthy(s) == 2 && listed(s).len() == 2
    })
    .await;
    assert_eq!(versions(&done), vec![started.target.clone(); 2]);
    assert_eq!(
        done.operator_policy_toml, policy,
        "the next leader has the policy"
    );
    let launched: u64 = std::fs::read_to_string(state_dir.0.join("next-id"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
        - 1;
    assert_eq!(launched, 4, "2 at first and 2 replacements: nothing twice");
    kill(Pid::from_raw(b.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), b.wait()).await;
}

#[tokio::test]
async fn a_protected_instance_is_left_by_a_refresh_and_an_unknown_one_is_refused() {
    let state_dir = StateDir::new("rollout-protect");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    let mut operator = operator_client(daemon.address);
    let status = wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let kept = status.instances[0].instance_id.clone();
    let first = status.launch_version.clone();
    let refused = operator
        .set_instance_protection(v1::SetInstanceProtectionRequest {
            instance_ids: vec![kept.clone(), "local-9999".into()],
            protected_from_scale_in: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("local-9999"), "{refused}");
    let protected = operator
        .set_instance_protection(v1::SetInstanceProtectionRequest {
            instance_ids: vec![kept.clone()],
            protected_from_scale_in: true,
        })
        .await
        .unwrap()
        .into_inner()
        .protected;
    assert_eq!(
        protected,
        vec![kept.clone()],
        "only the one named, nothing from the refused call"
    );
    operator
        .start_instance_refresh(surge(&["--reregister-after-ms", "5000"]))
        .await
        .unwrap();
    let done = wait_status(
        &mut client,
        "the refresh succeeded around the protected one",
        3,
        Duration::from_secs(60),
        |s| refresh_status(s) == "successful" && healthy(s) == 2 && listed(s).len() == 2,
    )
    .await;
    let protected = done
        .instances
        .iter()
        .find(|i| i.instance_id == kept)
        .expect("the protected instance stays");
    assert!(protected.protected_from_scale_in);
    assert_eq!(protected.version, first);
    let other = done
        .instances
        .iter()
        .find(|i| i.instance_id != kept)
        .unwrap();
    assert_eq!(other.version, done.launch_version);
    assert_ne!(other.version, first);
    daemon.stop().await;
}

#[tokio::test]
async fn the_bounds_the_policy_and_the_desired_capacity_change_at_run_time_and_bad_values_change_nothing()
 {
    let state_dir = StateDir::new("rollout-update");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    let mut operator = operator_client(daemon.address);
    wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    for (request, field) in [
        (
            v1::UpdateGroupRequest {
                min_instances: Some(5),
                ..Default::default()
            },
            "min_instances",
        ),
        (
            v1::UpdateGroupRequest {
                desired_capacity: Some(9),
                ..Default::default()
            },
            "desired_capacity",
        ),
        (
            v1::UpdateGroupRequest {
                policy_toml: Some(
                    "kind = \"target-tracking\"\ntarget = 150.0\ntolerance = 0.1".into(),
                ),
                ..Default::default()
            },
            "controller.policy.target",
        ),
        (
            v1::UpdateGroupRequest {
                policy_toml: Some("kind = \"guess\"".into()),
                // Nothing of a refused request is applied, the good parts included.
                min_instances: Some(3),
                ..Default::default()
            },
            "policy_toml",
        ),
    ] {
        let refused = operator.update_group(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains(field), "{refused}");
    }
    let status = client
        .get_status(v1::GetStatusRequest { decisions_after: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.min_instances, status.max_instances),
        (2, 4),
        "nothing changed"
    );

    // A floor of 3: the group grows to it, and the status shows the new bounds.
    let bounds = operator
        .update_group(v1::UpdateGroupRequest {
            min_instances: Some(3),
            max_instances: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((bounds.min_instances, bounds.max_instances), (3, 3));
    wait_status(&mut client, "3 healthy", 3, Duration::from_secs(30), |s| {
        healthy(s) == 3 && (s.min_instances, s.max_instances) == (3, 3)
    })
    .await;

    // Back to [2, 4] with a desired capacity of 4: launched at once, said by rule `operator`.
    operator
        .update_group(v1::UpdateGroupRequest {
            min_instances: Some(2),
            max_instances: Some(4),
            desired_capacity: Some(4),
            policy_toml: None,
        })
        .await
        .unwrap();
    let status = wait_status(&mut client, "4 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 4
    })
    .await;
    assert!(
        status
            .decisions
            .iter()
            .any(|d| d.rules.iter().any(|r| r == "operator")),
        "{:#?}",
        status.decisions
    );

    // Back at 2 (30 % against a target of 50 %), then a new policy at run time: a target of
    // 10 % wants 6 for the same load, and the group grows to its maximum of 4.
    wait_status(&mut client, "back to 2", 4, Duration::from_secs(60), |s| {
        s.instances.iter().filter(|i| i.listed()).count() == 2 && healthy(s) == 2
    })
    .await;
    let settings = operator
        .update_group(v1::UpdateGroupRequest {
            policy_toml: Some("kind = \"target-tracking\"\ntarget = 10.0\ntolerance = 0.1".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        settings.policy_toml,
        "kind = \"target-tracking\"\ntarget = 10.0\ntolerance = 0.1"
    );
    let status = wait_status(
        &mut client,
        "4 healthy under the new policy",
        4,
        Duration::from_secs(60),
        |s| healthy(s) == 4,
    )
    .await;
    assert_eq!(status.operator_policy_toml, settings.policy_toml);
    let said: Vec<&String> = status.decisions.iter().flat_map(|d| &d.outcome).collect();
    assert!(
        said.iter().any(|l| l.contains("set by an operator")
            && l.ends_with("policy kind = \"target-tracking\", target = 10.0, tolerance = 0.1")),
        "{said:#?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_config_file_again_and_a_bad_one_changes_nothing() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let state_dir = StateDir::new("rollout-sighup");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let port = free_port();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let hangup = |daemon: &tokio::process::Child| {
        kill(Pid::from_raw(daemon.id().unwrap() as i32), Signal::SIGHUP).unwrap()
    };
    refresh_until(port, "2 healthy", |s| healthy(s) == 2).await;
    let original = std::fs::read_to_string(&config).unwrap();
    assert!(original.contains("min_instances = 2"));
    std::fs::write(
        &config,
        original.replace("min_instances = 2", "min_instances = 3"),
    )
    .unwrap();
    hangup(&daemon);
    refresh_until(port, "3 healthy under the new floor", |s| {
        healthy(s) == 3 && s.min_instances == 3
    })
    .await;
    // A file that does not check: said in the log, nothing changed, the daemon runs on.
    std::fs::write(
        &config,
        original.replace("min_instances = 2", "min_instances = 9"),
    )
    .unwrap();
    hangup(&daemon);
    std::fs::write(
        &config,
        original.replace("max_instances = 4", "max_instances = 3"),
    )
    .unwrap();
    hangup(&daemon);
    let status = refresh_until(port, "the bounds [2, 3] of the last good file", |s| {
        (s.min_instances, s.max_instances) == (2, 3)
    })
    .await;
    assert!(
        status
            .decisions
            .iter()
            .flat_map(|d| &d.outcome)
            .any(|o| o.contains("the config file read again")),
        "the record says it"
    );
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon runs on");
    kill(Pid::from_raw(daemon.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await;
}
