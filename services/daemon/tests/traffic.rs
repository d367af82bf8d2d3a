//! The group serving real traffic: an application beside every agent, HAProxy in front, a load
//! generator sending requests through it. The instances' real load (the apps' slot time in use)
//! drives the scaling; an instance enters the balancer once in service, and is drained before
//! it is terminated, so no request fails while the group grows and shrinks, nor while the
//! leader changes (killed, or stopped cleanly): the successor takes up the balancer as it is.
//! With `health_check_type = "load-balancer"`, an application that fails the balancer's health
//! checks behind an agent that still answers is replaced.

use std::time::Duration;

use autoscaler_testkit::daemon::*;
use autoscaler_testkit::traffic::Traffic;
use autoscaler_testkit::*;

/// Until the daemon at `address` has 2 instances behind the balancer: a client, and their ids.
async fn two_behind_the_balancer(address: std::net::SocketAddr) -> (Status, Vec<String>) {
    let mut client = status_client(address);
    let first = wait_status(
        &mut client,
        "2 instances behind the balancer",
        4,
        Duration::from_secs(60),
        |s| serving(s).len() == 2,
    )
    .await;
    (client, serving(&first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_being_served_while_real_load_scales_the_group_out_and_in() {
    let state_dir = StateDir::new("traffic");
    let (config, balancer) = traffic_daemon_config(&state_dir.0);
    let daemon = RunningDaemon::start(config).await;
    let (mut client, first) = two_behind_the_balancer(daemon.address).await;

    // 150 requests a second on two instances of 100 each: 75 % of their slot time, above the
    // 50 % target. The group grows, and the new instances get requests.
    let traffic = Traffic::start(balancer, 150.0);
    let grown = wait_status(
        &mut client,
        "a third instance behind the balancer",
        4,
        Duration::from_secs(60),
        |s| serving(s).len() >= 3,
    )
    .await;
    let scaled_out_at = traffic.elapsed();
    let load = grown
        .instances
        .iter()
        .filter_map(|i| i.load_percent)
        .fold(0.0, f64::max);
    assert!(
        load > 0.0,
        "the agents report the apps' real load: {grown:?}"
    );
    assert!(
        grown
            .instances
            .iter()
            .any(|i| i.requests_per_second > Some(0.0)),
        "and their requests per second"
    );
    // The dashboard's JSON shows the balancer's view and the requests per second.
    let (status, body) = http_get(daemon.http, "/api/status").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"target_state\":\"healthy\""), "{body}");
    assert!(body.contains("\"requests_per_second\":"), "{body}");
    eventually(
        "requests served by the instances launched for the load",
        Duration::from_secs(20),
        || async {
            let since: Vec<_> = traffic
                .outcomes()
                .into_iter()
                .filter(|o| o.sent >= scaled_out_at)
                .collect();
            since.len() >= 100
                && since
                    .iter()
                    .any(|o| o.served_by.as_ref().is_some_and(|id| !first.contains(id)))
        },
    )
    .await;

    // Demand falls: the group shrinks back to its minimum, each leaving instance drained first.
    traffic.set_rate(20.0);
    let falling_at = traffic.elapsed();
    let shrunk = wait_status(
        &mut client,
        "back to 2 instances",
        4,
        Duration::from_secs(90),
        |s| s.instances.iter().filter(|i| i.listed()).count() == 2,
    )
    .await;
    let drained: Vec<&String> = shrunk
        .decisions
        .iter()
        .flat_map(|d| &d.outcome)
        .filter(|o| o.starts_with("drained "))
        .collect();
    assert!(!drained.is_empty(), "scale-ins drained first: {shrunk:#?}");
    let shrunk_at = traffic.elapsed();
    // Requests sent after the last scale-in are answered too.
    eventually(
        "requests after the scale-in",
        Duration::from_secs(10),
        || async { traffic.tally(shrunk_at, Duration::MAX).served >= 10 },
    )
    .await;
    let outcomes = traffic.stop().await;
    let phases = [
        (
            "on 2 instances, until the scale-out",
            Duration::ZERO,
            scaled_out_at,
        ),
        ("scaled out, until demand fell", scaled_out_at, falling_at),
        ("while it scaled in", falling_at, shrunk_at),
        ("after the scale-in", shrunk_at, Duration::MAX),
    ];
    for (phase, from, to) in phases {
        let tally = autoscaler_testkit::traffic::tally(&outcomes, from, to);
        eprintln!(
            "figure: {phase}: {} served, {} failed",
            tally.served, tally.failed
        );
        assert!(tally.served > 0, "nothing served {phase}");
    }
    eprintln!(
        "figure: 2 -> {} -> 2 instances (scaled out {:.1} s after the traffic started); drains: {drained:?}",
        grown.instances.iter().filter(|i| i.listed()).count(),
        scaled_out_at.as_secs_f64()
    );
    none_failed(&outcomes);
    daemon.stop().await;
}

fn signal(child: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, signal).expect("signalled");
}

async fn exited(child: &mut tokio::process::Child, what: &str) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within 20 s"))
        .expect("its status")
        .code()
}

/// Until the daemon at `port` leads the 2 instances, both behind the balancer.
async fn leads_both(port: u16, what: &str) {
    wait_status(
        &mut status_client(loopback(port)),
        what,
        4,
        Duration::from_secs(60),
        |s| serving(s).len() == 2 && listed(s).len() == 2,
    )
    .await;
}

/// Until `traffic` has had `more` requests served after now.
async fn served_on(traffic: &Traffic, more: u64, what: &str) {
    let from = traffic.elapsed();
    eventually(what, Duration::from_secs(20), || async {
        traffic.tally(from, Duration::MAX).served >= more
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_being_served_while_the_leader_is_killed_and_while_it_hands_over() {
    use nix::sys::signal::Signal;
    let state_dir = StateDir::new("traffic-failover");
    let (config, balancer) = traffic_config_file(&state_dir.0);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_daemon_process(&state_dir.0, port_a, &config);
    wait_status(
        &mut status_client(loopback(port_a)),
        "a leads 2 instances behind the balancer",
        4,
        Duration::from_secs(60),
        |s| serving(s).len() == 2,
    )
    .await;
    let mut b = spawn_standby_process(&state_dir.0, port_b, None, &config).await;
    // 60 requests a second on two instances of 100 each: below the target, the group stays.
    let traffic = Traffic::start(balancer, 60.0);
    served_on(&traffic, 60, "requests served under the first leader").await;

    // 1. The leader is killed: the standby leads the balancer as it found it.
    let killed_at = traffic.elapsed();
    signal(&a, Signal::SIGKILL);
    let _ = a.wait().await;
    leads_both(port_b, "b leads the 2 instances behind the balancer").await;
    served_on(&traffic, 60, "requests served under the second leader").await;

    // 2. The leader stops cleanly and hands over to a new standby.
    let mut a = spawn_standby_process(&state_dir.0, port_a, None, &config).await;
    let handed_at = traffic.elapsed();
    signal(&b, Signal::SIGTERM);
    assert_eq!(exited(&mut b, "the stopped leader").await, Some(0));
    leads_both(port_a, "a leads again").await;
    served_on(&traffic, 60, "requests served under the third leader").await;
    let outcomes = traffic.stop().await;
    let phases = [
        ("under the first leader", Duration::ZERO, killed_at),
        ("from the kill to the hand-over", killed_at, handed_at),
        ("from the hand-over on", handed_at, Duration::MAX),
    ];
    for (phase, from, to) in phases {
        let tally = autoscaler_testkit::traffic::tally(&outcomes, from, to);
        eprintln!(
            "figure: {phase}: {} served, {} failed",
            tally.served, tally.failed
        );
    }
    none_failed(&outcomes);

    // The last daemon stops: its instances and the balancer with it.
    signal(&a, Signal::SIGTERM);
    assert_eq!(exited(&mut a, "the last daemon").await, Some(0));
    eventually(
        "nothing listening where the balancer was",
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(balancer).await.is_err() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_load_balancer_health_check_type_a_frozen_application_is_replaced() {
    use autoscaler_controller::config::HealthCheckType;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let state_dir = StateDir::new("traffic-health");
    let (mut config, _) = traffic_daemon_config(&state_dir.0);
    config.controller.health_check_type = HealthCheckType::LoadBalancer;
    let daemon = RunningDaemon::start(config).await;
    let (mut client, first) = two_behind_the_balancer(daemon.address).await;
    let frozen = first[0].clone();
    let app = state_dir.app_pid_of(&frozen).expect("the app's pid");
    // Its application stops answering (frozen); its agent still answers the monitor.
    kill(Pid::from_raw(app), Signal::SIGSTOP).unwrap();
    let replaced = wait_status(
        &mut client,
        "the frozen application's instance replaced",
        4,
        Duration::from_secs(60),
        |s| !listed(s).contains(&frozen) && serving(s).len() == 2,
    )
    .await;
    let reasons: Vec<&String> = replaced
        .decisions
        .iter()
        .flat_map(|d| &d.replaced)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(&format!("{frozen}: unhealthy per the load balancer"))),
        "{reasons:?}"
    );
    let _ = kill(Pid::from_raw(app), Signal::SIGCONT);
    daemon.stop().await;
}

/// Asserts that every request was answered, showing the first failures otherwise.
fn none_failed(outcomes: &[autoscaler_testkit::traffic::Outcome]) {
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
}

/// The running (or last) refresh's status.
fn refresh_is(status: &autoscaler_proto::v1::GetStatusResponse, what: &str) -> bool {
    status.refresh.as_ref().is_some_and(|r| r.status == what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_being_served_through_a_refresh_and_the_rollbacks_of_bad_versions() {
    use autoscaler_proto::v1;
    let state_dir = StateDir::new("traffic-refresh");
    let (mut config, balancer) = traffic_daemon_config(&state_dir.0);
    // The balancer's health checks count, so a version that fails them is replaced.
    config.controller.health_check_type =
        autoscaler_controller::config::HealthCheckType::LoadBalancer;
    let daemon = RunningDaemon::start(config).await;
    let (mut client, _) = two_behind_the_balancer(daemon.address).await;
    let mut operator = operator_client(daemon.address);
    let traffic = Traffic::start(balancer, 60.0);
    let app_spec = |arg: &[&str]| v1::LaunchSpec {
        app_args: arg.iter().map(|a| a.to_string()).collect(),
        ..v1::LaunchSpec::default()
    };
    let mut phases = Vec::new();
    for (phase, (max_healthy, spec, ends)) in [
        // Lifecycle hooks: each new instance warms up in Pending:Wait before the balancer
        // gets it; at the next refresh each runs its termination hook after its drain.
        (
            150,
            v1::LaunchSpec {
                agent_args: [
                    "--launch-hook",
                    "sleep 1; echo warm",
                    "--termination-hook",
                    "sleep 1; echo flushed",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect(),
                ..v1::LaunchSpec::default()
            },
            "successful",
        ),
        (100, app_spec(&["--max-queue", "300"]), "successful"),
        (150, app_spec(&["--max-queue", "400"]), "successful"),
        (150, app_spec(&["--no-such-flag"]), "rolled-back"),
        (150, app_spec(&["--fail-health"]), "rolled-back"),
    ]
    .into_iter()
    .enumerate()
    {
        let from = traffic.elapsed();
        let started = operator
            .start_instance_refresh(v1::StartInstanceRefreshRequest {
                spec: Some(spec),
                preferences: Some(v1::RefreshPreferences {
                    max_healthy_percentage: Some(max_healthy),
                    instance_warmup_secs: Some(1),
                    ..v1::RefreshPreferences::default()
                }),
            })
            .await
            .expect("the refresh starts")
            .into_inner()
            .refresh
            .unwrap();
        let done = wait_status(
            &mut client,
            &format!("refresh {} {ends}", started.id),
            4,
            Duration::from_secs(120),
            |s| refresh_is(s, ends) && serving(s).len() == 2 && listed(s).len() == 2,
        )
        .await;
        let on: Vec<&str> = done
            .instances
            .iter()
            .filter(|i| i.listed())
            .map(|i| i.version.as_str())
            .collect();
        let expected = match ends {
            "successful" => started.target.clone(),
            _ => started.previous.clone(),
        };
        assert_eq!(on, vec![expected.as_str(); 2], "{done:#?}");
        if phase == 1 {
            hooks_after_the_drain(&done);
        }
        let to = traffic.elapsed();
        phases.push((max_healthy, ends, from, to));
    }
    let outcomes = traffic.stop().await;
    for (max_healthy, ends, from, to) in &phases {
        let tally = autoscaler_testkit::traffic::tally(&outcomes, *from, *to);
        eprintln!(
            "figure: refresh at max healthy {max_healthy} % ({ends}) took {:.1} s: {} served, {} failed",
            (*to - *from).as_secs_f64(),
            tally.served,
            tally.failed
        );
        assert!(tally.served > 0);
    }
    none_failed(&outcomes);
    daemon.stop().await;
}

/// Each instance with a termination hook that a refresh replaced went: drained, Terminating:Wait, its hook's end,
/// terminated, in that order in the record.
fn hooks_after_the_drain(done: &autoscaler_proto::v1::GetStatusResponse) {
    let lines: Vec<&str> = done
        .decisions
        .iter()
        .flat_map(|d| &d.outcome)
        .map(String::as_str)
        .collect();
    let at = |pattern: &dyn Fn(&str) -> bool| lines.iter().rposition(|l| pattern(l));
    let terminated: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("replaced: terminated "))
        .flat_map(|ids| ids.split(", "))
        .map(str::to_string)
        .collect();
    let waited: Vec<&String> = terminated
        .iter()
        .filter(|id| {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{id}: Terminating:Wait")))
        })
        .collect();
    assert_eq!(
        waited.len(),
        2,
        "both old instances ran their hook: {lines:#?}"
    );
    for id in waited {
        let drained = at(&|l| l.starts_with(&format!("draining {id} ")));
        let wait = at(&|l| l.starts_with(&format!("{id}: Terminating:Wait")));
        let ended = at(&|l| {
            l.starts_with(&format!("{id}: termination hook exited 0"))
                && l.ends_with("output: flushed")
        });
        let gone = at(&|l| l.starts_with("replaced: terminated") && l.contains(id.as_str()));
        assert!(
            drained.is_some() && drained < wait && wait < ended && ended < gone,
            "{id}: drained {drained:?}, wait {wait:?}, hook {ended:?}, terminated {gone:?}: {lines:#?}"
        );
    }
}
