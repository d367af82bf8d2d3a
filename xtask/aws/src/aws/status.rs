//! `cargo xtask status`: the group's instances as EC2 lists them, and the fleet as its monitor
//! reports it.

use autoscaler_policy::time::now_ms;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Aws, GroupArgs};

/// Where the group's leading monitor is: found through SSM (by `--group`), or given.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Ask this monitor (`host:port`) directly instead of AWS; the token comes from
    /// --token-file or AUTOSCALER_TOKEN, the operator's certificate from --tls-dir.
    #[arg(long)]
    pub monitor: Option<String>,
    /// File holding the group token, with --monitor.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// With --monitor: the group's TLS directory (`ca.pem`, `operator.pem`, `operator.key`);
    /// the demo prints it.
    #[arg(long, env = "AUTOSCALER_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// With --monitor: talk plaintext, to a monitor started with --plaintext.
    #[arg(long, conflicts_with = "tls_dir")]
    pub plaintext: bool,
}

impl MonitorArgs {
    /// The monitor's address and the credentials to reach it, when `--monitor` gives it.
    pub fn given(&self) -> anyhow::Result<Option<(String, autoscaler_proto::auth::Credentials)>> {
        let Some(address) = &self.monitor else {
            return Ok(None);
        };
        let credentials = given_credentials(
            self.token_file.as_deref(),
            self.tls_dir.as_deref(),
            self.plaintext,
        )?;
        Ok(Some((address.clone(), credentials)))
    }

    /// A client of the monitor: the one given, or the group's leader as SSM publishes it.
    pub async fn daemon(&self) -> anyhow::Result<crate::status_client::Daemon> {
        let (address, credentials) = match self.given()? {
            Some(given) => given,
            None => {
                let aws = Aws::connect(&self.group.group).await?;
                let address = aws.parameters.get(&aws.names.monitor()).await?;
                (address, aws.operator_credentials().await?)
            }
        };
        crate::status_client::Daemon::new(&address, &credentials)
    }
}

/// The group as the cloud sees it, beside what the monitor knows when it is reachable; or, with
/// `--monitor`, the fleet straight from a monitor (the local demo, or a monitor in reach).
#[derive(Debug, clap::Args)]
pub struct Status {
    #[command(flatten)]
    pub target: MonitorArgs,
    /// Print the activity history (every decision record the group's store keeps, across
    /// restarts and failovers) instead of the fleet.
    #[arg(long)]
    pub activity: bool,
    /// With --activity: how far back (`30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", requires = "activity")]
    pub since: String,
    /// Keep printing decisions as they happen (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,
}

impl Status {
    pub async fn run(self) -> anyhow::Result<()> {
        let (address, credentials) = match self.target.given()? {
            Some(given) => given,
            None => {
                let aws = Aws::connect(&self.target.group.group).await?;
                if !self.activity {
                    print_status(&aws).await?;
                    if !self.follow {
                        return Ok(());
                    }
                }
                let address = aws.parameters.get(&aws.names.monitor()).await?;
                (address, aws.operator_credentials().await?)
            }
        };
        let mut daemon = crate::status_client::Daemon::new(&address, &credentials)?;
        if self.activity {
            let span = crate::status_client::parse_span(&self.since)?;
            let since = now_ms() - i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
            let records = daemon.activity(since).await?;
            if records.is_empty() {
                println!("no decision recorded in the last {}", self.since);
            }
            for record in &records {
                crate::status_client::print_activity(record);
            }
            return Ok(());
        }
        let report = daemon.status_after(0).await?;
        if self.target.monitor.is_some() {
            print_fleet(&report);
        }
        if !self.follow {
            return Ok(());
        }
        let mut seen = 0;
        loop {
            let report = daemon.status_after(seen).await?;
            for record in &report.decisions {
                seen = seen.max(record.sequence);
                let at = record.at_unix_ms as f64 / 1000.0;
                println!("#{:<4} {at:.1} {}", record.sequence, record.summary);
                for outcome in &record.outcome {
                    println!("      -> {outcome}");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The credentials to reach a monitor given by address: the token from `token_file` or
/// AUTOSCALER_TOKEN, the operator's certificate from `tls_dir` (or plaintext when asked).
pub fn given_credentials(
    token_file: Option<&std::path::Path>,
    tls_dir: Option<&std::path::Path>,
    plaintext: bool,
) -> anyhow::Result<autoscaler_proto::auth::Credentials> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::env::var("AUTOSCALER_TOKEN")
            .context("no group token: pass --token-file or set AUTOSCALER_TOKEN")?,
    };
    if tls_dir.is_none() && !plaintext {
        bail!(
            "no TLS material: pass --tls-dir DIR (the demo prints it), or --plaintext for a monitor started with --plaintext"
        );
    }
    crate::status_client::credentials(token.trim(), tls_dir)
}

/// The bounds the schedules set, the windows holding (until when) and the next.
/// What the forecaster says, on one line: its mode and state, the demand of the lead time and
/// the floor it needs, and its last check.
fn forecast_text(f: &autoscaler_proto::v1::Forecast) -> String {
    let state = if f.fallen_back {
        "fallen back to forecast-only (error past its bound)"
    } else if f.acting {
        "acting"
    } else if f.mode == "forecast-only" {
        "not acting"
    } else {
        "waiting for 24 h of history"
    };
    let check = match (f.error_percent, f.baseline_error_percent, f.under_percent) {
        (Some(error), Some(baseline), Some(under)) => format!(
            "error {error:.1} % (seasonal-naive {baseline:.1} %), under {under:.0} % of the time"
        ),
        _ => "not scored yet".to_string(),
    };
    format!(
        "{} ({state}): {:.2} capacities within {} s need {} at {} %; {check}; {:.1} h recorded",
        f.mode, f.demand, f.lead_secs, f.floor, f.target_percent, f.history_hours
    )
}

fn schedule_text(schedule: &autoscaler_proto::v1::Schedule) -> String {
    use autoscaler_policy::schedule::rfc3339;
    let mut parts: Vec<String> = schedule
        .active
        .iter()
        .map(|w| {
            format!(
                "window {} (floor {}) until {}",
                w.name,
                w.min_instances,
                rfc3339(w.ends_at_ms)
            )
        })
        .collect();
    if !schedule.change.is_empty() {
        parts.push(format!("change {}", schedule.change));
    }
    if let Some(next) = &schedule.next {
        parts.push(format!(
            "next: {} (floor {}) at {}",
            next.name,
            next.min_instances,
            rfc3339(next.starts_at_ms)
        ));
    }
    format!(
        "bounds [{}, {}]; {}",
        schedule.min_instances,
        schedule.max_instances,
        parts.join("; ")
    )
}

/// An instance refresh on one line: its number, target, status, progress and why.
pub fn refresh_text(r: &autoscaler_proto::v1::InstanceRefresh) -> String {
    let mut line = format!(
        "{} to {}: {}, {} % done, {} left, {} replaced",
        r.id, r.target, r.status, r.percent_complete, r.instances_left, r.replaced
    );
    if r.paused_until_ms > 0 {
        let until = autoscaler_policy::schedule::rfc3339(r.paused_until_ms);
        line.push_str(&format!(", paused until {until}"));
    }
    if !r.reason.is_empty() {
        line.push_str(&format!(" ({})", r.reason));
    }
    line
}

/// The fleet as one monitor reports it.
pub fn print_fleet(report: &autoscaler_proto::v1::GetStatusResponse) {
    println!(
        "group {}: {} instances, desired {}, bounds [{}, {}]",
        report.group,
        report.instances.iter().filter(|i| i.listed()).count(),
        report.desired_instances,
        report.min_instances,
        report.max_instances
    );
    println!(
        "{:<20} {:<9} {:<12} {:>7}  {:<21} {:>6}  {:<10} {:>8} {:>6}  VERSION",
        "INSTANCE", "STATE", "HEALTH", "LOAD", "ADDRESS", "MISSES", "TARGET", "IN-FLIGHT", "REQ/S"
    );
    for instance in &report.instances {
        let target = match instance.target_state().name() {
            "" => "-",
            name => name,
        };
        println!(
            "{:<20} {:<9} {:<12} {:>7}  {:<21} {:>6}  {:<10} {:>8} {:>6}  {}",
            instance.instance_id,
            instance.state().name(),
            instance.health().name(),
            xtask::status_client::load_text(instance.load_percent),
            instance.address,
            instance.consecutive_misses,
            target,
            instance
                .requests_in_flight
                .map_or("-".to_string(), |n| n.to_string()),
            instance
                .requests_per_second
                .map_or("-".to_string(), |r| format!("{r:.0}")),
            match instance.version.as_str() {
                "" => "-",
                version => version,
            },
        );
        if !instance.target_reason.is_empty() {
            println!("{:<20} target: {}", "", instance.target_reason);
        }
        let held = !matches!(instance.lifecycle_state.as_str(), "" | "InService");
        if held || !instance.hook_summary.is_empty() {
            println!(
                "{:<20} lifecycle: {}{}",
                "",
                match instance.lifecycle_state.as_str() {
                    "" => "InService",
                    state => state,
                },
                match instance.hook_summary.as_str() {
                    "" => String::new(),
                    summary => format!(" ({summary})"),
                }
            );
        }
    }
    if let Some(failing) = &report.launch_failures {
        println!(
            "launches failing: {} in a row, next attempt in {:.0} s; last: {}",
            failing.consecutive,
            (failing.next_attempt_in_ms as f64 / 1000.0).ceil(),
            failing.last_reason
        );
    }
    if let Some(schedule) = &report.schedule {
        println!("schedule: {}", schedule_text(schedule));
    }
    if let Some(forecast) = &report.forecast {
        println!("forecast: {}", forecast_text(forecast));
    }
    if !report.launch_version.is_empty() {
        println!("launching: {}", report.launch_version);
    }
    if !report.operator_policy_toml.is_empty() {
        let lines: Vec<&str> = report.operator_policy_toml.lines().map(str::trim).collect();
        println!("policy (set by an operator): {}", lines.join(", "));
    }
    if let Some(refresh) = &report.refresh {
        println!("refresh: {}", refresh_text(refresh));
    }
    if let Some(last) = report.decisions.last() {
        println!("last decision: {}", last.summary);
    }
}

/// The load balancer's targets, if the group has one.
async fn print_targets(aws: &Aws) -> anyhow::Result<()> {
    let Ok(target_group) = aws.parameters.get(&aws.names.target_group()).await else {
        return Ok(());
    };
    let dns = aws
        .parameters
        .get(&aws.names.load_balancer())
        .await
        .unwrap_or_default();
    println!("load balancer http://{dns}/ (target group {target_group})");
    println!("{:<20} {:<12} REASON", "TARGET", "HEALTH");
    for (instance_id, state, reason) in aws.target_health(&target_group).await? {
        println!("{instance_id:<20} {state:<12} {reason}");
    }
    Ok(())
}

pub async fn print_status(aws: &Aws) -> anyhow::Result<()> {
    let instances = aws.instances(&[]).await?;
    let monitor = match (
        aws.parameters.get(&aws.names.monitor()).await,
        aws.operator_credentials().await,
    ) {
        (Ok(address), Ok(credentials)) => {
            match crate::status_client::get_status(&address, &credentials).await {
                Ok(status) => Some(status),
                Err(error) => {
                    println!("(the monitor at {address} is not reachable from here: {error})");
                    None
                }
            }
        }
        _ => {
            println!("(no monitor address published for group {})", aws.group);
            None
        }
    };
    println!(
        "{:<20} {:<8} {:<14} {:<12} {:<15} {:<10} {:>6}",
        "INSTANCE", "ROLE", "STATE", "ZONE", "PRIVATE IP", "HEALTH", "LOAD"
    );
    for instance in &instances {
        let seen = monitor.as_ref().and_then(|s| {
            s.instances
                .iter()
                .find(|i| i.instance_id == instance.instance_id)
        });
        println!(
            "{:<20} {:<8} {:<14} {:<12} {:<15} {:<10} {:>6}",
            instance.instance_id,
            instance.role.map_or("?", |r| r.tag_value()),
            instance.state,
            instance.zone,
            instance.private_ip,
            seen.map_or("-", |i| i.health().name()),
            seen.and_then(|i| i.load_percent)
                .map_or("-".to_string(), |l| format!("{l:.1}%"))
        );
    }
    if let Some(last) = monitor.as_ref().and_then(|s| s.decisions.last()) {
        println!("last decision: {}", last.summary);
    }
    print_targets(aws).await
}
