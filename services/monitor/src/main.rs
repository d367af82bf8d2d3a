//! `autoscaler-monitor`: reads flags and the environment, binds the port, installs the signal
//! handlers and runs the monitor until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use autoscaler_monitor::{Monitor, MonitorConfig};
use autoscaler_proto::auth::Token;
use clap::{Parser, ValueEnum};

/// MonitorS: polls every registered agent and keeps the fleet view.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// Address the monitor's gRPC server listens on.
    #[arg(
        long,
        env = "AUTOSCALER_MONITOR_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: String,
    /// File holding the group's shared token (otherwise AUTOSCALER_TOKEN).
    #[arg(long, env = "AUTOSCALER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// How often each agent is polled, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Deadline of one poll, in milliseconds (at most the poll interval).
    #[arg(long, default_value_t = 800)]
    poll_timeout_ms: u64,
    /// Consecutive missed polls after which an instance is unhealthy.
    #[arg(long, default_value_t = 3)]
    unhealthy_after: u32,
    /// Log format.
    #[arg(long, value_enum, env = "AUTOSCALER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn read_token(file: Option<&PathBuf>) -> anyhow::Result<Token> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => std::env::var("AUTOSCALER_TOKEN")
            .context("no group token: set AUTOSCALER_TOKEN or pass --token-file")?,
    };
    Token::new(&value).context("group token")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match flags.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(flags) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("autoscaler-monitor: {error:#}");
            std::process::ExitCode::from(64)
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let token = read_token(flags.token_file.as_ref())?;
    let config = MonitorConfig {
        poll_interval: Duration::from_millis(flags.poll_interval_ms),
        poll_timeout: Duration::from_millis(flags.poll_timeout_ms),
        unhealthy_after: flags.unhealthy_after,
        ..MonitorConfig::default()
    };
    config.validate()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        tracing::info!(listen = %listener.local_addr()?, monitor_id = %config.monitor_id, "monitor serving");
        let monitor = Monitor::start(config, token)?;
        monitor.serve(listener, shutdown_signal()).await?;
        Ok(())
    })
}
