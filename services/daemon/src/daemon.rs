//! The daemon `autoscaler-monitor` runs: the monitor and the controller in one process, from a
//! TOML config file (see `provisioning/autoscaler.example.toml`). The controller reads the
//! monitor's fleet view in-process; nothing goes over the network between them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use autoscaler_controller::reconciler::{Agents, Controller};
use autoscaler_controller::status::ControllerStatus;
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_store::{Lease, Store};
use tokio::net::TcpListener;

pub use crate::config::*;
pub use crate::error::{DaemonError, TaskEnd};
pub use crate::tls_source::{TlsSource, check_flags};

use tokio_util::sync::CancellationToken;

use crate::activity;
use crate::http::Dashboard;
use crate::leader::{self, LeaseFence, LeaseTiming};
use crate::platform::{TermParts, TlsPlace};
use crate::status::{History, StatusService};
use autoscaler_monitor::Monitor;
use autoscaler_monitor::service::Admission;

/// What the daemon needs besides its config, resolved by `main`.
#[derive(Debug)]
pub struct RunOptions {
    /// `autoscaler-agent`, for the local provider.
    pub agent_binary: PathBuf,
    /// The `host:port` agents should reach the monitor at (given to local agents, published to
    /// SSM on AWS).
    pub advertise: String,
    /// The AWS SDK config, for the EC2 provider and publishing the monitor's address.
    pub aws: Option<aws_config::SdkConfig>,
    /// Where to serve the dashboard, the JSON API and the metrics.
    pub http: Option<TcpListener>,
    /// Where the TLS material comes from.
    pub tls: TlsSource,
    /// Where the local state dir goes when the config names none (the system's temporary
    /// directory; `main` reads it, as it reads every part of the environment).
    pub temp_dir: PathBuf,
    /// The `PATH` programs named without a directory are looked for in (HAProxy).
    pub path: std::ffi::OsString,
    /// The controller's settings as the config file has them whenever it is read again
    /// (`main` reads it at SIGHUP); each term's controller takes them up.
    pub reload: Option<tokio::sync::watch::Receiver<autoscaler_policy::config::ControllerConfig>>,
}

/// Runs the monitor and the controller on `listener` until `shutdown` completes, on the
/// platform the config names, as one sequence of terms: stand by on the platform's store (at
/// once leading without one), begin a term (`Platform::begin`), serve, and when the term ends
/// (the lease lost) stand by again. At the shutdown the controller stops first (so nothing is
/// replaced), the platform's `leaving` runs (local instances are terminated; EC2 instances
/// stay: `cargo xtask down` removes them), and the monitor stops.
pub async fn run(
    config: DaemonConfig,
    token: Token,
    listener: TcpListener,
    mut options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let http = options.http.take();
    config.validate()?;
    let mut shutdown = std::pin::pin!(shutdown);
    let platform = crate::platform::open(&config, &options)?;
    let store = platform.store();
    loop {
        let answering = Answering {
            listener: &listener,
            http: http.as_ref(),
            token: &token,
            tls: &options.tls,
            group: &config.group,
            place: platform.tls_place(),
        };
        let Some(leadership) = Leadership::stand_by(
            store.clone(),
            &config,
            &options.advertise,
            answering,
            &mut shutdown,
        )
        .await
        else {
            return Ok(());
        };
        let term = platform
            .begin(&config, &options, &token, leadership.as_ref())
            .await?;
        let ended = serve(
            &config,
            term,
            leadership,
            Listeners::dup(&listener, http.as_ref())?,
            options.reload.clone(),
            shutdown.as_mut(),
        )
        .await;
        match ended {
            // The term ended, not the daemon: it stands by, and leads again when it can.
            Err(DaemonError::LostLease { .. }) => continue,
            other => return other,
        }
    }
}

/// Leads one term: starts the monitor with the term's credentials and the controller on its cloud
/// and balancer, and serves (gRPC, and the dashboard when given a listener) until `shutdown`
/// or the term ends; then stops the controller, runs the platform's `leaving`, and stops the
/// monitor.
async fn serve(
    config: &DaemonConfig,
    term: TermParts,
    leadership: Option<Leadership>,
    listeners: Listeners,
    reload: Option<tokio::sync::watch::Receiver<autoscaler_policy::config::ControllerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Listeners {
        grpc: listener,
        http,
    } = listeners;
    let TermParts {
        credentials,
        cloud,
        balancer,
        leaving,
    } = term;
    let monitor = Monitor::start(config.monitor_config(), credentials)?;
    let cloud = Arc::new(cloud);
    let registry = monitor.registry().clone();
    let mut controller = Controller::new(
        cloud,
        config.controller.clone(),
        monitor.fleet(),
        Arc::new(MonitorAgents(registry.clone())),
    );
    if let (Some(balancer), Some(section)) = (balancer, &config.load_balancer) {
        controller = controller.with_balancer(balancer, section.drain_timeout());
    }
    let term = leadership.as_ref().map(|l| l.term(config));
    if let (Some(leadership), Some(term)) = (&leadership, &term) {
        let recalled = activity::recall(&*leadership.store).await;
        if let Some(recalled) = &recalled {
            tracing::info!(
                pending_launches = recalled.pending_launches.len(),
                "taking up the controller's memory from the store (cooldowns, launch backoff, \
                 launches not yet listed)"
            );
        }
        let demand =
            activity::recall_demand(&*leadership.store, config.controller.demand_days()).await;
        if !demand.is_empty() {
            tracing::info!(
                samples = demand.len(),
                "taking up the group's recorded demand from the store (the forecaster's history)"
            );
        }
        controller = controller
            .with_fence(leadership.fence.clone())
            .with_memory(recalled.as_ref(), Arc::new(term.clone()))
            .with_demand_history(demand);
    }
    // The schedules put at run time: the store's (this term's epoch fences the writes).
    let (book, runtime_schedules) = crate::schedules::Book::recall(
        &config.controller,
        leadership
            .as_ref()
            .map(|l| (l.store.clone(), l.lease.epoch)),
    )
    .await;
    controller = controller.with_runtime_schedules(runtime_schedules);
    let (commands, receiver) = autoscaler_controller::reconciler::Commands::channel();
    controller = controller.with_commands(receiver);
    // The config file read again (SIGHUP): its controller settings replace the running ones.
    let reloading = reload.map(|mut reload| {
        let commands = commands.clone();
        reload.mark_unchanged();
        tokio::spawn(async move {
            while reload.changed().await.is_ok() {
                let config = reload.borrow_and_update().clone();
                match commands.replace_config(config).await {
                    Ok(()) => tracing::info!("the controller took up the config file read again"),
                    Err(error) => tracing::error!(
                        %error,
                        "the config file read again was not taken up; the running settings stand"
                    ),
                }
            }
        })
    });
    let controller_status = controller.status();
    let admission: Arc<dyn Admission> = Arc::new(ProviderAdmission(controller.status()));
    let controls = autoscaler_monitor::Controls {
        admission: Some(admission),
        schedules: Some(book),
        rollouts: Some(Arc::new(crate::rollout::ControllerRollouts(commands))),
    };
    let status = StatusService {
        group: config.group.clone(),
        min_instances: config.controller.min_instances,
        max_instances: config.controller.max_instances,
        registry,
        controller: Some(controller.status()),
        term: term.clone(),
    };
    tracing::info!(
        group = %config.group,
        listen = %listener.local_addr().map_err(DaemonError::Listener)?,
        min = config.controller.min_instances,
        max = config.controller.max_instances,
        "monitor and controller starting"
    );

    let history = Arc::new(History::new(900));
    let sampling = tokio::spawn(record_history(status.clone(), history.clone()));
    // The shutdown, in order: the controller (nothing more is replaced), the history's
    // writer, the platform's `leaving`, the dashboard, the monitor's server.
    let stop = Stops::default();
    let mut dashboard = Supervised::none("the dashboard");
    if let Some(http) = http {
        tracing::info!(address = %http.local_addr().map_err(DaemonError::Listener)?, "dashboard serving");
        let page = Arc::new(Dashboard {
            status: status.clone(),
            history,
            load_marks: config.controller.policy.load_marks(),
            fence: leadership.as_ref().map(|l| l.fence.clone()),
        });
        let stopped = stop.dashboard.clone().cancelled_owned();
        dashboard = Supervised::spawn("the dashboard", async {
            crate::http::serve(http, page, stopped)
                .await
                .map_err(|error| error.to_string())
        });
    }
    let stopped = stop.controller.clone().cancelled_owned();
    let mut controlling = Supervised::spawn("the controller", async {
        controller.run(stopped).await;
        Ok(())
    });
    let stopped = stop.server.clone().cancelled_owned();
    let mut serving = Supervised::spawn("the gRPC server", async {
        // The Status service shares the monitor's server, behind the same token check.
        let add_status = |routes: &mut tonic::service::RoutesBuilder,
                          token: &autoscaler_proto::auth::RequireToken| {
            routes.add_service(tonic::service::interceptor::InterceptedService::new(
                autoscaler_proto::v1::status_server::StatusServer::new(status)
                    .max_decoding_message_size(autoscaler_proto::MAX_MESSAGE_BYTES),
                token.clone(),
            ));
        };
        monitor
            .serve_with(listener, add_status, controls, stopped)
            .await
            .map_err(|error| error.to_string())
    });

    let mut lease = Supervised::none("the lease");
    let mut keeper = None;
    if let (Some(leadership), Some(term)) = (&leadership, term) {
        lease = Supervised::spawn("the lease", leadership.keep());
        keeper = Some(tokio::spawn(term.keep(
            controller_status.clone(),
            stop.keeper.clone().cancelled_owned(),
        )));
    }
    let failure = first_failure(
        shutdown,
        &mut [&mut controlling, &mut serving, &mut dashboard, &mut lease],
    )
    .await;
    // The lease's task ends only when the lease is lost.
    let lost = leadership.is_some() && lease.handle.is_none();
    match &failure {
        None => tracing::info!("stopping: the controller first, then the monitor"),
        Some(why) if lost => tracing::warn!("the term ended: {why}"),
        Some(why) => tracing::error!("{why}; stopping the daemon rather than run half alive"),
    }
    stop.controller.cancel();
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    let mut errors: Vec<TaskEnd> = failure.clone().into_iter().collect();
    errors.extend(controlling.stop().await);
    stop.keeper.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    if let Some(handle) = lease.handle.take() {
        handle.abort();
    }
    let handed_over = match &leadership {
        Some(_) if lost => true,
        Some(leadership) => leadership.hand_over().await,
        None => false,
    };
    leaving(handed_over).await;
    sampling.abort();
    stop.dashboard.cancel();
    errors.extend(dashboard.stop().await);
    stop.server.cancel();
    errors.extend(serving.stop().await);
    if lost {
        return Err(DaemonError::LostLease {
            reason: failure.map_or_else(|| "the lease was lost".to_string(), |end| end.to_string()),
        });
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(DaemonError::Task(errors)),
    }
}

/// The stages of a term's shutdown, each told in its turn.
#[derive(Default)]
struct Stops {
    controller: CancellationToken,
    keeper: CancellationToken,
    dashboard: CancellationToken,
    server: CancellationToken,
}

/// The sockets one term serves on: handles on the daemon's own listeners, which stay bound
/// (and queue their clients) while it stands by between terms.
struct Listeners {
    grpc: TcpListener,
    http: Option<TcpListener>,
}

impl Listeners {
    fn dup(grpc: &TcpListener, http: Option<&TcpListener>) -> Result<Listeners, DaemonError> {
        Ok(Listeners {
            grpc: crate::standby::shared(grpc).map_err(DaemonError::Listener)?,
            http: http
                .map(crate::standby::shared)
                .transpose()
                .map_err(DaemonError::Listener)?,
        })
    }
}

/// This daemon's leadership: the store, the lease it holds and the fence its controller checks.
pub struct Leadership {
    store: Arc<dyn Store>,
    lease: Lease,
    fence: Arc<LeaseFence>,
    timing: LeaseTiming,
    holder: String,
    address: String,
}

/// Where, and with what, a standby answers while it waits to lead.
struct Answering<'a> {
    listener: &'a TcpListener,
    http: Option<&'a TcpListener>,
    token: &'a Token,
    /// Where its TLS material is, if already there (`TlsSource::existing`).
    tls: &'a TlsSource,
    group: &'a str,
    place: TlsPlace<'a>,
}

impl Leadership {
    /// The epoch of the term this leadership is.
    pub fn epoch(&self) -> u64 {
        self.lease.epoch
    }

    /// With a store, stands by until this daemon leads (`Some(Some(..))`), answering as a
    /// standby meanwhile (`standby`); without one, leads at once (`Some(None)`); `None` if the
    /// shutdown comes first.
    async fn stand_by(
        store: Option<Arc<dyn Store>>,
        config: &DaemonConfig,
        advertise: &str,
        answering: Answering<'_>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Option<Leadership>> {
        match store {
            None => Some(None),
            Some(store) => {
                // The material as it is, or once the leader has made it (locally) or put it in
                // SSM (on AWS, read less often).
                let credentials = async {
                    let TlsPlace { made_in, sdk } = answering.place;
                    let every = match sdk {
                        Some(_) => Duration::from_secs(2),
                        None => Duration::from_millis(100),
                    };
                    loop {
                        if let Some(transport) =
                            answering.tls.existing(answering.group, made_in, sdk).await
                        {
                            return Credentials::new(answering.token.clone(), transport);
                        }
                        tokio::time::sleep(every).await;
                    }
                };
                crate::standby::while_standing_by(
                    crate::standby::Standby::new(store.clone()),
                    answering.listener,
                    answering.http,
                    credentials,
                    Leadership::wait(store, config, &holder_of(advertise), advertise, shutdown),
                )
                .await
                .map(Some)
            }
        }
    }

    /// Stands by until this daemon leads; `None` if the shutdown comes first.
    async fn wait(
        store: Arc<dyn Store>,
        config: &DaemonConfig,
        holder: &str,
        address: &str,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Leadership> {
        let timing = LeaseTiming {
            duration: Duration::from_millis(config.store.lease_ms),
        };
        let (lease, asked_at) =
            leader::wait_to_lead(&*store, holder, address, timing, shutdown).await?;
        Some(Leadership {
            fence: LeaseFence::new(&lease, timing, asked_at),
            store,
            lease,
            timing,
            holder: holder.to_string(),
            address: address.to_string(),
        })
    }

    fn term(&self, config: &DaemonConfig) -> activity::Term {
        activity::Term {
            store: self.store.clone(),
            epoch: self.lease.epoch,
            leader: self.holder.clone(),
            retention: Duration::from_secs(config.store.activity_retention_days * 86_400),
            demand_days: config.controller.demand_days(),
        }
    }

    /// Renews the lease until it is lost: then returns why, as a failure of the task.
    fn keep(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let renewal = leader::keep(
            self.store.clone(),
            self.holder.clone(),
            self.address.clone(),
            self.fence.clone(),
            self.timing,
        );
        async move { Err(renewal.await) }
    }

    /// Gives the lease up and waits a moment for a standby to take it: whether one did (then
    /// the group's instances are its to keep).
    async fn hand_over(&self) -> bool {
        if let Err(error) = self.store.release(&self.holder, self.lease.epoch).await {
            tracing::warn!(%error, "cannot give the lease up; a standby takes it when it runs out");
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.timing.standby_poll() * 3;
        loop {
            match self.store.lease().await {
                Ok(Some(lease))
                    if lease.holder != self.holder
                        && lease.expires_at_ms > autoscaler_policy::time::now_ms() =>
                {
                    tracing::info!(successor = %lease.holder, epoch = lease.epoch, "a standby took the lease");
                    return true;
                }
                _ if tokio::time::Instant::now() >= deadline => return false,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Who holds the lease: this process, named by the address it serves at, its host and an
/// incarnation of its own (its pid and the moment it first asked). A daemon started again is
/// another holder: it never renews its predecessor's lease (it waits for it to run out, or
/// takes it at once after a clean stop released it), so every term has an epoch of its own and
/// no record of an earlier term is replaced. The same process keeps its name from term to term.
fn holder_of(advertise: &str) -> String {
    static INCARNATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let incarnation = INCARNATION.get_or_init(|| {
        format!(
            "{}.{:x}",
            std::process::id(),
            autoscaler_policy::time::now_ms()
        )
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default();
    format!("{advertise}@{host}#{incarnation}")
}

/// The controller reaches the agents through the monitor's registry.
struct MonitorAgents(Arc<autoscaler_monitor::registry::Registry>);

impl Agents for MonitorAgents {
    fn notify_removal<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>> {
        Box::pin(self.0.notify_removal(instance_id, reason))
    }

    fn forget(&self, instance_id: &str) {
        let _ = self.0.deregister(instance_id);
    }
}

/// The monitor admits the instances the controller's provider lists.
struct ProviderAdmission(ControllerStatus);

impl Admission for ProviderAdmission {
    fn admits<'a>(
        &'a self,
        instance_id: &'a str,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(self.0.admits(instance_id, wait))
    }
}

/// A task the daemon needs until it shuts down: if it ends before, the daemon stops.
struct Supervised {
    name: &'static str,
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Supervised {
    fn spawn(
        name: &'static str,
        task: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Supervised {
        Supervised {
            name,
            handle: Some(tokio::spawn(task)),
        }
    }

    fn none(name: &'static str) -> Supervised {
        Supervised { name, handle: None }
    }

    fn describe(
        &self,
        ended: Result<Result<(), String>, tokio::task::JoinError>,
    ) -> Option<TaskEnd> {
        let task = self.name;
        match ended {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(TaskEnd::Failed { task, error }),
            Err(join) if join.is_panic() => Some(TaskEnd::Panicked {
                task,
                message: panic_message(join.into_panic()),
            }),
            Err(_) => Some(TaskEnd::Cancelled { task }),
        }
    }

    /// Waits for the task to end (it has been told to); what went wrong, if anything.
    async fn stop(&mut self) -> Option<TaskEnd> {
        let handle = self.handle.take()?;
        let ended = handle.await;
        self.describe(ended)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or("(no message)".to_string(), |m| m.to_string()),
    }
}

/// Waits for `shutdown`; returns `None` then. If one of `tasks` ends first (it returned, failed
/// or panicked), returns why instead: the daemon must stop then, and exit non-zero.
async fn first_failure(
    shutdown: impl Future<Output = ()>,
    tasks: &mut [&mut Supervised],
) -> Option<TaskEnd> {
    let ended = std::future::poll_fn(|cx| {
        for task in tasks.iter_mut() {
            if let Some(handle) = task.handle.as_mut()
                && let std::task::Poll::Ready(ended) = std::pin::Pin::new(handle).poll(cx)
            {
                task.handle = None;
                let why = task
                    .describe(ended)
                    .unwrap_or(TaskEnd::Returned { task: task.name });
                return std::task::Poll::Ready(why);
            }
        }
        std::task::Poll::Pending
    });
    tokio::select! {
        () = shutdown => None,
        why = ended => Some(why),
    }
}

/// Samples the status every second into the dashboard's history.
async fn record_history(status: StatusService, history: Arc<History>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        history.record(&status.report(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_ends_the_wait_and_is_named() {
        let mut healthy = Supervised::spawn("the healthy one", async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let mut failing = Supervised::spawn("the controller", async {
            tokio::task::yield_now().await;
            panic!("attempt to add with overflow");
        });
        let why = tokio::time::timeout(
            Duration::from_secs(10),
            first_failure(std::future::pending(), &mut [&mut healthy, &mut failing]),
        )
        .await
        .expect("the panic ends the wait");
        assert_eq!(
            why.map(|end| end.to_string()).as_deref(),
            Some("the controller panicked: attempt to add with overflow")
        );
        assert!(failing.stop().await.is_none(), "already reported");
        healthy.handle.take().unwrap().abort();
    }

    #[tokio::test]
    async fn a_task_that_returns_early_or_fails_ends_the_wait() {
        let mut quiet = Supervised::spawn("the gRPC server", async { Ok(()) });
        let why = first_failure(std::future::pending(), &mut [&mut quiet]).await;
        assert_eq!(
            why.map(|end| end.to_string()).as_deref(),
            Some("the gRPC server ended before the shutdown")
        );
        let mut failing = Supervised::spawn("the dashboard", async { Err("bind".to_string()) });
        let why = first_failure(std::future::pending(), &mut [&mut failing]).await;
        let why = why.expect("it failed");
        assert_eq!(why.to_string(), "the dashboard failed: bind");
        assert_eq!(DaemonError::Task(vec![why]).exit_code(), 70);
    }

    #[tokio::test]
    async fn the_shutdown_ends_the_wait_without_a_failure() {
        let mut running = Supervised::spawn("the controller", async {
            std::future::pending::<()>().await;
            Ok(())
        });
        assert_eq!(first_failure(async {}, &mut [&mut running]).await, None);
        running.handle.take().unwrap().abort();
    }
}
