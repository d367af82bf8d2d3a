//! MonitorS: the registry of instances, the poller that pings and fetches metrics from every
//! agent, health per instance, and the fleet view published in-process to the controller.
//!
//! The library takes a config, the group's credentials and a bound listener; only the daemon's
//! `main.rs` (services/daemon) reads the environment, binds ports and installs signal handlers.
//! It knows nothing of the controller: the daemon adds the Status service to its server and
//! answers its `Admission` trait.

pub mod config;
pub mod operator;
mod poller;
pub mod registry;
pub mod service;
mod unary;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use autoscaler_policy::fleet::FleetView;
use autoscaler_proto::MAX_MESSAGE_BYTES;
use autoscaler_proto::auth::Credentials;
use autoscaler_proto::auth::RequireToken;
use autoscaler_proto::v1::monitor_server::MonitorServer;
use autoscaler_proto::v1::operator_server::OperatorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;

pub use crate::config::{MonitorConfig, MonitorConfigError};
use crate::registry::Registry;

/// What a controller beside the monitor answers for it: who may register (`Admission`), and the
/// schedules the Operator service puts, lists and deletes (`ScheduleBook`). The monitor alone
/// has neither.
#[derive(Clone, Default)]
pub struct Controls {
    pub admission: Option<Arc<dyn service::Admission>>,
    pub schedules: Option<Arc<dyn operator::ScheduleBook>>,
    pub rollouts: Option<Arc<dyn operator::Rollouts>>,
}
use crate::service::MonitorService;

/// Why the monitor could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Config(#[from] MonitorConfigError),
    #[error(transparent)]
    Tls(#[from] autoscaler_proto::tls::TlsError),
    #[error("reflection service: {0}")]
    Reflection(#[from] autoscaler_proto::standard::ReflectionError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The task that publishes the fleet view ended while the monitor served.
    #[error("the fleet view's publisher stopped: {0}")]
    Publisher(String),
}

/// A running monitor: its registry polls every registered agent and publishes the fleet view.
#[derive(Debug)]
pub struct Monitor {
    registry: Arc<Registry>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    /// Checks the config and starts publishing. Must be called inside a Tokio runtime.
    pub fn start(config: MonitorConfig, credentials: Credentials) -> Result<Monitor, MonitorError> {
        config.validate()?;
        let registry = Registry::new(config, credentials)?;
        let publisher = tokio::spawn(registry.clone().publish_forever());
        Ok(Monitor {
            registry,
            publisher: Some(publisher),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The fleet view, republished whenever it changes: the controller's "shared memory".
    pub fn fleet(&self) -> watch::Receiver<Arc<FleetView>> {
        self.registry.subscribe()
    }

    /// Serves the Monitor gRPC service (with health checking and reflection) on `listener` until
    /// `shutdown` completes; then stops polling and tells the agents it has gone.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), MonitorError> {
        self.serve_with(listener, |_, _| {}, Controls::default(), shutdown)
            .await
    }

    /// Like [`Monitor::serve`], with the services `extra` adds to the same server (the daemon's
    /// Status service), which it should put behind the given token check, and the controller's
    /// `controls`: only the registrations its admission admits, its schedules.
    pub async fn serve_with(
        mut self,
        listener: TcpListener,
        extra: impl FnOnce(&mut RoutesBuilder, &RequireToken),
        controls: Controls,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), MonitorError> {
        let Controls {
            admission,
            schedules,
            rollouts,
        } = controls;
        let (mut routes, _health) =
            autoscaler_proto::standard::routes::<MonitorServer<MonitorService>>().await?;
        // With a controller, only the instances its provider lists may register.
        let mut service = MonitorService::new(self.registry.clone());
        if let Some(admission) = admission {
            service = service.admitting(admission);
        }
        let monitor = InterceptedService::new(
            MonitorServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES),
            self.registry.credentials().require(),
        );
        let operator = InterceptedService::new(
            OperatorServer::new(operator::OperatorService::new(
                self.registry.clone(),
                schedules,
                rollouts,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            self.registry.credentials().require(),
        );
        // Serving without a fleet view would be half alive: if the publisher ends (it only
        // could by a panic), the server stops and says so.
        let mut publisher = self.publisher.take();
        let mut publisher_ended = None;
        let until = async {
            match publisher.as_mut() {
                Some(handle) => tokio::select! {
                    () = shutdown => {}
                    ended = handle => {
                        publisher_ended = Some(match ended {
                            Ok(()) => "it returned".to_string(),
                            Err(join) => join.to_string(),
                        });
                    }
                },
                None => shutdown.await,
            }
        };
        routes.add_service(monitor).add_service(operator);
        extra(&mut routes, &self.registry.credentials().require());
        let result = self
            .registry
            .credentials()
            .transport
            .server()?
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), until)
            .await;
        if let Some(handle) = publisher {
            handle.abort();
        }
        self.stop().await;
        result?;
        match publisher_ended {
            Some(why) => Err(MonitorError::Publisher(why)),
            None => Ok(()),
        }
    }

    /// Stops polling and publishing, and tells every agent this monitor no longer watches it.
    pub async fn stop(self) {
        if let Some(publisher) = &self.publisher {
            publisher.abort();
        }
        self.registry.stop_polling();
        poller::detach_all(&self.registry, Duration::from_millis(500)).await;
    }
}
