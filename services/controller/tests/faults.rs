//! The real AWS SDK paths under a misbehaving API: a fault proxy in front of the emulator makes
//! EC2 and SSM throttle, fail with 5xx and InsufficientInstanceCapacity, hang, and lose the
//! response of a launch that took effect. The controller backs off, records every failure in
//! its decisions, never launches twice, and converges once the API recovers. And a controller
//! killed at random points of its evaluations, again and again, never takes the group past its
//! maximum and leaves no orphan. Figures are printed (`figure:` lines) for docs/RELIABILITY.md.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscaler_aws::{Parameters, SsmError, Timeouts};
use autoscaler_controller::cloud::{Cloud, CloudErrorKind};
use autoscaler_controller::config::ControllerConfig;
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config};
use autoscaler_controller::fleet::FleetView;
use autoscaler_controller::reconciler::{Controller, NoAgents};
use autoscaler_testkit::fault_proxy::{Fault, FaultProxy};
use autoscaler_testkit::moto::start_moto;
use support::*;

/// Short timeouts, so that hung calls fail in seconds.
fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        attempt: Duration::from_secs(1),
        operation: Duration::from_secs(4),
    }
}

fn controller(cloud: Arc<Ec2Cloud>) -> Controller<Ec2Cloud> {
    let (_, fleet) = tokio::sync::watch::channel(Arc::new(FleetView::empty(
        std::time::Instant::now(),
        Duration::from_secs(1),
    )));
    Controller::new(
        cloud,
        ControllerConfig::default(),
        fleet,
        // No agent answers in these tests: nobody to notify or forget.
        Arc::new(NoAgents),
    )
}

#[tokio::test]
async fn ec2_faults_are_retried_recorded_and_the_fleet_converges_without_duplicates() {
    let moto = start_moto();
    let direct = autoscaler_aws::emulator_config(&moto.endpoint, Timeouts::default()).await;
    prepare(&direct, "faults").await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let sdk = autoscaler_aws::emulator_config(&proxy.endpoint, timeouts()).await;
    let cloud = Arc::new(
        Ec2Cloud::open(&sdk, "faults", Ec2Config::default())
            .await
            .expect("open through the proxy"),
    );
    let mut controller = controller(cloud.clone());
    let status = controller.status();

    // Listing throttled three times (more than the SDK's own three attempts absorb), then 5xx,
    // then launches refused for capacity four times, then a launch
    // that takes effect but whose response is lost, then a hung launch.
    proxy.inject("DescribeInstances", Fault::Throttle, 3);
    proxy.inject("DescribeInstances", Fault::ServerError, 1);
    proxy.inject("RunInstances", Fault::Capacity, 4);
    proxy.inject("RunInstances", Fault::LoseResponse, 1);
    proxy.inject("RunInstances", Fault::Hang, 1);

    let started = Instant::now();
    let mut evaluations = 0;
    let mut outcomes = Vec::new();
    loop {
        let record = controller.evaluate_once().await;
        evaluations += 1;
        outcomes.extend(record.outcome.clone());
        let listed = cloud.list().await.map(|l| l.len()).unwrap_or(0);
        if listed >= 2 && proxy.pending() == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no convergence in 120 s; outcomes: {outcomes:#?}; seen: {:?}",
            proxy.seen()
        );
    }
    let converged = started.elapsed();
    // A few more evaluations: nothing more is launched.
    for _ in 0..3 {
        let record = controller.evaluate_once().await;
        assert!(record.launched.is_empty(), "{record:#?}");
    }
    let listed = cloud.list().await.unwrap();
    assert_eq!(
        listed.len(),
        2,
        "exactly the minimum, no duplicate: {listed:#?}"
    );

    let text = outcomes.join("\n");
    for kind in ["throttled", "insufficient-capacity"] {
        assert!(text.contains(kind), "{kind} not recorded: {text}");
    }
    let errors = status.counters().provider_errors;
    assert!(
        errors.get(&CloudErrorKind::Throttled).copied().unwrap_or(0) >= 1,
        "{errors:?}"
    );
    assert!(
        errors
            .get(&CloudErrorKind::InsufficientCapacity)
            .copied()
            .unwrap_or(0)
            >= 1,
        "{errors:?}"
    );
    let faults = proxy.seen().iter().filter(|(_, f)| f.is_some()).count();
    eprintln!(
        "figure: EC2 faults ({faults} injected: throttling, 5xx, capacity, a lost response, a hang) \
         -> converged to 2 instances in {:.1} s over {evaluations} evaluations, no duplicate; \
         provider errors recorded: {errors:?}",
        converged.as_secs_f64()
    );
}

#[tokio::test]
async fn ssm_throttling_is_absorbed_and_persistent_failures_and_hangs_end_in_clear_errors() {
    let moto = start_moto();
    let direct = autoscaler_aws::emulator_config(&moto.endpoint, Timeouts::default()).await;
    Parameters::new(&direct)
        .put("/autoscaler/faults/monitor", "10.0.0.5:50051", false)
        .await
        .unwrap();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let sdk = autoscaler_aws::emulator_config(&proxy.endpoint, timeouts()).await;
    let parameters = Parameters::new(&sdk);

    // Two throttles: the SDK's standard retry absorbs them.
    proxy.inject("GetParameter", Fault::Throttle, 2);
    let value = parameters.get("/autoscaler/faults/monitor").await;
    assert_eq!(value.as_deref().ok(), Some("10.0.0.5:50051"), "{value:?}");
    let attempts = proxy
        .seen()
        .iter()
        .filter(|(a, _)| a == "GetParameter")
        .count();
    assert_eq!(attempts, 3, "two throttled attempts and one that succeeded");

    // 5xx on every attempt: a clear error, not a hang.
    proxy.inject("GetParameter", Fault::ServerError, 3);
    let started = Instant::now();
    let error = parameters
        .get("/autoscaler/faults/monitor")
        .await
        .expect_err("persistent 5xx fails");
    assert!(matches!(error, SsmError::Call { .. }), "{error:?}");
    assert!(
        error.to_string().contains("/autoscaler/faults/monitor"),
        "{error}"
    );
    eprintln!(
        "figure: SSM 5xx on every attempt -> error after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A hung endpoint: the operation timeout ends it.
    proxy.inject("GetParameter", Fault::Hang, 3);
    let started = Instant::now();
    let error = parameters
        .get("/autoscaler/faults/monitor")
        .await
        .expect_err("a hung endpoint fails");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    eprintln!(
        "figure: SSM hung -> {} after {:.1} s (attempt timeout 1 s, operation timeout 4 s)",
        if error.to_string().contains("timeout") {
            "timeout error"
        } else {
            "error"
        },
        waited.as_secs_f64()
    );
}

/// A fleet view in which every listed instance answers with `load`.
fn answering(instances: &[autoscaler_controller::cloud::CloudInstance], load: f64) -> FleetView {
    use autoscaler_controller::fleet::{Health, InstanceView};
    let mut view = FleetView::empty(std::time::Instant::now(), Duration::from_secs(1));
    view.instances = instances
        .iter()
        .map(|i| {
            std::sync::Arc::new(InstanceView {
                instance_id: i.instance_id.clone(),
                // Nothing listens there: NotifyRemoval fails fast, as it may in life.
                address: "127.0.0.1:1".into(),
                agent_version: "test".into(),
                health: Health::Healthy,
                consecutive_misses: 0,
                metrics: autoscaler_controller::fleet::Metrics {
                    load: Some(load),
                    requests_per_second: None,
                    hook: None,
                },
                recent_loads: [load].into(),
                registered_at: std::time::Instant::now(),
                last_seen: Some(std::time::Instant::now()),
                last_error: None,
            })
        })
        .collect();
    view.instances
        .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    view
}

#[tokio::test]
async fn a_controller_killed_at_random_points_never_exceeds_its_bounds_or_orphans_an_instance() {
    let moto = start_moto();
    // Default timeouts: moto's first calls can take more than a short attempt timeout.
    let sdk = autoscaler_aws::emulator_config(&moto.endpoint, Timeouts::default()).await;
    prepare(&sdk, "crash").await;
    let cloud = Arc::new(
        Ec2Cloud::open(&sdk, "crash", Ec2Config::default())
            .await
            .unwrap(),
    );
    let config = ControllerConfig {
        min_instances: 2,
        max_instances: 4,
        warmup_secs: 0,
        scale_out_cooldown_secs: 0,
        scale_in_cooldown_secs: 0,
        ..ControllerConfig::default()
    };
    let (views, fleet) = tokio::sync::watch::channel(Arc::new(answering(&[], 0.0)));
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    // Every instance of the group EC2 has, whatever the controller lists.
    let group_instances = || async {
        ec2.describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:autoscaler:group")
                    .values("crash")
                    .build(),
            )
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect::<std::collections::BTreeSet<String>>()
    };

    // 60 controller lives, each killed at a random point of an evaluation (its future dropped
    // mid-call: the in-memory state is lost, as in a crash), then restarted. The load flips
    // every five lives, so that most lives scale out (to the maximum) or in (to the minimum).
    let mut seed: u64 = 0x5eed;
    let mut kills = 0;
    let mut sizes = std::collections::BTreeSet::new();
    for life in 0..60 {
        let load = if (life / 5) % 2 == 0 { 95.0 } else { 5.0 };
        let listed = cloud.list().await.unwrap();
        views.send_replace(Arc::new(answering(&listed, load)));
        let mut controller = Controller::new(
            cloud.clone(),
            config.clone(),
            fleet.clone(),
            // No agent answers in these tests: nobody to notify or forget.
            Arc::new(NoAgents),
        );
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis((seed >> 33) % 80);
        if life % 3 == 2 {
            // Every third life completes, so the fleet makes progress however slow the machine.
            controller.evaluate_once().await;
        } else if tokio::time::timeout(kill_after, controller.evaluate_once())
            .await
            .is_err()
        {
            kills += 1;
        }
        drop(controller);
        let all = group_instances().await;
        sizes.insert(all.len());
        assert!(
            all.len() <= 4,
            "life {life}: {} instances of the group exist, above the maximum: {all:?}",
            all.len()
        );
    }
    assert!(kills >= 5, "only {kills} of 60 lives were cut short");
    assert!(
        sizes.contains(&4) && sizes.contains(&2),
        "the lives never reached both bounds: sizes seen {sizes:?}"
    );

    // A last controller that lives: it converges to the minimum; nothing is left over.
    let mut controller = Controller::new(
        cloud.clone(),
        config.clone(),
        fleet.clone(),
        // No agent answers in these tests: nobody to notify or forget.
        Arc::new(NoAgents),
    );
    let started = Instant::now();
    loop {
        let listed = cloud.list().await.unwrap();
        views.send_replace(Arc::new(answering(&listed, 5.0)));
        controller.evaluate_once().await;
        let listed: std::collections::BTreeSet<String> = cloud
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.instance_id)
            .collect();
        if listed.len() == 2 {
            assert_eq!(
                group_instances().await,
                listed,
                "an instance of the group that the controller does not list (an orphan)"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence to the minimum: {listed:?}"
        );
    }
    eprintln!(
        "figure: 60 controller lives, {kills} killed mid-evaluation, fleet sizes seen {sizes:?}: \
         never above 4; converged to 2 with no orphan {:.1} s after the last restart",
        started.elapsed().as_secs_f64()
    );
}
