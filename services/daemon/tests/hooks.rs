//! Lifecycle hooks end to end on the local provider: an agent's launch hook holds its instance
//! in Pending:Wait (not in service) until it exits, its termination hook runs after the
//! removal is decided and before the termination (Terminating:Wait), the record keeps what
//! each hook did with its output's tail, and a version whose launch hook abandons is rolled
//! back as failed launches.

use std::time::{Duration, Instant};

use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;

/// Every decision outcome line the status shows, in order, kept across reads.
struct Outcomes {
    lines: Vec<String>,
    after: u64,
}

impl Outcomes {
    fn new() -> Outcomes {
        Outcomes {
            lines: Vec::new(),
            after: 0,
        }
    }

    /// Reads the status until `condition` holds of the status and the outcomes so far.
    async fn wait(
        &mut self,
        client: &mut Status,
        what: &str,
        deadline: Duration,
        condition: impl Fn(&v1::GetStatusResponse, &[String]) -> bool,
    ) -> v1::GetStatusResponse {
        let give_up = Instant::now() + deadline;
        loop {
            if let Ok(status) = client
                .get_status(v1::GetStatusRequest {
                    decisions_after: self.after,
                })
                .await
            {
                let status = status.into_inner();
                for decision in &status.decisions {
                    if decision.sequence > self.after {
                        self.lines.extend(decision.outcome.iter().cloned());
                        self.lines
                            .extend(decision.replaced.iter().map(|r| format!("replacing {r}")));
                        self.after = decision.sequence;
                    }
                }
                if condition(&status, &self.lines) {
                    return status;
                }
                assert!(
                    Instant::now() < give_up,
                    "timed out after {deadline:?} waiting until {what}; instances: {:#?}\noutcomes:\n{}",
                    status.instances,
                    self.lines.join("\n")
                );
            }
            assert!(Instant::now() < give_up, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn position(&self, pattern: impl Fn(&str) -> bool) -> Option<usize> {
        self.lines.iter().position(|l| pattern(l))
    }
}

fn hooked_config(
    state_dir: &std::path::Path,
    hooks: &[&str],
) -> autoscaler_daemon::daemon::DaemonConfig {
    let mut config = fast_daemon_config(state_dir);
    let autoscaler_daemon::daemon::ProviderSection::Local(local) = &mut config.provider else {
        unreachable!("the test config is local")
    };
    local.agent_args.extend(hooks.iter().map(|a| a.to_string()));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launch_hook_holds_an_instance_out_of_service_and_the_termination_hook_runs_before_the_termination()
 {
    let state_dir = StateDir::new("hooks");
    let config = hooked_config(
        &state_dir.0,
        &[
            "--launch-hook",
            "echo warming $AUTOSCALER_INSTANCE_ID; sleep 2; echo warm",
            "--termination-hook",
            "echo flushing for $AUTOSCALER_LIFECYCLE_TRANSITION; sleep 1; echo flushed",
        ],
    );
    let daemon = RunningDaemon::start(config).await;
    let mut client = status_client(daemon.address);
    let mut operator = operator_client(daemon.address);
    let mut outcomes = Outcomes::new();

    // Pending:Wait shows while the launch hook runs, and such an instance is not healthy in
    // service: it reports no load.
    let waiting = outcomes
        .wait(
            &mut client,
            "an instance in Pending:Wait",
            Duration::from_secs(30),
            |s, _| {
                s.instances
                    .iter()
                    .any(|i| i.lifecycle_state == "Pending:Wait")
            },
        )
        .await;
    for instance in waiting
        .instances
        .iter()
        .filter(|i| i.lifecycle_state == "Pending:Wait")
    {
        assert_eq!(instance.load_percent, None, "{instance:?}");
    }
    let status = outcomes
        .wait(
            &mut client,
            "2 in service after their launch hooks, and the hooks' ends recorded",
            Duration::from_secs(30),
            |s, lines| {
                healthy(s) == 2
                    && s.instances
                        .iter()
                        .filter(|i| i.lifecycle_state == "InService" && i.load_percent.is_some())
                        .count()
                        == 2
                    && lines
                        .iter()
                        .filter(|l| l.contains(": launch hook exited 0"))
                        .count()
                        == 2
            },
        )
        .await;
    let instance = &status.instances[0];
    assert!(
        instance
            .hook_summary
            .starts_with("launch hook exited 0 after")
            && instance.hook_summary.ends_with(": continue"),
        "{instance:?}"
    );
    assert_eq!(
        instance.hook_output_tail,
        format!("warming {}\nwarm", instance.instance_id)
    );
    let id = instance.instance_id.clone();
    let held = outcomes
        .position(|l| l == format!("{id}: Pending:Wait, its launch hook runs"))
        .expect("Pending:Wait recorded");
    let ended = outcomes
        .position(|l| {
            l.starts_with(&format!("{id}: launch hook exited 0 after"))
                && l.ends_with(&format!("output: warming {id} | warm"))
        })
        .unwrap_or_else(|| panic!("the hook's end recorded: {:#?}", outcomes.lines));
    assert!(held < ended);

    // One more, then back to 2: the scale-in waits on the termination hook.
    operator
        .update_group(v1::UpdateGroupRequest {
            desired_capacity: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    outcomes
        .wait(
            &mut client,
            "3 in service",
            Duration::from_secs(30),
            |s, _| healthy(s) == 3,
        )
        .await;
    operator
        .update_group(v1::UpdateGroupRequest {
            min_instances: Some(2),
            max_instances: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = outcomes
        .wait(
            &mut client,
            "scaled in after the termination hook",
            Duration::from_secs(30),
            |s, lines| {
                healthy(s) == 2
                    && s.instances.iter().filter(|i| i.listed()).count() == 2
                    && lines.iter().any(|l| l.starts_with("scaled in: terminated"))
            },
        )
        .await;
    let gone = outcomes.lines[outcomes
        .position(|l| l.starts_with("scaled in: terminated"))
        .unwrap()]
    .trim_start_matches("scaled in: terminated ")
    .to_string();
    assert!(!status.instances.iter().any(|i| i.instance_id == gone));
    let waited = outcomes
        .position(|l| {
            l.starts_with(&format!(
                "{gone}: Terminating:Wait, its termination hook runs"
            ))
        })
        .unwrap_or_else(|| panic!("Terminating:Wait recorded: {:#?}", outcomes.lines));
    let hooked = outcomes
        .position(|l| {
            l.starts_with(&format!("{gone}: termination hook exited 0 after"))
                && l.ends_with("output: flushing for termination | flushed")
        })
        .unwrap_or_else(|| panic!("the termination hook's end recorded: {:#?}", outcomes.lines));
    let terminated = outcomes
        .position(|l| l == format!("scaled in: terminated {gone}"))
        .unwrap();
    assert!(
        waited < hooked && hooked < terminated,
        "wait, hook, then terminate: {:#?}",
        outcomes.lines
    );
    daemon.stop().await;
}

/// A refresh to `agent_args`, counting a new instance 1 s after it is in service.
fn refresh_to(agent_args: &[&str]) -> v1::StartInstanceRefreshRequest {
    v1::StartInstanceRefreshRequest {
        spec: Some(v1::LaunchSpec {
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            ..v1::LaunchSpec::default()
        }),
        preferences: Some(v1::RefreshPreferences {
            instance_warmup_secs: Some(1),
            ..v1::RefreshPreferences::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_past_its_timeout_takes_the_default_and_a_version_whose_launch_hook_abandons_is_rolled_back()
 {
    let state_dir = StateDir::new("hooks-abandon");
    // Hooks time out after 1 s, and then continue.
    let config = hooked_config(
        &state_dir.0,
        &["--hook-timeout", "1", "--hook-default", "continue"],
    );
    let daemon = RunningDaemon::start(config).await;
    let mut client = status_client(daemon.address);
    let mut operator = operator_client(daemon.address);
    let mut outcomes = Outcomes::new();
    outcomes
        .wait(
            &mut client,
            "2 in service",
            Duration::from_secs(30),
            |s, _| healthy(s) == 2,
        )
        .await;

    // A version whose launch hook never ends: killed after 1 s, and in service by default.
    operator
        .start_instance_refresh(refresh_to(&["--launch-hook", "echo stuck; sleep 600"]))
        .await
        .unwrap();
    let status = outcomes
        .wait(
            &mut client,
            "the refresh to the stuck hook succeeded",
            Duration::from_secs(60),
            |s, _| s.refresh.as_ref().is_some_and(|r| r.status == "successful") && healthy(s) == 2,
        )
        .await;
    let instance = status.instances.iter().find(|i| i.listed()).unwrap();
    assert!(
        instance
            .hook_summary
            .contains("launch hook did not finish within 1 s (killed)")
            && instance.hook_summary.ends_with(": continue"),
        "{instance:?}"
    );
    assert_eq!(instance.hook_output_tail, "stuck");

    // A version whose launch hook fails: abandoned launches, rolled back by themselves.
    operator
        .start_instance_refresh(refresh_to(&[
            "--launch-hook",
            "echo cannot fetch the data >&2; exit 2",
        ]))
        .await
        .unwrap();
    let status = outcomes
        .wait(
            &mut client,
            "the refresh rolled back",
            Duration::from_secs(120),
            |s, _| {
                s.refresh
                    .as_ref()
                    .is_some_and(|r| r.status == "rolled-back")
                    && healthy(s) == 2
            },
        )
        .await;
    let refresh = status.refresh.unwrap();
    assert!(refresh.reason.contains("launch hook"), "{refresh:?}");
    assert!(
        outcomes
            .lines
            .iter()
            .any(|l| l.contains("launch hook ended with exit status: 2")
                && l.ends_with("output: cannot fetch the data")),
        "{:#?}",
        outcomes.lines
    );
    assert!(
        outcomes
            .lines
            .iter()
            .any(|l| l.starts_with("replacing ")
                && l.ends_with("its launch hook abandoned the launch")),
        "{:#?}",
        outcomes.lines
    );
    daemon.stop().await;
}
