//! End-to-end tests of the monitoring plane over real gRPC on 127.0.0.1: registration,
//! heartbeats and metrics, health, hung, killed and cut-off agents, monitor restarts, SIGTERM, and the
//! UNAUTHENTICATED, INVALID_ARGUMENT and NOT_FOUND cases.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use autoscaler_policy::fleet::Health;
use autoscaler_proto::v1;
use autoscaler_testkit::*;
use nix::sys::signal::Signal;
use tonic::Code;

#[tokio::test]
async fn registration_heartbeat_and_metrics_round_trip() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0001", monitor.address, |config| {
        config.load = steady_load(42.0);
    })
    .await;

    let view = monitor
        .wait_until(
            "local-0001 is healthy with a load",
            Duration::from_secs(10),
            |view| {
                view.get("local-0001")
                    .is_some_and(|i| i.health == Health::Healthy && i.metrics.load.is_some())
            },
        )
        .await;
    let instance = view.get("local-0001").unwrap();
    assert_eq!(instance.address, agent.address.to_string());
    assert_eq!(instance.agent_version, autoscaler_proto::VERSION);
    assert!(
        (instance.metrics.load.unwrap() - 42.0).abs() < 1e-9,
        "{instance:?}"
    );
    assert_eq!(instance.consecutive_misses, 0);

    // The agent's own API, as any client sees it.
    let mut client = agent_client(agent.address, Some(TOKEN));
    let ping = client
        .ping(v1::PingRequest { sequence: 77 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ping.instance_id, "local-0001");
    assert_eq!(ping.sequence, 77);
    assert_eq!(ping.agent_version, autoscaler_proto::VERSION);
    let metrics = client
        .get_metrics(v1::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let sample = metrics.metrics.unwrap();
    assert!((sample.load_percent - 42.0).abs() < 1e-9);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - sample.sampled_at_unix_ms).abs() < 5_000,
        "sampled at {}",
        sample.sampled_at_unix_ms
    );

    // The window fills with one load per successful poll.
    monitor
        .wait_until(
            "three loads in the window",
            Duration::from_secs(10),
            |view| {
                view.get("local-0001")
                    .is_some_and(|i| i.recent_loads.len() >= 3)
            },
        )
        .await;

    // A target out of range is refused and changes nothing; a good one moves the load gradually.
    let status = client
        .set_load_target(v1::SetLoadTargetRequest {
            target_percent: 150.0,
            hold: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let after = client
        .get_metrics(v1::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!((after.metrics.unwrap().load_percent - 42.0).abs() < 1e-9);
    client
        .set_load_target(v1::SetLoadTargetRequest {
            target_percent: 90.0,
            hold: true,
        })
        .await
        .unwrap();
    monitor
        .wait_until("the load rises", Duration::from_secs(10), |view| {
            view.get("local-0001")
                .and_then(|i| i.metrics.load)
                .is_some_and(|load| load > 43.0)
        })
        .await;

    agent.stop().await;
    monitor
        .wait_until("local-0001 deregistered", Duration::from_secs(10), |view| {
            view.get("local-0001").is_none()
        })
        .await;
    monitor.stop().await;
}

#[tokio::test]
async fn killed_agent_is_unhealthy_after_exactly_n_misses() {
    let poll_interval = Duration::from_millis(500);
    let unhealthy_after = 3;
    let mut monitor = RunningMonitor::start(autoscaler_monitor::MonitorConfig {
        unhealthy_after,
        ..fast_config(poll_interval)
    })
    .await;
    let mut agent = AgentProcess::spawn("local-0002", monitor.address);
    monitor
        .wait_until("local-0002 healthy", Duration::from_secs(20), |view| {
            view.get("local-0002")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;

    agent.child.start_kill().unwrap();
    agent.child.wait().await.unwrap();
    let killed = Instant::now();
    let view = monitor
        .wait_until("local-0002 unhealthy", Duration::from_secs(20), |view| {
            view.get("local-0002")
                .is_some_and(|i| i.health == Health::Unhealthy)
        })
        .await;
    let took = killed.elapsed();
    let instance = view.get("local-0002").unwrap();
    // The state machine: unhealthy at the N-th consecutive miss, suspect before.
    assert_eq!(instance.consecutive_misses, unhealthy_after, "{instance:?}");
    assert!(instance.last_error.is_some());
    // N intervals, plus one of slack for scheduling on a busy machine.
    let bound = poll_interval * (unhealthy_after + 1);
    assert!(
        took <= bound,
        "unhealthy {took:?} after the kill; bound {bound:?}"
    );
    eprintln!(
        "killed agent marked unhealthy after {took:?} (N = {unhealthy_after}, interval {poll_interval:?})"
    );
    monitor.stop().await;
}

#[tokio::test]
async fn hung_agents_do_not_delay_the_polls_of_the_others() {
    let poll_interval = Duration::from_millis(300);
    let mut config = fast_config(poll_interval);
    // A poll may take its whole interval: a poller that waited for hung agents would fall behind.
    config.poll_timeout = poll_interval;
    let mut monitor = RunningMonitor::start(config).await;

    // Three "agents" that accept TCP connections and never answer.
    let mut hung = Vec::new();
    let mut held = Vec::new();
    for index in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        hung.push((format!("hung-{index}"), address));
        held.push(tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        }));
    }
    let mut client = monitor.monitor_client(Some(TOKEN));
    for (instance_id, address) in &hung {
        client
            .register(v1::RegisterRequest {
                instance_id: instance_id.clone(),
                address: address.to_string(),
                agent_version: "0.0.0".into(),
            })
            .await
            .unwrap();
    }
    let agent = RunningAgent::start("local-0003", monitor.address, |_| {}).await;
    monitor
        .wait_until(
            "hung agents unhealthy, the real one healthy",
            Duration::from_secs(20),
            |view| {
                hung.iter()
                    .all(|(id, _)| view.get(id).is_some_and(|i| i.health == Health::Unhealthy))
                    && view
                        .get("local-0003")
                        .is_some_and(|i| i.health == Health::Healthy)
            },
        )
        .await;

    // Over a few seconds the real agent is polled at its normal rate and never misses.
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut successes = BTreeSet::new();
    while started.elapsed() < window {
        {
            let view = monitor.fleet.borrow_and_update();
            let instance = view.get("local-0003").unwrap();
            assert_eq!(instance.health, Health::Healthy, "{instance:?}");
            successes.extend(instance.last_seen);
        }
        let _ = tokio::time::timeout(window, monitor.fleet.changed()).await;
    }
    let expected = (window.as_millis() / poll_interval.as_millis()) as usize;
    assert!(
        successes.len() * 10 >= expected * 7,
        "{} successful polls in {window:?}, expected about {expected}",
        successes.len()
    );
    agent.stop().await;
    monitor.stop().await;
    held.iter().for_each(|task| task.abort());
}

#[tokio::test]
async fn agents_register_again_after_a_monitor_restart() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut first =
        RunningMonitor::start_on(&address, fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0004", first.address, |_| {}).await;
    first
        .wait_until(
            "registered with the first monitor",
            Duration::from_secs(10),
            |view| {
                view.get("local-0004")
                    .is_some_and(|i| i.health == Health::Healthy)
            },
        )
        .await;
    first.stop().await;

    let mut second =
        RunningMonitor::start_on(&address, fast_config(Duration::from_millis(200))).await;
    second
        .wait_until(
            "registered again with the second monitor",
            Duration::from_secs(15),
            |view| {
                view.get("local-0004")
                    .is_some_and(|i| i.health == Health::Healthy)
            },
        )
        .await;
    agent.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn sigterm_deregisters_and_exits_within_seconds() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let mut agent = AgentProcess::spawn("local-0005", monitor.address);
    monitor
        .wait_until("local-0005 healthy", Duration::from_secs(20), |view| {
            view.get("local-0005")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;
    let signalled = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(5), agent.child.wait())
        .await
        .expect("the agent exits within 5 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    eprintln!("agent exited {:?} after SIGTERM", signalled.elapsed());
    // Deregistered, not merely gone silent: it leaves the registry at once, before any miss.
    let view = monitor.fleet.borrow().clone();
    if let Some(instance) = view.get("local-0005") {
        assert_eq!(instance.consecutive_misses, 0, "{instance:?}");
    }
    monitor
        .wait_until("local-0005 deregistered", Duration::from_secs(2), |view| {
            view.get("local-0005").is_none()
        })
        .await;
    monitor.stop().await;
}

#[tokio::test]
async fn calls_without_the_group_token_are_unauthenticated_and_change_nothing() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0006", monitor.address, |_| {}).await;
    monitor
        .wait_until("local-0006 registered", Duration::from_secs(10), |view| {
            view.get("local-0006").is_some()
        })
        .await;

    let wrong = "another-groups-token-000";
    for token in [None, Some(wrong)] {
        let mut client = monitor.monitor_client(token);
        let status = client
            .register(v1::RegisterRequest {
                instance_id: "intruder".into(),
                address: "127.0.0.1:1".into(),
                agent_version: "0.1.0".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let status = client
            .deregister(v1::DeregisterRequest {
                instance_id: "local-0006".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");

        let mut client = agent_client(agent.address, token);
        assert_eq!(
            client
                .ping(v1::PingRequest { sequence: 1 })
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            client
                .get_metrics(v1::GetMetricsRequest {})
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        let status = client
            .set_load_target(v1::SetLoadTargetRequest {
                target_percent: 99.0,
                hold: true,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = client
            .detach_monitor(v1::DetachMonitorRequest {
                monitor_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let snapshot = monitor.registry.snapshot();
    assert!(snapshot.get("intruder").is_none());
    assert!(snapshot.get("local-0006").is_some());

    // A monitor of another group cannot poll our agents: every poll is refused.
    let strangers_token = autoscaler_proto::auth::Token::new(wrong).unwrap();
    let mut stranger = RunningMonitor::start_with_credentials(
        "127.0.0.1:0",
        fast_config(Duration::from_millis(100)),
        autoscaler_proto::auth::Credentials::new(
            strangers_token,
            credentials(Role::Monitor).transport,
        ),
    )
    .await;
    stranger
        .monitor_client(Some(wrong))
        .register(v1::RegisterRequest {
            instance_id: "local-0006".into(),
            address: agent.address.to_string(),
            agent_version: "0.1.0".into(),
        })
        .await
        .unwrap();
    let view = stranger
        .wait_until(
            "the stranger finds local-0006 unhealthy",
            Duration::from_secs(10),
            |view| {
                view.get("local-0006")
                    .is_some_and(|i| i.health == Health::Unhealthy)
            },
        )
        .await;
    let error = view.get("local-0006").unwrap().last_error.clone().unwrap();
    assert!(error.contains("Unauthenticated"), "{error}");
    assert_eq!(view.get("local-0006").unwrap().metrics.load, None);
    stranger.stop().await;
    // Our own monitor still polls it.
    assert_eq!(
        monitor.instance("local-0006").unwrap().health,
        Health::Healthy
    );

    agent.stop().await;
    monitor.stop().await;
}

#[tokio::test]
async fn bad_registrations_are_invalid_and_change_nothing() {
    let monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let mut client = monitor.monitor_client(Some(TOKEN));
    let good = v1::RegisterRequest {
        instance_id: "i-0123456789abcdef0".into(),
        address: "127.0.0.1:9".into(),
        agent_version: "0.1.0".into(),
    };
    for bad in [
        v1::RegisterRequest {
            instance_id: String::new(),
            ..good.clone()
        },
        v1::RegisterRequest {
            address: "not an address".into(),
            ..good.clone()
        },
        v1::RegisterRequest {
            address: "127.0.0.1".into(),
            ..good.clone()
        },
        v1::RegisterRequest {
            address: "127.0.0.1:99999".into(),
            ..good.clone()
        },
        v1::RegisterRequest {
            instance_id: "x".repeat(10_000),
            ..good.clone()
        },
    ] {
        let status = client.register(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(!status.message().is_empty());
    }
    assert!(monitor.registry.snapshot().instances.is_empty());

    let status = client
        .deregister(v1::DeregisterRequest {
            instance_id: "i-unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .deregister(v1::DeregisterRequest {
            instance_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    monitor.stop().await;
}

mod fake_agent {
    //! An agent that reports whatever load the test sets, to check the monitor's side of it.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use autoscaler_proto::v1;
    use autoscaler_proto::v1::agent_server::{Agent, AgentServer};
    use tonic::{Request, Response, Status};

    #[derive(Clone)]
    pub struct FakeAgent {
        pub instance_id: String,
        pub load: Arc<Mutex<f64>>,
        /// Answer Ping as agents did before it carried the metrics.
        pub old: bool,
        /// The reasons of the NotifyRemoval calls received.
        pub removals: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl Agent for FakeAgent {
        async fn ping(
            &self,
            request: Request<v1::PingRequest>,
        ) -> Result<Response<v1::PingResponse>, Status> {
            Ok(Response::new(v1::PingResponse {
                instance_id: self.instance_id.clone(),
                agent_version: "fake".into(),
                uptime_ms: 1,
                sequence: request.into_inner().sequence,
                metrics: (!self.old).then(|| {
                    // A negative load stands for "none yet".
                    let load = *self.load.lock().unwrap();
                    v1::Metrics {
                        load_percent: load.max(0.0),
                        load_unknown: load < 0.0,
                        ..Default::default()
                    }
                }),
                lifecycle: None,
            }))
        }
        async fn get_metrics(
            &self,
            _: Request<v1::GetMetricsRequest>,
        ) -> Result<Response<v1::GetMetricsResponse>, Status> {
            Ok(Response::new(v1::GetMetricsResponse {
                instance_id: self.instance_id.clone(),
                metrics: Some(v1::Metrics {
                    load_percent: *self.load.lock().unwrap(),
                    ..Default::default()
                }),
            }))
        }
        async fn attach_monitor(
            &self,
            _: Request<v1::AttachMonitorRequest>,
        ) -> Result<Response<v1::AttachMonitorResponse>, Status> {
            Ok(Response::new(v1::AttachMonitorResponse {}))
        }
        async fn detach_monitor(
            &self,
            _: Request<v1::DetachMonitorRequest>,
        ) -> Result<Response<v1::DetachMonitorResponse>, Status> {
            Ok(Response::new(v1::DetachMonitorResponse {}))
        }
        async fn set_load_target(
            &self,
            _: Request<v1::SetLoadTargetRequest>,
        ) -> Result<Response<v1::SetLoadTargetResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn notify_removal(
            &self,
            request: Request<v1::NotifyRemovalRequest>,
        ) -> Result<Response<v1::NotifyRemovalResponse>, Status> {
            self.removals
                .lock()
                .unwrap()
                .push(request.into_inner().reason);
            Ok(Response::new(v1::NotifyRemovalResponse::default()))
        }
    }

    /// Serves a fake agent reporting `load` (`old`: without metrics in Ping's answer), registers
    /// it as `instance_id` and waits until the monitor has it healthy at that load; returns the
    /// load to change.
    pub async fn serve_healthy(
        monitor: &mut super::RunningMonitor,
        instance_id: &str,
        load: f64,
        old: bool,
    ) -> Arc<Mutex<f64>> {
        let shared = Arc::new(Mutex::new(load));
        let address = serve(FakeAgent {
            instance_id: instance_id.into(),
            load: shared.clone(),
            old,
            removals: Arc::default(),
        })
        .await;
        monitor
            .monitor_client(Some(super::TOKEN))
            .register(v1::RegisterRequest {
                instance_id: instance_id.into(),
                address: address.to_string(),
                agent_version: "fake".into(),
            })
            .await
            .unwrap();
        monitor
            .wait_until("the fake agent healthy", Duration::from_secs(10), |view| {
                view.get(instance_id).is_some_and(|i| {
                    i.health == super::Health::Healthy && i.metrics.load == Some(load)
                })
            })
            .await;
        shared
    }

    pub async fn serve(agent: FakeAgent) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(
            super::credentials(super::Role::Agent)
                .transport
                .server()
                .unwrap()
                .add_service(AgentServer::new(agent))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }
}

#[tokio::test]
async fn a_load_outside_0_to_100_is_a_miss_and_keeps_the_last_good_load() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(100))).await;
    let load = fake_agent::serve_healthy(&mut monitor, "fake-1", 55.0, false).await;
    *load.lock().unwrap() = 130.0;
    let view = monitor
        .wait_until("fake-1 unhealthy", Duration::from_secs(10), |view| {
            view.get("fake-1")
                .is_some_and(|i| i.health == Health::Unhealthy)
        })
        .await;
    let instance = view.get("fake-1").unwrap();
    assert_eq!(instance.metrics.load, Some(55.0));
    assert!(instance.recent_loads.iter().all(|l| *l == 55.0));
    assert!(
        instance
            .last_error
            .as_deref()
            .unwrap()
            .contains("outside 0-100"),
        "{instance:?}"
    );
    *load.lock().unwrap() = 60.0;
    monitor
        .wait_until("fake-1 healthy again", Duration::from_secs(10), |view| {
            view.get("fake-1")
                .is_some_and(|i| i.health == Health::Healthy && i.metrics.load == Some(60.0))
        })
        .await;
    monitor.stop().await;
}

#[tokio::test]
async fn an_agent_older_than_pings_metrics_is_read_through_get_metrics() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(100))).await;
    let load = fake_agent::serve_healthy(&mut monitor, "old-1", 35.0, true).await;
    *load.lock().unwrap() = 72.5;
    let view = monitor
        .wait_until("old-1 at 72.5", Duration::from_secs(10), |view| {
            view.get("old-1")
                .is_some_and(|i| i.metrics.load == Some(72.5))
        })
        .await;
    let instance = view.get("old-1").unwrap();
    assert_eq!(instance.health, Health::Healthy, "{instance:?}");
    assert_eq!(instance.last_error, None, "{instance:?}");
    monitor.stop().await;
}

/// Serves a fake agent answering as `answers_as` with `load` (negative: none yet), and
/// registers it with `monitor` as `instance_id`.
async fn serve_and_register(
    monitor: &mut RunningMonitor,
    answers_as: &str,
    instance_id: &str,
    load: std::sync::Arc<std::sync::Mutex<f64>>,
) {
    let address = fake_agent::serve(fake_agent::FakeAgent {
        instance_id: answers_as.into(),
        load,
        old: false,
        removals: std::sync::Arc::default(),
    })
    .await;
    monitor
        .monitor_client(Some(TOKEN))
        .register(v1::RegisterRequest {
            instance_id: instance_id.into(),
            address: address.to_string(),
            agent_version: "fake".into(),
        })
        .await
        .unwrap();
}

/// Outside test, issue 25 finding 7: an agent whose load source has not answered it yet (its
/// application still starting) says so, and the monitor has it healthy with no load, not idle
/// at 0 % (which counted as "its first load seen" and put it in service); its first real load
/// is taken as it comes.
#[tokio::test]
async fn an_agent_without_a_load_yet_is_answering_with_no_load() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(100))).await;
    let load = std::sync::Arc::new(std::sync::Mutex::new(-1.0));
    serve_and_register(&mut monitor, "new-1", "new-1", load.clone()).await;
    let view = monitor
        .wait_until("new-1 healthy", Duration::from_secs(10), |view| {
            view.get("new-1")
                .is_some_and(|i| i.health == Health::Healthy && i.last_seen.is_some())
        })
        .await;
    let instance = view.get("new-1").unwrap();
    assert_eq!(instance.metrics.load, None, "{instance:?}");
    assert!(instance.recent_loads.is_empty(), "{instance:?}");
    *load.lock().unwrap() = 35.0;
    monitor
        .wait_until("new-1 at 35 %", Duration::from_secs(10), |view| {
            view.get("new-1")
                .is_some_and(|i| i.metrics.load == Some(35.0))
        })
        .await;
    monitor.stop().await;
}

#[tokio::test]
async fn an_oversized_answer_is_a_miss_and_is_not_kept() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(100))).await;
    // An agent whose every answer is 100 KB (its instance id), over the 64 KiB the monitor takes.
    let load = std::sync::Arc::new(std::sync::Mutex::new(10.0));
    serve_and_register(&mut monitor, &"x".repeat(100_000), "big-1", load).await;
    let view = monitor
        .wait_until("big-1 unhealthy", Duration::from_secs(10), |view| {
            view.get("big-1")
                .is_some_and(|i| i.health == Health::Unhealthy)
        })
        .await;
    let instance = view.get("big-1").unwrap();
    assert_eq!(instance.metrics.load, None, "{instance:?}");
    let error = instance.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("larger than 65536 bytes"), "{error}");
    monitor.stop().await;
}

/// A TCP relay that can be cut (every connection dropped, new ones refused) and restored on the
/// same port: a network partition between the monitor and one agent.
struct Relay {
    address: std::net::SocketAddr,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut relay = Relay {
            address,
            target,
            task: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Drops every connection and refuses new ones.
    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.serve(listener);
    }
}

#[tokio::test]
async fn an_agent_cut_off_is_marked_unhealthy_and_counted_once_when_it_comes_back() {
    let poll = Duration::from_millis(200);
    let mut monitor = RunningMonitor::start(fast_config(poll)).await;
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_address = agent_listener.local_addr().unwrap();
    drop(agent_listener);
    let mut relay = Relay::start(agent_address).await;
    let advertised = relay.address.to_string();
    let _agent = RunningAgent::start_on("local-0031", agent_address, monitor.address, |config| {
        config.load = steady_load(30.0);
        config.advertise_address = Some(advertised.clone());
    })
    .await;
    monitor
        .wait_until(
            "healthy through the relay",
            Duration::from_secs(10),
            |view| {
                view.get("local-0031")
                    .is_some_and(|i| i.health == Health::Healthy && i.address == advertised)
            },
        )
        .await;

    // Cut: the monitor cannot reach the agent; the agent can still reach the monitor (and
    // registers again when it is not polled), which must not reset its health.
    relay.cut();
    let cut = Instant::now();
    monitor
        .wait_until("unhealthy once cut off", Duration::from_secs(10), |view| {
            view.get("local-0031")
                .is_some_and(|i| i.health == Health::Unhealthy)
        })
        .await;
    let noticed = cut.elapsed();
    tokio::time::sleep(Duration::from_millis(1_500)).await; // past the agent's re-registration
    let instance = monitor.instance("local-0031").expect("still registered");
    assert_eq!(
        instance.health,
        Health::Unhealthy,
        "re-registration reset the health of an unreachable agent: {instance:?}"
    );
    eprintln!(
        "figure: agent cut off noticed (unhealthy) {:.2} s after the cut (3 x {} ms polls)",
        noticed.as_secs_f64(),
        poll.as_millis()
    );

    // Back: healthy again, one instance, not two.
    relay.restore().await;
    let back = Instant::now();
    let view = monitor
        .wait_until("healthy again", Duration::from_secs(10), |view| {
            view.get("local-0031")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;
    assert_eq!(view.instances.len(), 1, "{:#?}", view.instances);
    eprintln!(
        "figure: agent back {:.2} s after the relay returned, counted once",
        back.elapsed().as_secs_f64()
    );
    monitor.stop().await;
}

#[tokio::test]
async fn the_monitor_tells_an_agent_of_its_removal_for_the_controller() {
    let monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let removals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let address = fake_agent::serve(fake_agent::FakeAgent {
        instance_id: "i-removed".into(),
        load: std::sync::Arc::new(std::sync::Mutex::new(10.0)),
        old: false,
        removals: removals.clone(),
    })
    .await;
    monitor
        .monitor_client(Some(TOKEN))
        .register(v1::RegisterRequest {
            instance_id: "i-removed".into(),
            address: address.to_string(),
            agent_version: "fake".into(),
        })
        .await
        .unwrap();
    monitor
        .registry
        .notify_removal("i-removed", "scale-in")
        .await;
    assert_eq!(*removals.lock().unwrap(), ["scale-in"]);
    // An instance the monitor does not know: nothing to call, and no wait.
    tokio::time::timeout(
        Duration::from_secs(2),
        monitor.registry.notify_removal("i-unknown", "scale-in"),
    )
    .await
    .expect("returns at once");
    assert_eq!(removals.lock().unwrap().len(), 1);
    monitor.stop().await;
}
