//! What a standby daemon answers while it waits for the lease, on the addresses it will serve
//! from once it leads (as a Kubernetes controller's standby replicas answer their health and
//! metrics): nobody who asks it waits for a timeout. gRPC: health checking (the process
//! SERVING, the monitor's services NOT_SERVING), the activity history from the shared store,
//! and UNAVAILABLE naming the leader for everything else (an agent's registration, the status,
//! the operator's calls). HTTP: `/healthz` (200, "ok: this daemon stands by: ..."), `/metrics`
//! (`autoscaler_leader 0`), and 503 naming the leader for the dashboard.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use autoscaler_proto::auth::Credentials;
use autoscaler_proto::v1;
use autoscaler_proto::v1::monitor_server::{Monitor, MonitorServer};
use autoscaler_proto::v1::operator_server::{Operator, OperatorServer};
use autoscaler_proto::v1::status_server::{Status, StatusServer};
use autoscaler_proto::{MAX_MESSAGE_BYTES, tls};
use autoscaler_store::Store;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response};

/// How long the standby's answers wait for the store to name the leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The standby's answers, from the store it shares with the leader.
#[derive(Clone)]
pub struct Standby {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby").finish_non_exhaustive()
    }
}

impl Standby {
    pub fn new(store: Arc<dyn Store>) -> Standby {
        Standby { store }
    }

    /// "standing by: the leader is HOLDER at ADDRESS", as the store has the lease now.
    pub async fn says(&self) -> String {
        match tokio::time::timeout(LEADER_TIMEOUT, self.store.lease()).await {
            Ok(Ok(Some(lease))) if lease.expires_at_ms > autoscaler_policy::time::now_ms() => {
                format!(
                    "this daemon stands by: the leader is {} at {} (epoch {})",
                    lease.holder, lease.address, lease.epoch
                )
            }
            Ok(Ok(_)) => "this daemon stands by: no daemon leads now".to_string(),
            Ok(Err(error)) => format!("this daemon stands by: the leader is unknown ({error})"),
            Err(_) => "this daemon stands by: the leader is unknown (the store did not answer)"
                .to_string(),
        }
    }

    async fn unavailable(&self) -> tonic::Status {
        tonic::Status::unavailable(self.says().await)
    }

    /// Answers gRPC on `listener` (borrowed: the leader serves on it next) until `stop`; then
    /// sends its clients away (GOAWAY), so that they connect again, to the leader.
    pub async fn serve_grpc(
        &self,
        listener: &TcpListener,
        credentials: &Credentials,
        stop: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let (mut routes, health) = autoscaler_proto::standard::routes::<MonitorServer<Standby>>()
            .await
            .map_err(|error| error.to_string())?;
        health.set_not_serving::<MonitorServer<Standby>>().await;
        health.set_not_serving::<StatusServer<Standby>>().await;
        let token = credentials.require();
        routes
            .add_service(InterceptedService::new(
                MonitorServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
                token.clone(),
            ))
            .add_service(InterceptedService::new(
                StatusServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
                token.clone(),
            ))
            .add_service(InterceptedService::new(
                OperatorServer::new(self.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
                token,
            ));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(
            shared(listener).map_err(|error| format!("cannot share the listener: {error}"))?,
        );
        credentials
            .transport
            .server()
            .map_err(|error| error.to_string())?
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|error| error.to_string())
    }

    /// Answers HTTP on `listener` (borrowed, as `serve_grpc`) until `stop`.
    pub async fn serve_http(
        &self,
        listener: &TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        use axum::http::StatusCode;
        use axum::routing::get;
        let healthz = {
            let standby = self.clone();
            move || async move { format!("ok: {}\n", standby.says().await) }
        };
        let elsewhere = {
            let standby = self.clone();
            move || async move {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(axum::http::header::CACHE_CONTROL, "no-store")],
                    format!(
                        "{}; the dashboard is served by the leader\n",
                        standby.says().await
                    ),
                )
            }
        };
        let router = axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(|| async { metrics() }))
            .fallback(elsewhere);
        let listener =
            shared(listener).map_err(|error| format!("cannot share the listener: {error}"))?;
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|error| error.to_string())
    }
}

/// A second handle on `listener`'s socket, which the standby accepts on and drops when it
/// leads, leaving the socket to the leader's servers.
pub(crate) fn shared(listener: &TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsFd;
    let socket = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// The standby's metrics: that it does not lead.
fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    use prometheus_client::encoding::prometheus_text;
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register(
        "autoscaler_leader",
        crate::http::LEADER_HELP,
        ConstGauge::new(0i64),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
}

/// How long the standby's servers get to send their clients away once the daemon leads.
const HAND_OVER: Duration = Duration::from_secs(5);

/// Runs `wait` (standing by until this daemon leads) while answering on `listener` and `http`
/// as a standby; returns what `wait` returns, once the standby's servers have sent their
/// clients away. gRPC is answered from the moment `credentials` gives the TLS material (at
/// once when it is already there; a standby started before the leader made it waits for it,
/// and its clients' connections wait in the listener's queue, then get the leader's name).
pub async fn while_standing_by<T>(
    standby: Standby,
    listener: &TcpListener,
    http: Option<&TcpListener>,
    credentials: impl Future<Output = Credentials>,
    wait: impl Future<Output = T>,
) -> T {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let grpc = async {
        let credentials = tokio::select! {
            credentials = credentials => credentials,
            () = until(stopped.clone()) => return,
        };
        if let Err(error) = standby
            .serve_grpc(listener, &credentials, until(stopped.clone()))
            .await
        {
            tracing::warn!(%error, "the standby's gRPC answers stopped");
        }
    };
    let web = async {
        if let Some(http) = http
            && let Err(error) = standby.serve_http(http, until(stopped.clone())).await
        {
            tracing::warn!(%error, "the standby's HTTP answers stopped");
        }
    };
    let mut servers = std::pin::pin!(async { tokio::join!(grpc, web) });
    let mut wait = std::pin::pin!(wait);
    let (led, ended) = tokio::select! {
        led = &mut wait => (led, false),
        // They end only when stopped, or when they cannot serve (a failure): the daemon still
        // waits to lead.
        _ = &mut servers => (wait.await, true),
    };
    let _ = stop.send(true);
    if !ended && tokio::time::timeout(HAND_OVER, servers).await.is_err() {
        tracing::warn!("the standby's clients did not go within {HAND_OVER:?}; leading anyway");
    }
    led
}

#[tonic::async_trait]
impl Monitor for Standby {
    async fn register(
        &self,
        _request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, tonic::Status> {
        Err(self.unavailable().await)
    }

    async fn deregister(
        &self,
        _request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, tonic::Status> {
        Err(self.unavailable().await)
    }
}

#[tonic::async_trait]
impl Status for Standby {
    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    /// The history is the group's, in the store both daemons share: served here too.
    async fn get_activity(
        &self,
        request: Request<v1::GetActivityRequest>,
    ) -> Result<Response<v1::GetActivityResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        let request = request.into_inner();
        let records = crate::status::read_activity(
            &*self.store,
            request.since_unix_ms,
            crate::status::activity_limit(request.limit),
        )
        .await
        .map_err(tonic::Status::unavailable)?;
        Ok(Response::new(v1::GetActivityResponse { records }))
    }
}

#[tonic::async_trait]
impl Operator for Standby {
    async fn set_load_target(
        &self,
        request: Request<v1::OperatorLoadTargetRequest>,
    ) -> Result<Response<v1::OperatorLoadTargetResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn put_schedule(
        &self,
        request: Request<v1::PutScheduleRequest>,
    ) -> Result<Response<v1::PutScheduleResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn list_schedules(
        &self,
        request: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn delete_schedule(
        &self,
        request: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn update_group(
        &self,
        request: Request<v1::UpdateGroupRequest>,
    ) -> Result<Response<v1::UpdateGroupResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn set_instance_protection(
        &self,
        request: Request<v1::SetInstanceProtectionRequest>,
    ) -> Result<Response<v1::SetInstanceProtectionResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn update_launch_spec(
        &self,
        request: Request<v1::UpdateLaunchSpecRequest>,
    ) -> Result<Response<v1::UpdateLaunchSpecResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn start_instance_refresh(
        &self,
        request: Request<v1::StartInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn cancel_instance_refresh(
        &self,
        request: Request<v1::CancelInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn rollback_instance_refresh(
        &self,
        request: Request<v1::RollbackInstanceRefreshRequest>,
    ) -> Result<Response<v1::InstanceRefreshResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }

    async fn describe_instance_refresh(
        &self,
        request: Request<v1::DescribeInstanceRefreshRequest>,
    ) -> Result<Response<v1::DescribeInstanceRefreshResponse>, tonic::Status> {
        tls::require_caller(&request, tls::Role::Operator)?;
        Err(self.unavailable().await)
    }
}
