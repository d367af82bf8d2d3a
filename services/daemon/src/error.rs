//! Why the daemon could not run, typed: a bad config or flag, a platform that cannot be built
//! (a setting of another platform, its cloud, balancer or store failing to open), TLS material
//! not where it should be, or a task it needs ending while it ran. Each carries its source; the
//! exit status follows from the kind (64: it could not start, 70: it failed while running).

use std::path::PathBuf;

use autoscaler_controller::cloud::CloudError;
use autoscaler_monitor::MonitorError;
use autoscaler_proto::tls::TlsError;
use autoscaler_store::StoreError;

use crate::config::DaemonConfigError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] DaemonConfigError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error("the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    /// A setting this platform cannot honour: another platform's balancer or store, plaintext
    /// on EC2, a provider this build leaves out.
    #[error("provider: {0}")]
    Unsupported(&'static str),
    /// The platform's cloud or load balancer could not be opened.
    #[error("provider: {0}")]
    Cloud(#[from] CloudError),
    /// The monitor's address could not be published where the agents look for it.
    #[error("provider: cannot publish the monitor's address: {0}")]
    Publish(#[source] autoscaler_aws::SsmError),
    /// A file or directory of the platform's state could not be made or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A setting the store needs on this platform is missing.
    #[error("store: {0}")]
    StoreSetting(&'static str),
    #[error("store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// No TLS material where the flags or the platform say it is.
    #[error("TLS: {0}")]
    NoTls(&'static str),
    /// TLS material that could not be read, and where it was looked for.
    #[error("TLS: {place}: {source}")]
    TlsAt {
        place: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Tasks the daemon needs ended, failed or panicked while it ran.
    #[error("{}", list(.0))]
    Task(Vec<TaskEnd>),
    /// A term ended (the lease lost): `serve` says so to `run`, which stands by again. It never
    /// leaves `run`.
    #[error("{reason}")]
    LostLease { reason: String },
}

fn list(ends: &[TaskEnd]) -> String {
    let ends: Vec<String> = ends.iter().map(TaskEnd::to_string).collect();
    ends.join("; ")
}

impl DaemonError {
    /// The exit status for this error: 70 (EX_SOFTWARE) when the daemon failed while running,
    /// 64 when it could not start (a bad config, flag or file).
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Task(_) => 70,
            // EX_TEMPFAIL, were a lost term ever to end the process: started again, it stands by.
            DaemonError::LostLease { .. } => 75,
            _ => 64,
        }
    }
}

/// How a task the daemon needs ended before it was told to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskEnd {
    #[error("{task} failed: {error}")]
    Failed { task: &'static str, error: String },
    #[error("{task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("{task} was cancelled")]
    Cancelled { task: &'static str },
    #[error("{task} ended before the shutdown")]
    Returned { task: &'static str },
}
