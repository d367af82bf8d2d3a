//! Registration with the monitor: register with backoff until it answers, register again when no
//! monitor has polled for a while (it restarted or moved), deregister on the way out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use autoscaler_policy::backoff::Backoff;
use autoscaler_proto::auth::{AttachToken, Credentials};
use autoscaler_proto::tls::Role;
use autoscaler_proto::v1;
use autoscaler_proto::v1::monitor_client::MonitorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::discovery::{MonitorEndpoint, MonitorLocator};
use crate::service::AgentState;

/// Timing of the registration loop.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// Register again when no monitor reached us for this long.
    pub reregister_after: Duration,
    /// First wait after a failed registration; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of each call to the monitor, connection included.
    pub rpc_timeout: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            reregister_after: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(2),
        }
    }
}

/// Registers this agent and keeps it registered.
pub struct Registrar {
    state: Arc<AgentState>,
    locator: Arc<dyn MonitorLocator>,
    credentials: Credentials,
    advertise_address: String,
    config: RegistrationConfig,
    /// The monitor we last registered with, to deregister from on shutdown.
    last_endpoint: Mutex<Option<MonitorEndpoint>>,
}

type Client = MonitorClient<InterceptedService<Channel, AttachToken>>;

impl Registrar {
    pub fn new(
        state: Arc<AgentState>,
        locator: Arc<dyn MonitorLocator>,
        credentials: Credentials,
        advertise_address: String,
        config: RegistrationConfig,
    ) -> Registrar {
        Registrar {
            state,
            locator,
            credentials,
            advertise_address,
            config,
            last_endpoint: Mutex::new(None),
        }
    }

    async fn client(&self, endpoint: &str) -> Result<Client, String> {
        let channel = self
            .credentials
            .transport
            .endpoint(endpoint, Role::Monitor, self.config.rpc_timeout)
            .map_err(|error| format!("bad monitor endpoint {endpoint:?}: {error}"))?
            .timeout(self.config.rpc_timeout)
            .connect()
            .await
            .map_err(|error| format!("cannot connect to the monitor at {endpoint}: {error}"))?;
        Ok(MonitorClient::with_interceptor(
            channel,
            self.credentials.attach(),
        ))
    }

    /// One registration attempt against whatever monitor the locator names.
    async fn register_once(&self) -> Result<(MonitorEndpoint, v1::RegisterResponse), String> {
        let endpoint = self
            .locator
            .locate()
            .await
            .map_err(|error| error.to_string())?;
        // Remember the monitor before the call, not after the answer: the monitor starts polling
        // as soon as it has the registration, so a stop that comes before this task reads the
        // answer must still deregister (a monitor that never had us answers NOT_FOUND).
        *self.last_endpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint.clone());
        let attempt = async {
            let mut client = self.client(&endpoint).await?;
            client
                .register(v1::RegisterRequest {
                    instance_id: self.state.instance_id().to_string(),
                    address: self.advertise_address.clone(),
                    agent_version: autoscaler_proto::VERSION.to_string(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| {
                    format!(
                        "the monitor at {endpoint} refused the registration: {:?}: {}",
                        status.code(),
                        status.message()
                    )
                })
        };
        let response = tokio::time::timeout(self.config.rpc_timeout * 2, attempt)
            .await
            .map_err(|_| format!("registration with {endpoint} timed out"))??;
        Ok((endpoint, response))
    }

    /// Registers, retrying with capped exponential backoff until a monitor accepts.
    async fn register_with_backoff(&self) {
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        loop {
            match self.register_once().await {
                Ok((endpoint, response)) => {
                    tracing::info!(
                        monitor = %endpoint,
                        monitor_id = %response.monitor_id,
                        poll_interval_ms = response.poll_interval_ms,
                        "registered with the monitor"
                    );
                    self.state.mark_activity();
                    return;
                }
                Err(error) => {
                    let pause = backoff.failed();
                    tracing::warn!(%error, retry_in = ?pause, "registration failed");
                    tokio::time::sleep(pause + jitter(pause)).await;
                }
            }
        }
    }

    /// Registers, then registers again every time the agent goes unpolled for too long.
    /// Runs until the task is dropped.
    pub async fn run(&self) {
        loop {
            self.register_with_backoff().await;
            self.wait_until_unpolled().await;
        }
    }

    async fn wait_until_unpolled(&self) {
        let check_every = (self.config.reregister_after / 5).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(check_every).await;
            let quiet_for = self.state.last_activity().elapsed();
            if quiet_for < self.config.reregister_after {
                continue;
            }
            if let Some(reason) = self.state.removal_reason() {
                tracing::debug!(%reason, "unpolled, but being removed: not registering again");
                continue;
            }
            tracing::warn!(
                ?quiet_for,
                "no monitor has polled this agent; registering again"
            );
            return;
        }
    }

    /// Leaves the registry of the monitor we last registered (or tried to register) with.
    /// Bounded by the RPC timeout.
    pub async fn deregister(&self) -> Result<(), String> {
        let endpoint = self
            .last_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(endpoint) = endpoint else {
            return Err("never registered".to_string());
        };
        let attempt = async {
            let mut client = self.client(&endpoint).await?;
            client
                .deregister(v1::DeregisterRequest {
                    instance_id: self.state.instance_id().to_string(),
                })
                .await
                .map(drop)
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        };
        tokio::time::timeout(self.config.rpc_timeout, attempt)
            .await
            .map_err(|_| format!("deregistration from {endpoint} timed out"))?
    }
}

/// Up to a quarter of `base`, so that agents started together do not retry in lockstep.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
