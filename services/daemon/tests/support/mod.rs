//! Test helpers: in-process monitors and agents on 127.0.0.1, agent processes, gRPC clients and
//! waiting for a condition with a deadline.
#![allow(dead_code)]

pub mod daemon;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscaler_agent::discovery::StaticLocator;
use autoscaler_agent::{AgentConfig, LoadConfig};
use autoscaler_monitor::registry::Registry;
use autoscaler_monitor::{Monitor, MonitorConfig};
use autoscaler_policy::fleet::{FleetView, InstanceView};
use autoscaler_proto::auth::{AttachToken, Credentials, Token};
pub use autoscaler_proto::tls::Role;
use autoscaler_proto::tls::{GroupCa, Issued, TlsMaterial, Transport};
use autoscaler_proto::v1::agent_client::AgentClient;
use autoscaler_proto::v1::monitor_client::MonitorClient;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const TOKEN: &str = "test-token-0123456789";

pub fn token() -> Token {
    Token::new(TOKEN).unwrap()
}

/// The tests' group CA and its three identities, made once per test process and kept in
/// memory (the daemon tests write them into their state directory for their agent processes).
struct TestPki {
    ca: String,
    issued: Vec<(Role, Issued)>,
}

fn pki() -> &'static TestPki {
    static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ca = GroupCa::generate("test").expect("a test CA");
        let issued = Role::ALL
            .iter()
            .map(|&role| (role, ca.issue(role).expect("a test certificate")))
            .collect();
        TestPki {
            ca: ca.cert_pem(),
            issued,
        }
    })
}

/// The test group's TLS material for `role`.
pub fn material(role: Role) -> TlsMaterial {
    let pki = pki();
    let (_, issued) = pki.issued.iter().find(|(r, _)| *r == role).unwrap();
    TlsMaterial::from_pems(
        role,
        &pki.ca,
        &issued.cert_pem,
        &issued.key_pem,
        "test material",
    )
    .unwrap()
}

/// The token and mutual TLS as `role`.
pub fn credentials(role: Role) -> Credentials {
    Credentials::new(token(), Transport::tls(material(role)))
}

/// Writes every role's material into `dir`, as the daemon and `autoscaler-agent --tls-dir` read it.
pub fn write_tls_dir(dir: &std::path::Path) {
    for role in Role::ALL {
        material(role)
            .write_dir(dir)
            .expect("writing test TLS material");
    }
}

/// A monitor config that polls fast, so tests finish quickly.
pub fn fast_config(poll_interval: Duration) -> MonitorConfig {
    MonitorConfig {
        poll_interval,
        poll_timeout: poll_interval.mul_f64(0.8),
        publish_interval: poll_interval / 5,
        ..MonitorConfig::default()
    }
}

pub struct RunningMonitor {
    pub address: SocketAddr,
    pub fleet: watch::Receiver<Arc<FleetView>>,
    pub registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningMonitor {
    /// Starts a monitor on `address` (port 0 for any free port).
    pub async fn start_on(address: &str, config: MonitorConfig) -> RunningMonitor {
        RunningMonitor::start_with_credentials(address, config, credentials(Role::Monitor)).await
    }

    pub async fn start_with_credentials(
        address: &str,
        config: MonitorConfig,
        credentials: Credentials,
    ) -> RunningMonitor {
        let listener = TcpListener::bind(address)
            .await
            .expect("binding the monitor");
        let address = listener.local_addr().unwrap();
        let monitor = Monitor::start(config, credentials).expect("valid monitor config");
        let fleet = monitor.fleet();
        let registry = monitor.registry().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            monitor
                .serve(listener, async {
                    stopped.await.ok();
                })
                .await
                .expect("monitor serve");
        });
        RunningMonitor {
            address,
            fleet,
            registry,
            stop: Some(stop),
            task,
        }
    }

    pub async fn start(config: MonitorConfig) -> RunningMonitor {
        RunningMonitor::start_on("127.0.0.1:0", config).await
    }

    /// Stops serving and polling; waits until the port is free again.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("monitor stops within 10 s")
            .expect("monitor task");
    }

    pub fn instance(&self, instance_id: &str) -> Option<InstanceView> {
        self.fleet.borrow().get(instance_id).cloned()
    }

    /// Waits until the published fleet view satisfies `condition`, or panics after `deadline`.
    pub async fn wait_until(
        &mut self,
        what: &str,
        deadline: Duration,
        condition: impl Fn(&FleetView) -> bool,
    ) -> Arc<FleetView> {
        let give_up = Instant::now() + deadline;
        loop {
            {
                let view = self.fleet.borrow_and_update();
                if condition(&view) {
                    return view.clone();
                }
            }
            let remaining = give_up.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                panic!(
                    "timed out after {deadline:?} waiting until {what}; fleet: {:#?}",
                    self.fleet.borrow().instances
                );
            }
            let _ = tokio::time::timeout(remaining, self.fleet.changed()).await;
        }
    }

    pub fn monitor_client(
        &self,
        token: Option<&str>,
    ) -> MonitorClient<InterceptedService<Channel, AttachToken>> {
        monitor_client(self.address, token)
    }
}

/// A channel to `peer` at `address`, with the test group's certificate for `me`.
pub fn channel_as(address: SocketAddr, me: Role, peer: Role) -> Channel {
    credentials(me)
        .channel(&address.to_string(), peer, Duration::from_secs(5))
        .unwrap()
}

/// A client (the monitor's identity to agents, an agent's to monitors) that sends `token` (a raw header value when it is too short to be a Token, none when
/// `None`).
fn interceptor(token: Option<&str>) -> AttachToken {
    match token {
        Some(token) => AttachToken::new(&Token::new(token).expect("test tokens are long enough")),
        None => AttachToken::none(),
    }
}

pub fn monitor_client(
    address: SocketAddr,
    token: Option<&str>,
) -> MonitorClient<InterceptedService<Channel, AttachToken>> {
    MonitorClient::with_interceptor(
        channel_as(address, Role::Agent, Role::Monitor),
        interceptor(token),
    )
}

pub fn agent_client(
    address: SocketAddr,
    token: Option<&str>,
) -> AgentClient<InterceptedService<Channel, AttachToken>> {
    AgentClient::with_interceptor(
        channel_as(address, Role::Monitor, Role::Agent),
        interceptor(token),
    )
}

/// An agent running inside the test process.
pub struct RunningAgent {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    pub async fn start(
        instance_id: &str,
        monitor: SocketAddr,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> RunningAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_with(instance_id, listener, monitor, configure)
    }

    /// Like `start`, listening on `address`.
    pub async fn start_on(
        instance_id: &str,
        address: SocketAddr,
        monitor: SocketAddr,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> RunningAgent {
        let listener = TcpListener::bind(address).await.unwrap();
        Self::start_with(instance_id, listener, monitor, configure)
    }

    fn start_with(
        instance_id: &str,
        listener: TcpListener,
        monitor: SocketAddr,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> RunningAgent {
        let address = listener.local_addr().unwrap();
        let mut config = AgentConfig::new(instance_id, credentials(Role::Agent));
        config.registration.initial_backoff = Duration::from_millis(50);
        config.registration.max_backoff = Duration::from_millis(500);
        config.registration.reregister_after = Duration::from_secs(1);
        configure(&mut config);
        let locator = Arc::new(StaticLocator::new(&monitor.to_string()).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            autoscaler_agent::run(config, listener, locator, async {
                stopped.await.ok();
            })
            .await
            .expect("agent run");
        });
        RunningAgent {
            address,
            stop: Some(stop),
            task,
        }
    }

    /// Stops gracefully (deregisters).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("agent stops within 10 s")
            .expect("agent task");
    }
}

/// Simulated load held still at `load`, so tests can predict what agents report.
pub fn steady_load(load: f64) -> LoadConfig {
    LoadConfig::Simulated(autoscaler_agent::load::LoadModelConfig {
        initial: load,
        target: load,
        noise: 0.0,
        drift_amplitude: 0.0,
        ..Default::default()
    })
}

/// The `autoscaler-agent` binary, built beside this test (`cargo xtask test` builds it first).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AUTOSCALER_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let test_exe = std::env::current_exe().unwrap();
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile_dir.join("autoscaler-agent");
    assert!(
        binary.exists(),
        "{} does not exist: build it first with `cargo build -p autoscaler-agent` (`cargo xtask test` does), or set AUTOSCALER_AGENT_BIN",
        binary.display()
    );
    binary
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent process with the test group's certificate, killed when dropped (its TLS
/// directory removed).
pub struct AgentProcess {
    pub child: tokio::process::Child,
    pub address: SocketAddr,
    tls_dir: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.tls_dir);
    }
}

impl AgentProcess {
    pub fn spawn(instance_id: &str, monitor: SocketAddr) -> AgentProcess {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_dir = std::env::temp_dir().join(format!(
            "autoscaler-test-agent-{}-{}",
            std::process::id(),
            address.port()
        ));
        write_tls_dir(&tls_dir);
        let child = tokio::process::Command::new(agent_binary())
            .arg("--tls-dir")
            .arg(&tls_dir)
            .args(["--instance-id", instance_id])
            .args(["--listen", &address.to_string()])
            .args(["--monitor", &monitor.to_string()])
            .args(["--reregister-after-ms", "1000"])
            .env("AUTOSCALER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("starting autoscaler-agent");
        AgentProcess {
            child,
            address,
            tls_dir,
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling the agent");
    }
}

/// Polls `condition` every 20 ms until it holds, or panics after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
