//! A client generated from the .proto files by another gRPC implementation (Python's grpcio)
//! calls every RPC of the agent and the monitor over the group's mutual TLS: the protocol is plain
//! proto3, and the identities hold across implementations.

use std::time::Duration;

use autoscaler_policy::fleet::Health;
use autoscaler_testkit::*;

#[tokio::test]
async fn a_python_grpcio_client_calls_every_rpc() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0100", monitor.address, |config| {
        config.load = steady_load(25.0);
    })
    .await;
    monitor
        .wait_until("local-0100 healthy", Duration::from_secs(10), |view| {
            view.get("local-0100")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;

    let tls_dir = std::env::temp_dir().join(format!("autoscaler-interop-{}", std::process::id()));
    write_tls_dir(&tls_dir);
    let output = tokio::process::Command::new(python())
        .arg(workspace_root().join("proto/interop/check.py"))
        .arg(workspace_root().join("proto"))
        .arg(monitor.address.to_string())
        .arg(agent.address.to_string())
        .arg(TOKEN)
        .arg(&tls_dir)
        .output()
        .await
        .expect("running the Python client");
    std::fs::remove_dir_all(&tls_dir).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");

    assert_eq!(results["Ping"]["instance_id"], "local-0100");
    assert_eq!(results["Ping"]["sequence"], 9);
    // The monitor's one poll call carries the metrics.
    assert_eq!(results["Ping"]["load_percent"], 25.0);
    assert_eq!(results["GetMetrics"]["instance_id"], "local-0100");
    assert_eq!(results["GetMetrics"]["load_percent"], 25.0);
    assert!(
        results["GetMetrics"]["sampled_at_unix_ms"]
            .as_i64()
            .unwrap()
            > 1_600_000_000_000
    );
    for ok in [
        "AttachMonitor",
        "DetachMonitor",
        "NotifyRemoval",
        "Deregister",
    ] {
        assert_eq!(results[ok], "ok", "{ok}");
    }
    assert_eq!(results["SetLoadTarget"]["current_load_percent"], 25.0);
    assert_eq!(results["SetLoadTarget(170)"], "INVALID_ARGUMENT");
    assert_eq!(results["Ping(no token)"], "UNAUTHENTICATED");
    assert_eq!(results["SetLoadTarget(as agent)"], "PERMISSION_DENIED");
    assert_eq!(results["Ping(plaintext)"], "UNAVAILABLE");
    assert_eq!(results["Deregister(again)"], "NOT_FOUND");
    assert_eq!(results["Register(empty)"], "INVALID_ARGUMENT");
    assert_eq!(results["Register"]["poll_interval_ms"], 200);
    assert!(
        results["Register"]["monitor_id"]
            .as_str()
            .unwrap()
            .starts_with("monitor-")
    );
    assert!(monitor.registry.snapshot().get("python-1").is_none());

    agent.stop().await;
    monitor.stop().await;
}
