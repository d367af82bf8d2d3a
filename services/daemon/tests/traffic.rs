//! The group serving real traffic: an application beside every agent, HAProxy in front, a load
//! generator sending requests through it. The instances' real load (the apps' slot time in use)
//! drives the scaling; an instance enters the balancer once in service, and is drained before
//! it is terminated, so no request fails while the group grows and shrinks.

use std::time::Duration;

use autoscaler_testkit::daemon::*;
use autoscaler_testkit::traffic::Traffic;
use autoscaler_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_being_served_while_real_load_scales_the_group_out_and_in() {
    let state_dir = StateDir::new("traffic");
    let (config, balancer) = traffic_daemon_config(&state_dir.0);
    let daemon = RunningDaemon::start(config).await;
    let mut client = status_client(daemon.address);
    let first = wait_status(
        &mut client,
        "2 instances behind the balancer",
        4,
        Duration::from_secs(60),
        |s| serving(s).len() == 2,
    )
    .await;
    let first = serving(&first);

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
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok()).collect();
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
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
    daemon.stop().await;
}
