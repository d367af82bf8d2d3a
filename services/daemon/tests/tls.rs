//! Mutual TLS between the group's processes: strangers with another CA's certificate, plaintext
//! callers and the wrong role are all refused and change nothing; the monitor polls no agent that
//! cannot prove it is one of the group's; operators steer agents only
//! through the monitor; the local provider makes its own CA when given none.

use std::time::Duration;

use autoscaler_policy::fleet::Health;
use autoscaler_proto::auth::{AttachToken, Credentials};
use autoscaler_proto::tls::{GroupCa, TlsMaterial, Transport};
use autoscaler_proto::v1;
use autoscaler_proto::v1::agent_client::AgentClient;
use autoscaler_proto::v1::monitor_client::MonitorClient;
use autoscaler_proto::v1::operator_client::OperatorClient;
use autoscaler_proto::v1::status_client::StatusClient;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;
use tonic::Code;

/// Credentials of `role` from a CA that is not the test group's.
fn strangers(role: Role) -> Credentials {
    let ca = GroupCa::generate("strangers").unwrap();
    let issued = ca.issue(role).unwrap();
    let material =
        TlsMaterial::from_pems(role, &ca.cert_pem(), &issued.cert_pem, &issued.key_pem, "x")
            .unwrap();
    // The right token: only the certificate is wrong.
    Credentials::new(token(), Transport::tls(material))
}

fn channel_with(
    credentials: &Credentials,
    address: std::net::SocketAddr,
    peer: Role,
) -> tonic::transport::Channel {
    credentials
        .channel(&address.to_string(), peer, Duration::from_secs(5))
        .unwrap()
}

#[tokio::test]
async fn strangers_and_plaintext_callers_are_refused_and_change_nothing() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0301", monitor.address, |config| {
        config.load = steady_load(20.0);
    })
    .await;
    monitor
        .wait_until("local-0301 healthy", Duration::from_secs(10), |view| {
            view.get("local-0301")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;

    // An agent certificate from another CA cannot register, even with the group's token.
    let stranger = strangers(Role::Agent);
    let error = MonitorClient::with_interceptor(
        channel_with(&stranger, monitor.address, Role::Monitor),
        stranger.attach(),
    )
    .register(v1::RegisterRequest {
        instance_id: "intruder".into(),
        address: "127.0.0.1:9".into(),
        agent_version: "x".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    // A monitor certificate from another CA cannot steer our agent.
    let stranger = strangers(Role::Monitor);
    let error = AgentClient::with_interceptor(
        channel_with(&stranger, agent.address, Role::Agent),
        stranger.attach(),
    )
    .set_load_target(v1::SetLoadTargetRequest {
        target_percent: 99.0,
        hold: true,
    })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    // Plaintext, with the right token, reaches neither.
    let plaintext = Credentials::new(token(), Transport::Plaintext);
    for (address, peer) in [
        (monitor.address, Role::Monitor),
        (agent.address, Role::Agent),
    ] {
        let error = AgentClient::with_interceptor(
            channel_with(&plaintext, address, peer),
            plaintext.attach(),
        )
        .ping(v1::PingRequest { sequence: 1 })
        .await
        .unwrap_err();
        // The TLS server drops the connection: UNAVAILABLE or UNKNOWN (a broken pipe),
        // depending on when the client notices.
        assert!(
            matches!(error.code(), Code::Unavailable | Code::Unknown),
            "{peer}: {error}"
        );
    }

    // A client that expects the monitor will not take an agent's certificate for it.
    let operator = credentials(Role::Operator);
    let error = StatusClient::with_interceptor(
        channel_with(&operator, agent.address, Role::Monitor),
        operator.attach(),
    )
    .get_status(v1::GetStatusRequest { decisions_after: 0 })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    // Nothing changed: the registry holds only our agent, its load is untouched.
    let snapshot = monitor.registry.snapshot();
    assert!(snapshot.get("intruder").is_none());
    let load = agent_client(agent.address, Some(TOKEN))
        .get_metrics(v1::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap()
        .load_percent;
    assert!((load - 20.0).abs() < 1e-9, "load {load}");
    assert_eq!(
        monitor.instance("local-0301").unwrap().health,
        Health::Healthy
    );
    agent.stop().await;
    monitor.stop().await;
}

#[tokio::test]
async fn the_monitor_polls_only_agents_that_prove_they_are_the_groups() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    // Each serves the agent service, but: with another CA's agent certificate; with the
    // group's own certificate for another role (the monitor's); in plaintext.
    let impostors = [
        ("local-0311", strangers(Role::Agent)),
        ("local-0312", credentials(Role::Monitor)),
        (
            "local-0313",
            Credentials::new(token(), Transport::Plaintext),
        ),
    ];
    let mut agents = Vec::new();
    for (instance_id, credentials) in impostors {
        let agent = RunningAgent::start(instance_id, monitor.address, |config| {
            config.credentials = credentials;
            config.load = steady_load(20.0);
        })
        .await;
        // They cannot register themselves (the monitor refuses them too): the test does.
        monitor
            .monitor_client(Some(TOKEN))
            .register(v1::RegisterRequest {
                instance_id: instance_id.into(),
                address: agent.address.to_string(),
                agent_version: "x".into(),
            })
            .await
            .unwrap();
        agents.push(agent);
    }
    let view = monitor
        .wait_until(
            "every impostor unhealthy",
            Duration::from_secs(20),
            |view| {
                ["local-0311", "local-0312", "local-0313"]
                    .iter()
                    .all(|id| view.get(id).is_some_and(|i| i.health == Health::Unhealthy))
            },
        )
        .await;
    for id in ["local-0311", "local-0312", "local-0313"] {
        let instance = view.get(id).unwrap();
        // Never answered: no load was taken from any of them.
        assert_eq!(instance.metrics.load, None, "{instance:?}");
        assert_eq!(instance.last_seen, None, "{instance:?}");
        let error = instance.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("TLS handshake"), "{id}: {error}");
    }
    for agent in agents {
        agent.stop().await;
    }
    monitor.stop().await;
}

#[tokio::test]
async fn a_plaintext_monitor_polls_plaintext_agents_when_a_local_run_asks_for_it() {
    let plaintext = || Credentials::new(token(), Transport::Plaintext);
    let mut monitor = RunningMonitor::start_with_credentials(
        "127.0.0.1:0",
        fast_config(Duration::from_millis(200)),
        plaintext(),
    )
    .await;
    let agent = RunningAgent::start("local-0321", monitor.address, |config| {
        config.credentials = plaintext();
        config.load = steady_load(42.0);
    })
    .await;
    monitor
        .wait_until(
            "local-0321 healthy at 42",
            Duration::from_secs(10),
            |view| {
                view.get("local-0321")
                    .is_some_and(|i| i.health == Health::Healthy && i.metrics.load == Some(42.0))
            },
        )
        .await;
    agent.stop().await;
    monitor
        .wait_until("local-0321 deregistered", Duration::from_secs(10), |view| {
            view.get("local-0321").is_none()
        })
        .await;
    monitor.stop().await;
}

#[tokio::test]
async fn each_call_takes_only_its_roles_certificate() {
    let mut monitor = RunningMonitor::start(fast_config(Duration::from_millis(200))).await;
    let agent = RunningAgent::start("local-0302", monitor.address, |config| {
        config.load = steady_load(20.0);
    })
    .await;
    monitor
        .wait_until("local-0302 healthy", Duration::from_secs(10), |view| {
            view.get("local-0302")
                .is_some_and(|i| i.health == Health::Healthy)
        })
        .await;

    // The agent's control calls, from an agent's or an operator's certificate of our own group.
    for role in [Role::Agent, Role::Operator] {
        let peer = credentials(role);
        let mut client = AgentClient::with_interceptor(
            channel_with(&peer, agent.address, Role::Agent),
            AttachToken::new(&token()),
        );
        let refused = [
            client
                .set_load_target(v1::SetLoadTargetRequest {
                    target_percent: 99.0,
                    hold: true,
                })
                .await
                .map(drop),
            client
                .notify_removal(v1::NotifyRemovalRequest {
                    reason: "impostor".into(),
                })
                .await
                .map(drop),
            client
                .attach_monitor(v1::AttachMonitorRequest {
                    monitor_id: "impostor".into(),
                    poll_interval_ms: 1000,
                })
                .await
                .map(drop),
            client
                .detach_monitor(v1::DetachMonitorRequest {
                    monitor_id: "impostor".into(),
                })
                .await
                .map(drop),
        ];
        for (call, result) in [
            "SetLoadTarget",
            "NotifyRemoval",
            "AttachMonitor",
            "DetachMonitor",
        ]
        .iter()
        .zip(refused)
        {
            let error = result.unwrap_err();
            assert_eq!(error.code(), Code::PermissionDenied, "{call} as {role}");
            assert!(error.message().contains("only the monitor"), "{error}");
        }
        // Reading is open to any member of the group.
        client.ping(v1::PingRequest { sequence: 5 }).await.unwrap();
    }

    // The monitor's Register only from agents (Status and Operator: see the daemon test).
    let operator = credentials(Role::Operator);
    let error = MonitorClient::with_interceptor(
        channel_with(&operator, monitor.address, Role::Monitor),
        operator.attach(),
    )
    .register(v1::RegisterRequest {
        instance_id: "local-0399".into(),
        address: "127.0.0.1:9".into(),
        agent_version: "x".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    // Nothing changed: no new registration, the load untouched, the agent still attached.
    assert!(monitor.registry.snapshot().get("local-0399").is_none());
    let load = agent_client(agent.address, Some(TOKEN))
        .get_metrics(v1::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap()
        .load_percent;
    assert!((load - 20.0).abs() < 1e-9, "load {load}");
    agent.stop().await;
    monitor.stop().await;
}

#[tokio::test]
async fn operators_steer_agents_through_the_monitor() {
    let state = StateDir::new("tls-operator");
    let daemon = RunningDaemon::start(fast_daemon_config(&state.0)).await;
    let status = wait_status(
        &mut status_client(daemon.address),
        "2 healthy",
        4,
        Duration::from_secs(30),
        |s| s.instances.iter().filter(|i| i.is_healthy()).count() == 2,
    )
    .await;
    let instance_id = status.instances[0].instance_id.clone();
    let operator = credentials(Role::Operator);
    let mut client = OperatorClient::with_interceptor(
        channel_with(&operator, daemon.address, Role::Monitor),
        operator.attach(),
    );
    client
        .set_load_target(v1::OperatorLoadTargetRequest {
            instance_id: instance_id.clone(),
            target_percent: 75.0,
            hold: true,
        })
        .await
        .unwrap();
    wait_status(
        &mut status_client(daemon.address),
        "the steered agent's load climbs to 75 %",
        4,
        Duration::from_secs(15),
        |s| {
            s.instances
                .iter()
                .any(|i| i.instance_id == instance_id && i.load_percent > Some(70.0))
        },
    )
    .await;
    let error = client
        .set_load_target(v1::OperatorLoadTargetRequest {
            instance_id: "local-9999".into(),
            target_percent: 35.0,
            hold: true,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
    let error = client
        .set_load_target(v1::OperatorLoadTargetRequest {
            instance_id: instance_id.clone(),
            target_percent: 170.0,
            hold: true,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    // An agent's certificate may use neither the Status nor the Operator service.
    let as_agent = credentials(Role::Agent);
    let error = StatusClient::with_interceptor(
        channel_with(&as_agent, daemon.address, Role::Monitor),
        as_agent.attach(),
    )
    .get_status(v1::GetStatusRequest { decisions_after: 0 })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    let error = OperatorClient::with_interceptor(
        channel_with(&as_agent, daemon.address, Role::Monitor),
        as_agent.attach(),
    )
    .set_load_target(v1::OperatorLoadTargetRequest {
        instance_id,
        target_percent: 90.0,
        hold: true,
    })
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_local_provider_makes_its_own_ca_when_given_none() {
    let state = StateDir::new("tls-auto");
    let config = fast_daemon_config(&state.0);
    let daemon =
        RunningDaemon::start_with_tls(config, autoscaler_daemon::daemon::TlsSource::Auto).await;
    let tls_dir = state.0.join("tls");
    eventually(
        "the daemon writes its CA",
        Duration::from_secs(10),
        || async { tls_dir.join("ca.pem").exists() },
    )
    .await;
    for role in Role::ALL {
        TlsMaterial::load(&tls_dir, role).expect("every role's material");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tls_dir.join("monitor.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the keys are private: {mode:o}");
    // Its agents (separate processes, given the directory) become healthy over TLS, and an
    // operator with the directory's certificate reads the status.
    let operator = Credentials::new(
        token(),
        Transport::tls(TlsMaterial::load(&tls_dir, Role::Operator).unwrap()),
    );
    let mut client = StatusClient::with_interceptor(
        channel_with(&operator, daemon.address, Role::Monitor),
        operator.attach(),
    );
    wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        s.instances.iter().filter(|i| i.is_healthy()).count() == 2
    })
    .await;
    // The test group's operator is a stranger to this CA.
    let error = status_client(daemon.address)
        .get_status(v1::GetStatusRequest { decisions_after: 0 })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    daemon.stop().await;
}

#[test]
fn the_agent_binary_refuses_to_start_without_tls_or_an_explicit_plaintext() {
    let output = std::process::Command::new(agent_binary())
        .args(["--instance-id", "local-0001", "--monitor", "127.0.0.1:9"])
        .env("AUTOSCALER_TOKEN", TOKEN)
        .env_remove("AUTOSCALER_TLS_DIR")
        .env_remove("AUTOSCALER_PLAINTEXT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no TLS material") && stderr.contains("--plaintext"),
        "{stderr}"
    );
}
