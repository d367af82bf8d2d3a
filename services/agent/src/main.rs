//! `autoscaler-agent`: reads flags and the environment, binds the port, installs the signal
//! handlers and runs the agent library until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use autoscaler_agent::discovery::StaticLocator;
use autoscaler_agent::load::LoadModelConfig;
use autoscaler_agent::{AgentConfig, LoadConfig};
use autoscaler_proto::auth::Token;
use clap::{Parser, ValueEnum};

/// MonitorC: the autoscaler's agent on an application instance.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// The instance this agent runs on (an EC2 instance id, or `local-0007`).
    #[arg(long, env = "AUTOSCALER_INSTANCE_ID")]
    instance_id: String,
    /// Address to listen on.
    #[arg(
        long,
        env = "AUTOSCALER_AGENT_LISTEN",
        default_value = "127.0.0.1:50061"
    )]
    listen: String,
    /// Address the monitor should poll, `host:port` (default: the listen address).
    #[arg(long, env = "AUTOSCALER_AGENT_ADVERTISE")]
    advertise: Option<String>,
    /// Where the monitor is, `host:port`.
    #[arg(long, env = "AUTOSCALER_MONITOR")]
    monitor: String,
    /// File holding the group's shared token (otherwise AUTOSCALER_TOKEN).
    #[arg(long, env = "AUTOSCALER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Which load to report.
    #[arg(long, value_enum, default_value_t = Source::Simulated)]
    load: Source,
    /// Seed of the simulated load's noise.
    #[arg(long, env = "AUTOSCALER_LOAD_SEED", default_value_t = 1)]
    seed: u64,
    /// Simulated load at start, percent.
    #[arg(long, default_value_t = LoadModelConfig::default().initial)]
    initial_load: f64,
    /// Level the simulated load moves towards, percent.
    #[arg(long, default_value_t = LoadModelConfig::default().target)]
    target_load: f64,
    /// Largest change of the simulated load per second, in points.
    #[arg(long, default_value_t = LoadModelConfig::default().max_slope)]
    max_slope: f64,
    /// How far the target wanders on its own, in points (0: it stays put).
    #[arg(long, default_value_t = LoadModelConfig::default().drift_amplitude)]
    drift_amplitude: f64,
    /// Register again after this many milliseconds without a poll.
    #[arg(long, default_value_t = 5_000)]
    reregister_after_ms: u64,
    /// Log format.
    #[arg(long, value_enum, env = "AUTOSCALER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Source {
    Simulated,
    Cpu,
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
            eprintln!("autoscaler-agent: {error:#}");
            std::process::ExitCode::from(64)
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let token = read_token(flags.token_file.as_ref())?;
    let locator = StaticLocator::new(&flags.monitor)?;
    let mut config = AgentConfig::new(flags.instance_id, token);
    config.advertise_address = flags.advertise;
    config.load = match flags.load {
        Source::Cpu => LoadConfig::Cpu,
        Source::Simulated => LoadConfig::Simulated(LoadModelConfig {
            seed: flags.seed,
            initial: flags.initial_load,
            target: flags.target_load,
            max_slope: flags.max_slope,
            drift_amplitude: flags.drift_amplitude,
            ..LoadModelConfig::default()
        }),
    };
    if let LoadConfig::Simulated(model) = &config.load {
        model.validate()?;
    }
    config.registration.reregister_after = Duration::from_millis(flags.reregister_after_ms);

    // A current-thread runtime keeps the agent's footprint small beside the application.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        autoscaler_agent::run(config, listener, Arc::new(locator), shutdown_signal()).await?;
        Ok(())
    })
}
