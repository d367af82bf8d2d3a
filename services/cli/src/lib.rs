//! What the mains of `autoscaler-agent` and `autoscaler-monitor` share: the group token's and the
//! log's flags, the shutdown signal and how a failure is reported on exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use autoscaler_proto::auth::Token;

/// Where the group's shared token comes from when no other source is asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// File holding the group's shared token (otherwise AUTOSCALER_TOKEN).
    #[arg(long, env = "AUTOSCALER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token from `--token-file`, or else `AUTOSCALER_TOKEN`.
    pub fn read(&self) -> anyhow::Result<Token> {
        let value = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
            None => std::env::var("AUTOSCALER_TOKEN")
                .context("no group token: set AUTOSCALER_TOKEN or pass --token-file")?,
        };
        Token::new(&value).context("group token")
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How the program logs (to stderr, filtered by `RUST_LOG`, `info` by default).
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, env = "AUTOSCALER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        match self.log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().init(),
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT, and says which. If a handler cannot be installed
/// (which the kernel does not refuse in practice), that is logged and the other still works.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn received(handler: &mut Option<Signal>) {
        match handler {
            Some(handler) => {
                handler.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let install = |kind: SignalKind, name: &str| {
        signal(kind)
            .inspect_err(|error| tracing::error!(%error, "cannot install a {name} handler"))
            .ok()
    };
    let mut terminate = install(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        _ = received(&mut terminate) => tracing::info!("SIGTERM received"),
        _ = received(&mut interrupt) => tracing::info!("SIGINT received"),
    }
}

/// The exit of a main: success, or `program: <error and its causes>` on stderr and the code
/// `code_of` gives the error.
pub fn exit(
    program: &str,
    result: anyhow::Result<()>,
    code_of: impl FnOnce(&anyhow::Error) -> u8,
) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "{program}: {}",
                autoscaler_proto::error_chain(error.as_ref())
            );
            ExitCode::from(code_of(&error))
        }
    }
}
