//! MonitorC, the agent on every application instance: serves heartbeats and a gradually changing
//! load over gRPC, registers with the monitor and deregisters when it stops.
//!
//! The library takes a bound listener and a shutdown future; only `main.rs` reads the
//! environment, binds ports and installs signal handlers.

pub mod app_load;
pub mod discovery;
pub mod hooks;
pub mod load;
pub mod metrics;
pub mod registration;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscaler_proto::auth::Credentials;
use autoscaler_proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::discovery::MonitorLocator;
use crate::load::{CpuSampler, LoadConfigError, LoadModel, LoadModelConfig};
use crate::registration::{Registrar, RegistrationConfig};
use crate::service::{AgentService, AgentState, LoadSource};

/// Which load the agent reports.
#[derive(Clone, Debug)]
pub enum LoadConfig {
    Simulated(LoadModelConfig),
    /// The host's CPU utilisation.
    Cpu,
    /// The application's (`autoscaler-app`) share of slot time in use, read from its `/stats`
    /// at this address, with its requests per second.
    App(std::net::SocketAddr),
}

/// Everything the agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The instance this agent runs on.
    pub instance_id: String,
    /// The `host:port` the monitor should poll; `None` uses the listener's own address.
    pub advertise_address: Option<String>,
    /// The group token and the transport (mutual TLS unless plaintext was asked for).
    pub credentials: Credentials,
    pub load: LoadConfig,
    /// How often the load is sampled (and the simulation advanced).
    pub sample_interval: Duration,
    pub registration: RegistrationConfig,
    /// The lifecycle hooks it runs.
    pub hooks: hooks::HookConfig,
    /// How long in-flight calls get to finish at shutdown.
    pub drain_timeout: Duration,
}

impl AgentConfig {
    pub fn new(instance_id: impl Into<String>, credentials: Credentials) -> AgentConfig {
        AgentConfig {
            instance_id: instance_id.into(),
            advertise_address: None,
            credentials,
            load: LoadConfig::Simulated(LoadModelConfig::default()),
            sample_interval: Duration::from_millis(200),
            registration: RegistrationConfig::default(),
            hooks: hooks::HookConfig::default(),
            drain_timeout: Duration::from_secs(1),
        }
    }
}

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("instance id is empty")]
    EmptyInstanceId,
    #[error(transparent)]
    Load(#[from] LoadConfigError),
    #[error("{0}")]
    Hooks(String),
    #[error("the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error(
        "the agent listens on {0}, which the monitor cannot reach: give the address to advertise"
    )]
    UnspecifiedAddress(std::net::SocketAddr),
    #[error("reflection service: {0}")]
    Reflection(#[from] autoscaler_proto::standard::ReflectionError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The sockets the agent serves on, bound by `main`.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC Agent service (with health checking and reflection).
    pub grpc: TcpListener,
    /// Prometheus metrics over HTTP, if wanted.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Listeners {
        Listeners {
            grpc,
            metrics: None,
        }
    }
}

/// Serves the agent until `shutdown` completes, then deregisters and returns.
pub async fn run(
    config: AgentConfig,
    listeners: impl Into<Listeners>,
    locator: Arc<dyn MonitorLocator>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let Listeners {
        grpc: listener,
        metrics,
    } = listeners.into();
    if config.instance_id.trim().is_empty() {
        return Err(AgentError::EmptyInstanceId);
    }
    let source = match &config.load {
        LoadConfig::Simulated(model) => LoadSource::Simulated(LoadModel::new(model.clone())?),
        LoadConfig::Cpu => LoadSource::Cpu(CpuSampler::default()),
        LoadConfig::App(_) => LoadSource::App,
    };
    let local_address = listener.local_addr().map_err(AgentError::Listener)?;
    let advertise_address = match &config.advertise_address {
        Some(address) => address.clone(),
        None if local_address.ip().is_unspecified() => {
            return Err(AgentError::UnspecifiedAddress(local_address));
        }
        None => local_address.to_string(),
    };

    config.hooks.validate().map_err(AgentError::Hooks)?;
    let state = AgentState::new(config.instance_id.clone(), source);
    // In Pending:Wait before the first registration, while the launch hook runs.
    state.set_hooks(config.hooks.clone());
    let launch_hook = tokio::spawn({
        let state = state.clone();
        async move { state.run_launch_hook().await }
    });
    let sampler = match &config.load {
        LoadConfig::App(address) => tokio::spawn(sample_app_forever(
            state.clone(),
            *address,
            config.sample_interval,
        )),
        _ => tokio::spawn(sample_forever(state.clone(), config.sample_interval)),
    };
    let metrics = metrics.map(|listener| tokio::spawn(metrics::serve(listener, state.clone())));

    let (mut routes, _health) =
        autoscaler_proto::standard::routes::<AgentServer<AgentService>>().await?;
    let agent = tonic::service::interceptor::InterceptedService::new(
        AgentServer::new(AgentService::new(state.clone()))
            .max_decoding_message_size(autoscaler_proto::MAX_MESSAGE_BYTES),
        config.credentials.require(),
    );
    routes.add_service(agent);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        config
            .credentials
            .transport
            .server()?
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                server_stopped.await.ok();
            }),
    );
    tracing::info!(
        instance_id = %config.instance_id,
        listen = %local_address,
        tls = config.credentials.transport.is_tls(),
        advertise = %advertise_address,
        "agent serving"
    );

    let registrar = Arc::new(Registrar::new(
        state.clone(),
        locator,
        config.credentials.clone(),
        advertise_address,
        config.registration.clone(),
    ));
    let registering = tokio::spawn({
        let registrar = registrar.clone();
        async move { registrar.run().await }
    });

    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        result = &mut server => {
            registering.abort();
            sampler.abort();
            launch_hook.abort();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.into()),
                Err(join) => panic!("agent server task failed: {join}"),
            };
        }
    }

    tracing::info!("stopping: deregistering from the monitor");
    registering.abort();
    let started = Instant::now();
    match registrar.deregister().await {
        Ok(()) => tracing::info!(took = ?started.elapsed(), "deregistered"),
        Err(error) => {
            tracing::warn!(%error, "could not deregister; the monitor will notice the silence")
        }
    }
    let _ = stop_server.send(());
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => panic!("agent server task failed: {join}"),
        Err(_) => tracing::warn!("in-flight calls did not finish in time; leaving them"),
    }
    sampler.abort();
    launch_hook.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    Ok(())
}

/// Reads the application's counters every `every` and records the load they give. While the
/// app does not answer, the last sample stays and a warning is logged (once until it answers
/// again): the balancer's health check, not the agent, takes such an instance out of service.
async fn sample_app_forever(
    state: Arc<AgentState>,
    address: std::net::SocketAddr,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut load = app_load::AppLoad::default();
    let mut failing = false;
    loop {
        ticker.tick().await;
        match app_load::fetch(address, every.max(Duration::from_millis(500))).await {
            Ok(stats) => {
                if failing {
                    tracing::info!(%address, "the app answers again");
                    failing = false;
                }
                if let Some(sample) = load.observe(Instant::now(), &stats) {
                    state.record_app(sample);
                }
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot read the app's counters; keeping the last sample");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn sample_forever(state: Arc<AgentState>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        state.sample(now - last);
        last = now;
    }
}
