//! `autoscaler-app`: reads its flags, binds the port, installs the signal handlers and serves the
//! application until SIGTERM or SIGINT. Exits 64 on a bad flag, 1 when it fails while running.

use std::time::Duration;

use anyhow::Context;
use autoscaler_app::{AppConfig, AppError};
use clap::Parser;

/// The AppInstance: an HTTP service behind the load balancer (`GET /` does one request's work,
/// `GET /healthz` answers health checks, `GET /stats` gives the counters the agent reads).
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// The instance this app runs on, named in its answers.
    #[arg(long, env = "AUTOSCALER_INSTANCE_ID")]
    instance_id: String,
    /// Address to listen on.
    #[arg(long, env = "AUTOSCALER_APP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Requests served at once (the app's capacity is slots / service time).
    #[arg(long, default_value_t = AppConfig::new("-").slots)]
    slots: u32,
    /// How long a request holds its slot, in milliseconds.
    #[arg(long, default_value_t = AppConfig::new("-").service_time.as_millis() as u64)]
    service_ms: u64,
    /// How much of it is spent computing, in milliseconds.
    #[arg(long, default_value_t = AppConfig::new("-").cpu_time.as_millis() as u64)]
    cpu_ms: u64,
    /// Requests that may wait for a slot before more are refused with 503.
    #[arg(long, default_value_t = AppConfig::new("-").max_queue)]
    max_queue: u32,
    /// Answer the health path with 503 throughout (a broken version, to rehearse a rollback).
    #[arg(long)]
    fail_health: bool,
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(flags) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("autoscaler-app: {error:#}");
            let usage = error
                .downcast_ref::<AppError>()
                .is_some_and(|e| matches!(e, AppError::Config(_)));
            std::process::ExitCode::from(if usage { 64 } else { 1 })
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let mut config = AppConfig::new(flags.instance_id);
    config.slots = flags.slots;
    config.service_time = Duration::from_millis(flags.service_ms);
    config.cpu_time = Duration::from_millis(flags.cpu_ms);
    config.max_queue = flags.max_queue;
    config.fail_health = flags.fail_health;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.slots.clamp(1, 64) as usize)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        autoscaler_app::run(config, listener, shutdown).await?;
        Ok(())
    })
}
