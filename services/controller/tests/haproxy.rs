//! The local load balancer for real: HAProxy started as the daemon starts it, in front of two
//! applications (`autoscaler-app`, in-process). Requests reach the registered instances only; a
//! deregistered one drains (its request in flight finishes, no new one arrives) and is removed.
//! A HAProxy killed is started again; one left running with the same configuration is taken up
//! as it is; with another, it is replaced.

use std::net::SocketAddr;
use std::time::Duration;

use autoscaler_app::AppConfig;
use autoscaler_controller::balancer::{Balancer, Target, TargetState, TargetStatus};
use autoscaler_controller::haproxy::{Haproxy, HaproxyConfig};
use autoscaler_testkit::http_get as get;
use autoscaler_testkit::process::{free_port, haproxy_binary};
use autoscaler_testkit::wait::eventually;

async fn app(
    instance_id: &str,
    service: Duration,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = AppConfig::new(instance_id);
    config.service_time = service;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(autoscaler_app::run(config, listener, async {
        stopped.await.ok();
    }));
    (address, stop)
}

/// HAProxy's settings for a test: files in `dir`, listening on `listen`, health checks every
/// `check`, unhealthy after 2 failures, healthy after `rise` passes.
fn balancer(
    dir: &std::path::Path,
    listen: SocketAddr,
    check: Duration,
    rise: u32,
) -> HaproxyConfig {
    HaproxyConfig {
        binary: haproxy_binary(),
        listen,
        dir: dir.to_path_buf(),
        health_path: "/healthz".into(),
        check_interval: check,
        unhealthy_after: 2,
        healthy_after: rise,
    }
}

async fn target(haproxy: &Haproxy, instance_id: &str) -> Option<TargetStatus> {
    haproxy
        .targets()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.instance_id == instance_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_registered_instances_and_a_deregistered_one_drains() {
    let dir = std::env::temp_dir().join(format!("autoscaler-haproxy-{}", std::process::id()));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = balancer(&dir, listen, Duration::from_millis(200), 1);
    let haproxy = Haproxy::start(config.clone()).await.unwrap();
    assert!(haproxy.targets().await.unwrap().is_empty());
    // Nothing registered: the balancer has nowhere to send a request.
    assert_eq!(get(listen, "/").await.0, 503);

    let (one, _stop_one) = app("local-0001", Duration::from_millis(20)).await;
    let (two, _stop_two) = app("local-0002", Duration::from_millis(600)).await;
    for (id, address) in [("local-0001", one), ("local-0002", two)] {
        let target = Target {
            instance_id: id.into(),
            address: address.to_string(),
        };
        haproxy.register(&target).await.unwrap();
        // Idempotent.
        haproxy.register(&target).await.unwrap();
    }
    eventually("both targets healthy", Duration::from_secs(10), || async {
        let targets = haproxy.targets().await.unwrap();
        targets.len() == 2 && targets.iter().all(|t| t.state == TargetState::Healthy)
    })
    .await;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (status, body) = get(listen, "/").await;
        assert_eq!(status, 200, "{body}");
        served.insert(body.split_whitespace().nth(2).unwrap_or("").to_string());
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        ["local-0001", "local-0002"],
        "both instances serve"
    );

    // A slow request in flight on local-0002, then local-0002 is deregistered: the request
    // finishes, and no new request goes there.
    let slow = tokio::spawn(async move {
        // leastconn: with local-0001 idle, send until one lands on local-0002.
        loop {
            let (status, body) = get(listen, "/").await;
            if body.contains("local-0002") {
                return status;
            }
        }
    });
    eventually(
        "a request in flight on local-0002",
        Duration::from_secs(10),
        || async {
            target(&haproxy, "local-0002")
                .await
                .and_then(|t| t.in_flight)
                >= Some(1)
        },
    )
    .await;
    haproxy.deregister("local-0002").await.unwrap();
    let draining = target(&haproxy, "local-0002").await.unwrap();
    assert_eq!(draining.state, TargetState::Draining);
    assert!(!draining.drained(), "{draining:?}");
    for _ in 0..5 {
        let (status, body) = get(listen, "/").await;
        assert_eq!((status, body.contains("local-0001")), (200, true), "{body}");
    }
    assert_eq!(slow.await.unwrap(), 200, "the request in flight finished");
    eventually("local-0002 drained", Duration::from_secs(10), || async {
        target(&haproxy, "local-0002").await.unwrap().drained()
    })
    .await;
    haproxy.remove("local-0002").await.unwrap();
    haproxy.remove("local-0002").await.unwrap();
    haproxy.deregister("local-0002").await.unwrap();
    assert_eq!(target(&haproxy, "local-0002").await, None);

    // A server name or address HAProxy would misread never reaches its socket.
    let hostile = Target {
        instance_id: "x;shutdown".into(),
        address: one.to_string(),
    };
    assert!(haproxy.register(&hostile).await.is_err());
    let hostile = Target {
        instance_id: "local-0003".into(),
        address: "bad".into(),
    };
    assert!(haproxy.register(&hostile).await.is_err());
    assert_eq!(haproxy.targets().await.unwrap().len(), 1);

    // HAProxy killed: the next read of the targets starts it again, with none; the instance
    // registered again, requests reach it again.
    let pid = haproxy.pid().await.expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("HAProxy started again", Duration::from_secs(10), || async {
        haproxy.targets().await.is_ok_and(|t| t.is_empty())
            && haproxy.pid().await.is_some_and(|again| again != pid)
    })
    .await;
    haproxy
        .register(&Target {
            instance_id: "local-0001".into(),
            address: one.to_string(),
        })
        .await
        .unwrap();
    eventually(
        "local-0001 serving again",
        Duration::from_secs(10),
        || async {
            target(&haproxy, "local-0001")
                .await
                .is_some_and(|t| t.state == TargetState::Healthy)
        },
    )
    .await;
    let (status, body) = get(listen, "/").await;
    assert_eq!((status, body.contains("local-0001")), (200, true), "{body}");

    // A new start on the same directory with the same configuration (a standby taking over, a
    // restarted daemon) takes up the HAProxy left running: its servers keep serving.
    drop(haproxy);
    let again = Haproxy::start(config.clone()).await.unwrap();
    assert!(again.taken_up().await);
    let kept: Vec<String> = again
        .targets()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.instance_id)
        .collect();
    assert_eq!(kept, ["local-0001"], "the same balancer");
    let (status, body) = get(listen, "/").await;
    assert_eq!((status, body.contains("local-0001")), (200, true), "{body}");

    // With another configuration, the one left running is stopped and a fresh one started.
    let moved = HaproxyConfig {
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        ..config
    };
    let fresh = Haproxy::start(moved.clone()).await.unwrap();
    assert!(!fresh.taken_up().await);
    assert!(
        fresh.targets().await.unwrap().is_empty(),
        "a fresh balancer"
    );
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "the old one stopped"
    );
    fresh.stop().await;
    assert!(
        tokio::net::TcpStream::connect(moved.listen).await.is_err(),
        "stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Outside test, finding 7: a new server gets no request before it passes its health checks,
/// as a new ELB target does. An application that accepts connections and never answers (frozen
/// the moment it listened) is registered: it stays out of service, and a request finds no
/// server (503 at once) instead of waiting on it. Before, HAProxy marked it UP with its check
/// not yet run, and requests went to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_gets_no_request_before_it_passes_its_health_checks() {
    let dir = std::env::temp_dir().join(format!(
        "autoscaler-haproxy-first-check-{}",
        std::process::id()
    ));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = balancer(&dir, listen, Duration::from_millis(1_000), 2);
    let haproxy = Haproxy::start(config).await.unwrap();
    // Accepts, never answers.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = Target {
        instance_id: "local-0001".into(),
        address: frozen.local_addr().unwrap().to_string(),
    };
    haproxy.register(&target).await.unwrap();
    for _ in 0..5 {
        let state = target_state(&haproxy, "local-0001").await;
        assert_ne!(state, Some(TargetState::Healthy), "in service unchecked");
        let answer = tokio::time::timeout(Duration::from_secs(2), get(listen, "/")).await;
        assert_eq!(
            answer.map(|(status, _)| status).ok(),
            Some(503),
            "a request was sent to a server never checked"
        );
    }
    // A real application behind a new server comes into service once it passes its checks.
    let (address, _stop) = app("local-0002", Duration::from_millis(10)).await;
    haproxy
        .register(&Target {
            instance_id: "local-0002".into(),
            address: address.to_string(),
        })
        .await
        .unwrap();
    eventually(
        "the checked server healthy",
        Duration::from_secs(15),
        || async { target_state(&haproxy, "local-0002").await == Some(TargetState::Healthy) },
    )
    .await;
    let (status, body) = get(listen, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("local-0002"), "{body}");
    haproxy.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn target_state(haproxy: &Haproxy, instance_id: &str) -> Option<TargetState> {
    target(haproxy, instance_id).await.map(|t| t.state)
}

/// Outside test, finding 9: a balancer port already in use is said as such, with the port.
/// Before, the error was HAProxy's last log line, "Some protocols failed to start their
/// listeners! Exiting.", which names neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_named_with_its_cause() {
    let dir = std::env::temp_dir().join(format!("autoscaler-haproxy-busy-{}", std::process::id()));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let config = balancer(&dir, listen, Duration::from_millis(500), 1);
    let error = Haproxy::start(config).await.unwrap_err().to_string();
    assert!(error.contains("Address already in use"), "{error}");
    assert!(error.contains(&listen.to_string()), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
