//! In-process monitors and agents on 127.0.0.1, with the test group's credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscaler_agent::discovery::StaticLocator;
use autoscaler_agent::{AgentConfig, LoadConfig};
use autoscaler_monitor::registry::Registry;
use autoscaler_monitor::{Monitor, MonitorConfig};
use autoscaler_policy::fleet::{FleetView, InstanceView};
use autoscaler_proto::auth::{AttachToken, Credentials};
use autoscaler_proto::tls::Role;
use autoscaler_proto::v1::monitor_client::MonitorClient;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::group::{credentials, monitor_client};

/// A monitor config that polls fast, so tests finish quickly.
pub fn fast_config(poll_interval: Duration) -> MonitorConfig {
    MonitorConfig {
        poll_interval,
        poll_timeout: poll_interval.mul_f64(0.8),
        publish_interval: poll_interval / 5,
        ..MonitorConfig::default()
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
        let address = listener.local_addr().expect("a bound listener");
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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the agent");
        Self::start_with(instance_id, listener, monitor, configure)
    }

    /// Like `start`, listening on `address`.
    pub async fn start_on(
        instance_id: &str,
        address: SocketAddr,
        monitor: SocketAddr,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> RunningAgent {
        let listener = TcpListener::bind(address).await.expect("binding the agent");
        Self::start_with(instance_id, listener, monitor, configure)
    }

    fn start_with(
        instance_id: &str,
        listener: TcpListener,
        monitor: SocketAddr,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> RunningAgent {
        let address = listener.local_addr().expect("a bound listener");
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
