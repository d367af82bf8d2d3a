//! The real AWS SDK paths under a misbehaving API: a fault proxy in front of the emulator makes
//! EC2 and SSM throttle, fail with 5xx and InsufficientInstanceCapacity, hang, and lose the
//! response of a launch that took effect. The controller backs off, records every failure in
//! its decisions, never launches twice, and converges once the API recovers. Figures are
//! printed (`figure:` lines) for docs/RELIABILITY.md.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscaler_aws::{Parameters, SsmError, Timeouts};
use autoscaler_controller::cloud::Cloud;
use autoscaler_controller::config::ControllerConfig;
use autoscaler_controller::ec2::{Ec2Cloud, Ec2Config};
use autoscaler_controller::fleet::FleetView;
use autoscaler_controller::reconciler::Controller;
use autoscaler_proto::auth::Token;
use support::fault_proxy::{Fault, FaultProxy};
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
        Token::new("test-token-0123456789").unwrap(),
        Arc::new(|_: &str| {}),
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
    for kind in ["Throttled", "InsufficientCapacity"] {
        assert!(text.contains(kind), "{kind} not recorded: {text}");
    }
    let errors = status.counters().provider_errors;
    assert!(
        errors.get("Throttled").copied().unwrap_or(0) >= 1,
        "{errors:?}"
    );
    assert!(
        errors.get("InsufficientCapacity").copied().unwrap_or(0) >= 1,
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
