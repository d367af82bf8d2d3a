//! `autoscaler-monitor`: reads flags and the environment, binds the port, installs the signal
//! handlers and runs the monitor and the controller until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use autoscaler_aws::imds::Imds;
use autoscaler_aws::{GroupParameters, Parameters};
use autoscaler_cli::{LogArgs, TokenArgs};
use autoscaler_daemon::daemon::{self, DaemonConfig, ProviderSection};
use autoscaler_monitor::Monitor;
use autoscaler_proto::auth::{Credentials, Token};
use clap::Parser;

/// mimalloc rather than glibc's malloc: a poll allocates a few dozen small buffers across two
/// threads, and glibc's arenas spent a quarter of the monitor's CPU on them at 10,000 agents
/// (docs/BENCHMARKS.md, "Before and after").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MonitorS and ControllerASG: polls every registered agent, keeps the fleet view, and keeps the
/// fleet between its bounds.
#[derive(Clone, Debug, Parser)]
#[command(version)]
struct Flags {
    /// TOML config file (see provisioning/autoscaler.example.toml); without it, the defaults.
    #[arg(long, env = "AUTOSCALER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `monitor.listen`.
    #[arg(long, env = "AUTOSCALER_MONITOR_LISTEN")]
    listen: Option<String>,
    /// Overrides `monitor.http_listen`: where the dashboard and metrics are served.
    #[arg(long)]
    http_listen: Option<String>,
    /// Overrides `group`.
    #[arg(long)]
    group: Option<String>,
    /// Overrides `controller.min_instances`.
    #[arg(long)]
    min_instances: Option<u32>,
    /// Overrides `controller.max_instances`.
    #[arg(long)]
    max_instances: Option<u32>,
    /// Overrides `monitor.poll_interval_ms`.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// Overrides `monitor.poll_timeout_ms`.
    #[arg(long)]
    poll_timeout_ms: Option<u64>,
    /// Overrides `monitor.unhealthy_after`.
    #[arg(long)]
    unhealthy_after: Option<u32>,
    /// Overrides the local provider's `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Overrides `load_balancer.listen`: where clients send their requests.
    #[arg(long)]
    balancer_listen: Option<String>,
    /// The `host:port` agents reach the monitor at (default: the listen address, or with
    /// --from-aws this instance's private IP and the listen port).
    #[arg(long)]
    advertise: Option<String>,
    /// On EC2: the group token from the SSM SecureString `/autoscaler/<group>/token` and the
    /// address to advertise from instance metadata (IMDSv2).
    #[arg(long)]
    from_aws: bool,
    /// Read the group token from the SSM SecureString `/autoscaler/<group>/token`.
    #[arg(long)]
    token_from_ssm: bool,
    /// Run the monitor alone: no controller, nothing launched or terminated.
    #[arg(long)]
    no_controller: bool,
    #[command(flatten)]
    token: TokenArgs,
    /// Directory with the group's TLS material (`ca.pem`, `monitor.pem`, `monitor.key`; local
    /// agents get `agent.pem`, `agent.key` from it too). Default: with the local provider
    /// `<state-dir>/tls`, made with a new group CA if absent; on AWS the SSM parameters
    /// `/autoscaler/<group>/tls/ca` and `.../tls/monitor`, made by `cargo xtask up`.
    #[arg(long, env = "AUTOSCALER_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Talk plaintext gRPC, no TLS: for local runs only (refused with the EC2 provider).
    #[arg(long, env = "AUTOSCALER_PLAINTEXT", conflicts_with = "tls_dir")]
    plaintext: bool,
    /// Writes the demand the group's store recorded (the last `history_days`, once a minute) as a
    /// simulator trace (`time,demand` CSV) to this file, and exits: what `cargo xtask simulate
    /// --history` replays.
    #[arg(long)]
    export_demand: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    flags.log.init();
    // 70 when it failed while running (systemd restarts it), 64 when it could not start.
    autoscaler_cli::exit("autoscaler-monitor", run(flags), |error| {
        error
            .downcast_ref::<daemon::DaemonError>()
            .map_or(64, daemon::DaemonError::exit_code)
    })
}

/// Writes the group's recorded demand as a simulator trace: seconds from the first sample, the
/// demand in instance capacities; a comment line gives the first sample's time (`# start`).
fn export_demand(config: &DaemonConfig, path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let aws = match config.provider {
            ProviderSection::Ec2(_) => Some(autoscaler_aws::sdk_config(Default::default()).await),
            ProviderSection::Local(_) => None,
        };
        let options = daemon::RunOptions {
            agent_binary: PathBuf::new(),
            advertise: String::new(),
            aws,
            http: None,
            tls: daemon::TlsSource::Plaintext,
            temp_dir: std::env::temp_dir(),
            path: std::env::var_os("PATH").unwrap_or_default(),
            reload: None,
        };
        let platform = autoscaler_daemon::platform::open(config, &options)?;
        let store = platform.store().with_context(|| {
            format!(
                "group {} has no store ([store] kind), so nothing was recorded",
                config.group
            )
        })?;
        let days = config.controller.demand_days();
        let since = autoscaler_policy::time::now_ms() - i64::from(days) * 86_400_000;
        let samples = store
            .demand(since)
            .await
            .context("reading the recorded demand")?;
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            anyhow::bail!(
                "group {}'s store holds no recorded demand (the leader records it once a minute)",
                config.group
            );
        };
        let mut csv = format!(
            "# the demand group {} recorded, {} minutes\n# start {}\ntime,demand\n",
            config.group,
            samples.len(),
            autoscaler_policy::schedule::rfc3339(first.at_ms)
        );
        for sample in &samples {
            csv.push_str(&format!(
                "{},{:.4}\n",
                (sample.at_ms - first.at_ms) / 1_000,
                sample.capacities
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {} minutes of group {}'s demand ({} to {}) to {}",
            samples.len(),
            config.group,
            autoscaler_policy::schedule::rfc3339(first.at_ms),
            autoscaler_policy::schedule::rfc3339(last.at_ms),
            path.display()
        );
        Ok(())
    })
}

/// The controller's settings, read again from the config file (with the flags' overrides) at
/// every SIGHUP. A file that does not read or check is said in the log, naming the field, and
/// changes nothing; the other sections need a restart, and a change there is said.
fn reload_on_sighup(
    flags: &Flags,
    config: &DaemonConfig,
) -> anyhow::Result<tokio::sync::watch::Receiver<autoscaler_policy::config::ControllerConfig>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (sender, receiver) = tokio::sync::watch::channel(config.controller.clone());
    let flags = flags.clone();
    let running = config.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match load_config(&flags).and_then(|read| {
                read.validate()?;
                Ok(read)
            }) {
                Ok(read) => {
                    let mut others = read.clone();
                    others.controller = running.controller.clone();
                    if others != running {
                        tracing::warn!(
                            "SIGHUP: only [controller] is taken up at run time; the other sections' changes need a restart"
                        );
                    }
                    tracing::info!("SIGHUP: the config file read again");
                    let _ = sender.send(read.controller);
                }
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "SIGHUP: the config file was not taken up; nothing changed"
                ),
            }
        }
    });
    Ok(receiver)
}

/// The config file with the flags' overrides applied, checked.
fn load_config(flags: &Flags) -> anyhow::Result<DaemonConfig> {
    let text = match &flags.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?,
        None => String::new(),
    };
    let mut config: DaemonConfig = toml::from_str(&text).with_context(|| match &flags.config {
        Some(path) => format!("config file {}", path.display()),
        None => "default config".to_string(),
    })?;
    if let Some(listen) = &flags.listen {
        config.monitor.listen = listen.clone();
    }
    if flags.no_controller && flags.http_listen.is_some() {
        anyhow::bail!(
            "--http-listen cannot be served with --no-controller: the dashboard and /metrics need the controller; drop one of the two"
        );
    }
    if let Some(http) = &flags.http_listen {
        config.monitor.http_listen = Some(http.clone());
    }
    if let Some(group) = &flags.group {
        config.group = group.clone();
    }
    if let Some(min) = flags.min_instances {
        config.controller.min_instances = min;
    }
    if let Some(max) = flags.max_instances {
        config.controller.max_instances = max;
    }
    if let Some(interval) = flags.poll_interval_ms {
        config.monitor.poll_interval_ms = interval;
    }
    if let Some(timeout) = flags.poll_timeout_ms {
        config.monitor.poll_timeout_ms = timeout;
    }
    if let Some(misses) = flags.unhealthy_after {
        config.monitor.unhealthy_after = misses;
    }
    if let Some(listen) = &flags.balancer_listen {
        match &mut config.load_balancer {
            Some(daemon::LoadBalancerSection::Haproxy(haproxy)) => haproxy.listen = listen.clone(),
            _ => anyhow::bail!(
                "--balancer-listen needs the local load balancer: the config has no [load_balancer] of kind \"haproxy\""
            ),
        }
    }
    if let Some(dir) = &flags.state_dir {
        let ProviderSection::Local(local) = &mut config.provider else {
            anyhow::bail!("--state-dir applies to the local provider only");
        };
        local.state_dir = Some(dir.clone());
    }
    config.validate()?;
    Ok(config)
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let config = load_config(&flags)?;
    if let Some(path) = &flags.export_demand {
        return export_demand(&config, path);
    }
    let token_from_ssm = flags.from_aws || flags.token_from_ssm;
    let token = match token_from_ssm {
        true => None,
        false => Some(flags.token.read()?),
    };
    let agent_binary = std::env::current_exe()
        .context("cannot find this program's path")?
        .with_file_name("autoscaler-agent");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listen = &config.monitor.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let on_aws = token_from_ssm || matches!(config.provider, ProviderSection::Ec2(_));
        let aws = match on_aws {
            true => Some(autoscaler_aws::sdk_config(Default::default()).await),
            false => None,
        };
        let token = match (token, &aws) {
            (Some(token), _) => token,
            (None, Some(sdk)) => {
                let name = GroupParameters::new(&config.group).token();
                let value = Parameters::new(sdk)
                    .get(&name)
                    .await
                    .context("reading the group token")?;
                Token::new(&value).with_context(|| format!("the token in {name}"))?
            }
            (None, None) => unreachable!("token_from_ssm implies on_aws"),
        };
        let advertise = match (&flags.advertise, flags.from_aws) {
            (Some(address), _) => address.clone(),
            (None, true) => {
                let (_, private_ip) = Imds::default()
                    .identity()
                    .await
                    .context("cannot read this instance's private IP from IMDSv2")?;
                format!("{private_ip}:{}", local.port())
            }
            (None, false) if local.ip().is_unspecified() => anyhow::bail!(
                "listening on {local}, which agents cannot reach: pass --advertise HOST:PORT"
            ),
            (None, false) => local.to_string(),
        };
        tracing::info!(listen = %local, %advertise, "monitor serving");
        let tls = match (&flags.tls_dir, flags.plaintext) {
            (_, true) => daemon::TlsSource::Plaintext,
            (Some(dir), false) => daemon::TlsSource::Dir(dir.clone()),
            (None, false) => daemon::TlsSource::Auto,
        };
        // What can be checked before anything is launched is checked (exit 64, naming the flag
        // or the file).
        daemon::check_flags(&config, &advertise, &tls)?;
        if flags.no_controller {
            // The Status service, the dashboard and /metrics report the controller's view:
            // alone, the monitor serves registration, health and reflection, and says so.
            if let Some(address) = &config.monitor.http_listen {
                tracing::warn!(
                    http_listen = %address,
                    "monitor.http_listen is not served with --no-controller: the dashboard and /metrics need the controller"
                );
            }
            let (transport, _) = tls.resolve(&config.group, None, aws.as_ref()).await?;
            let credentials = Credentials::new(token, transport);
            let monitor = Monitor::start(config.monitor_config(), credentials)?;
            monitor
                .serve(listener, autoscaler_cli::shutdown_signal())
                .await?;
        } else {
            let http = match &config.monitor.http_listen {
                Some(address) => Some(
                    tokio::net::TcpListener::bind(address)
                        .await
                        .with_context(|| format!("cannot listen on {address} for the dashboard"))?,
                ),
                None => None,
            };
            let options = daemon::RunOptions {
                agent_binary,
                advertise,
                aws,
                http,
                tls,
                temp_dir: std::env::temp_dir(),
                path: std::env::var_os("PATH").unwrap_or_default(),
                reload: Some(reload_on_sighup(&flags, &config)?),
            };
            daemon::run(
                config,
                token,
                listener,
                options,
                autoscaler_cli::shutdown_signal(),
            )
            .await?;
        }
        Ok(())
    })
}
