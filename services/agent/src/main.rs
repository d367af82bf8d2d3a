//! `autoscaler-agent`: reads flags and the environment, binds the port, installs the signal
//! handlers and runs the agent library until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use autoscaler_agent::discovery::{FileLocator, MonitorLocator, SsmLocator, StaticLocator};
use autoscaler_agent::load::LoadModelConfig;
use autoscaler_agent::{AgentConfig, LoadConfig};
use autoscaler_aws::imds::Imds;
use autoscaler_aws::{GroupParameters, Parameters};
use autoscaler_cli::{LogArgs, TokenArgs};
use autoscaler_policy::backoff::Backoff;
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_proto::tls::{Role, TlsMaterial, Transport};
use clap::{Parser, ValueEnum};

// The system allocator, not mimalloc as in the monitor: at one poll a second the allocator's
// speed does not matter, and mimalloc's arenas kept 8.7 MB resident where glibc's malloc keeps
// 0.9 MB (measured on the `agent` profile's binary, polled at 1 Hz: docs/BENCHMARKS.md).

/// MonitorC: the autoscaler's agent on an application instance.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// The instance this agent runs on (an EC2 instance id, or `local-0007`); with --from-aws,
    /// read from instance metadata (IMDSv2) unless given.
    #[arg(long, env = "AUTOSCALER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// On an EC2 instance: the instance id and private address from IMDSv2, the monitor and the
    /// group token and the agent's TLS certificate from SSM Parameter Store (needs --group).
    #[arg(long)]
    from_aws: bool,
    /// The group's name, for the SSM parameters `/autoscaler/<group>/monitor` and `.../token`.
    #[arg(long, env = "AUTOSCALER_GROUP")]
    group: Option<String>,
    /// Read the group token from the SSM SecureString `/autoscaler/<group>/token`.
    #[arg(long)]
    token_from_ssm: bool,
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
    /// Where the monitor is, `host:port`; without it (or --monitor-file), read from the SSM
    /// parameter `/autoscaler/<group>/monitor` at every registration.
    #[arg(long, env = "AUTOSCALER_MONITOR", conflicts_with = "monitor_file")]
    monitor: Option<String>,
    /// A file holding the monitor's address (`host:port`), read at every registration: the
    /// leading daemon of a local group writes it (`<state-dir>/leader`).
    #[arg(long, env = "AUTOSCALER_MONITOR_FILE")]
    monitor_file: Option<PathBuf>,
    /// Directory with the group's TLS material: `ca.pem`, `agent.pem`, `agent.key` (the local
    /// provider's is `<state-dir>/tls`). With --from-aws or --tls-from-ssm, read from SSM instead.
    #[arg(long, env = "AUTOSCALER_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Read the TLS material from SSM: `/autoscaler/<group>/tls/ca` and `.../tls/agent`.
    #[arg(long)]
    tls_from_ssm: bool,
    /// Talk plaintext gRPC, no TLS: for local runs only, never on AWS.
    #[arg(long, env = "AUTOSCALER_PLAINTEXT", conflicts_with_all = ["tls_dir", "tls_from_ssm", "from_aws"])]
    plaintext: bool,
    #[command(flatten)]
    token: TokenArgs,
    /// Also serve Prometheus metrics over HTTP on this address (`GET /metrics`).
    #[arg(long, env = "AUTOSCALER_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Which load to report.
    #[arg(long, value_enum, env = "AUTOSCALER_LOAD", default_value_t = Source::Simulated)]
    load: Source,
    /// With `--load app`: where the application (`autoscaler-app`) listens, `host:port`.
    #[arg(long, env = "AUTOSCALER_APP_ADDRESS", default_value = "127.0.0.1:8080")]
    app_address: std::net::SocketAddr,
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
    /// A shell command run at the start, before the instance is put in service (Pending:Wait):
    /// exit 0 to continue, any other status to abandon the launch.
    #[arg(long, env = "AUTOSCALER_LAUNCH_HOOK")]
    launch_hook: Option<String>,
    /// A shell command run when the controller terminates the instance, after its drain and
    /// before the termination (Terminating:Wait).
    #[arg(long, env = "AUTOSCALER_TERMINATION_HOOK")]
    termination_hook: Option<String>,
    /// Seconds a hook may run before it is killed and --hook-default stands (1-7200). 300
    /// rather than EC2's 3600: a held hook holds capacity.
    #[arg(long, env = "AUTOSCALER_HOOK_TIMEOUT", default_value_t = 300)]
    hook_timeout: u64,
    /// The result of a hook that timed out: continue, or abandon (EC2's default).
    #[arg(long, env = "AUTOSCALER_HOOK_DEFAULT", default_value = "abandon")]
    hook_default: autoscaler_agent::hooks::HookResult,
    /// Register again after this many milliseconds without a poll.
    #[arg(long, default_value_t = 5_000)]
    reregister_after_ms: u64,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Source {
    /// A simulated load that changes gradually (the assignment's demo).
    Simulated,
    /// The host's CPU utilisation.
    Cpu,
    /// The application's share of its slot time in use, and its requests per second.
    App,
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    flags.log.init();
    autoscaler_cli::exit("autoscaler-agent", run(flags), |_| 64)
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let load = LoadModelConfig {
        seed: flags.seed,
        initial: flags.initial_load,
        target: flags.target_load,
        max_slope: flags.max_slope,
        drift_amplitude: flags.drift_amplitude,
        ..LoadModelConfig::default()
    };
    load.validate()?;
    let hooks = autoscaler_agent::hooks::HookConfig {
        launch: flags.launch_hook.clone(),
        termination: flags.termination_hook.clone(),
        timeout: Duration::from_secs(flags.hook_timeout),
        default_result: flags.hook_default,
    };
    hooks.validate().map_err(anyhow::Error::msg)?;
    let tls_from_ssm = flags.from_aws || flags.tls_from_ssm;
    if !flags.plaintext && !tls_from_ssm && flags.tls_dir.is_none() {
        anyhow::bail!(
            "no TLS material: pass --tls-dir DIR (ca.pem, agent.pem, agent.key), --tls-from-ssm, \
             or --plaintext for a local run"
        );
    }
    let needs_ssm = flags.from_aws
        || flags.token_from_ssm
        || tls_from_ssm
        || (flags.monitor.is_none() && flags.monitor_file.is_none());
    let parameters = match (&flags.group, needs_ssm) {
        (Some(group), _) => Some(GroupParameters::new(group)),
        (None, true) => anyhow::bail!(
            "no monitor address: pass --monitor HOST:PORT, or --group NAME to read it from SSM Parameter Store"
        ),
        (None, false) => None,
    };

    // A current-thread runtime keeps the agent's footprint small beside the application.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&flags.listen)
            .await
            .with_context(|| format!("cannot listen on {}", flags.listen))?;
        let port = listener.local_addr()?.port();
        let ssm = match needs_ssm {
            true => Some(Parameters::new(
                &autoscaler_aws::sdk_config(Default::default()).await,
            )),
            false => None,
        };

        let (instance_id, advertise) = if flags.from_aws {
            let (imds_id, private_ip) = Imds::default()
                .identity()
                .await
                .context("cannot read this instance's identity from IMDSv2")?;
            let advertise = flags.advertise.unwrap_or(format!("{private_ip}:{port}"));
            (flags.instance_id.unwrap_or(imds_id), Some(advertise))
        } else {
            let instance_id = flags
                .instance_id
                .context("no instance id: pass --instance-id, or --from-aws on EC2")?;
            (instance_id, flags.advertise)
        };
        let token = match (&ssm, &parameters) {
            (Some(ssm), Some(names)) if flags.from_aws || flags.token_from_ssm => {
                let name = names.token();
                wait_for("group token", || async {
                    let value = ssm.get(&name).await?;
                    Token::new(&value).context("the token in Parameter Store")
                })
                .await
            }
            _ => flags.token.read()?,
        };
        let transport = match (&ssm, &parameters, &flags.tls_dir) {
            _ if flags.plaintext => Transport::Plaintext,
            (Some(ssm), Some(names), _) if tls_from_ssm => Transport::tls(
                wait_for("TLS material", || async {
                    Ok(autoscaler_aws::tls_material(ssm, names, Role::Agent).await?)
                })
                .await,
            ),
            (_, _, Some(dir)) => Transport::tls(TlsMaterial::load(dir, Role::Agent)?),
            _ => unreachable!("checked before the runtime started"),
        };
        let locator: Arc<dyn MonitorLocator> =
            match (&flags.monitor, &flags.monitor_file, ssm, &parameters) {
                (Some(address), _, _, _) => Arc::new(StaticLocator::new(address)?),
                (None, Some(file), _, _) => Arc::new(FileLocator::new(file)?),
                (None, None, Some(ssm), Some(names)) => {
                    Arc::new(SsmLocator::new(ssm, names.monitor()))
                }
                _ => anyhow::bail!(
                    "no monitor address: pass --monitor HOST:PORT or --monitor-file FILE, or --group NAME to read it from SSM Parameter Store"
                ),
            };

        let mut config = AgentConfig::new(instance_id, Credentials::new(token, transport));
        config.advertise_address = advertise;
        config.load = match flags.load {
            Source::Cpu => LoadConfig::Cpu,
            Source::App => LoadConfig::App(flags.app_address),
            Source::Simulated => LoadConfig::Simulated(load),
        };
        config.registration.reregister_after = Duration::from_millis(flags.reregister_after_ms);
        config.hooks = hooks;
        let metrics = match &flags.metrics_listen {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} for metrics"))?,
            ),
            None => None,
        };
        let listeners = autoscaler_agent::Listeners {
            grpc: listener,
            metrics,
        };
        autoscaler_agent::run(
            config,
            listeners,
            locator,
            autoscaler_cli::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}

/// A value from Parameter Store, waiting (with backoff) until it is there and valid: the
/// workflow may still be writing it when the instance boots.
async fn wait_for<T, F, Fut>(what: &str, mut fetch: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match fetch().await {
            Ok(value) => return value,
            Err(error) => {
                let pause = backoff.failed();
                tracing::warn!(error = %autoscaler_proto::error_chain(error.as_ref()), retry_in = ?pause, "no {what} yet");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
