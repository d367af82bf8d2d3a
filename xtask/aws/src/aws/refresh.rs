//! `cargo xtask refresh`: rolls the group onto a new launch specification (on AWS, `--ami` after
//! a new `bake-ami`; locally, extra agent arguments) with an instance refresh, or cancels, rolls
//! back or describes the running one; `cargo xtask update`: the bounds, the policy and the
//! desired capacity (`set-desired`: that alone); all through the monitor's Operator service.

use std::time::Duration;

use anyhow::bail;
use autoscaler_proto::v1;

use super::status::{MonitorArgs, refresh_text};

/// Changes the group's bounds and policy, or sets its desired capacity once.
#[derive(Debug, clap::Args)]
pub struct Update {
    #[command(flatten)]
    pub monitor: MonitorArgs,
    /// The fewest instances (at least 2, as the config requires).
    #[arg(long)]
    pub min: Option<u32>,
    /// The most instances (within the account's instance limit).
    #[arg(long)]
    pub max: Option<u32>,
    /// The desired capacity, once: the policy goes on from it after its cooldowns.
    #[arg(long)]
    pub desired: Option<u32>,
    /// The scaling policy from now on, as the config's `[controller.policy]` table in TOML, for
    /// example 'kind = "target-tracking"' with 'target = 60.0' on the next line.
    #[arg(long)]
    pub policy: Option<String>,
    /// The policy from a file holding a `[controller.policy]` table's lines.
    #[arg(long, conflicts_with = "policy")]
    pub policy_file: Option<std::path::PathBuf>,
}

/// Sets the group's desired capacity once (EC2's set-desired-capacity): the policy goes on
/// from it after its cooldowns.
#[derive(Debug, clap::Args)]
pub struct SetDesired {
    #[command(flatten)]
    pub monitor: MonitorArgs,
    /// The desired capacity, within the bounds.
    pub desired: u32,
}

impl SetDesired {
    pub async fn run(self) -> anyhow::Result<()> {
        Update {
            monitor: self.monitor,
            min: None,
            max: None,
            desired: Some(self.desired),
            policy: None,
            policy_file: None,
        }
        .run()
        .await
    }
}

impl Update {
    pub async fn run(self) -> anyhow::Result<()> {
        let policy_toml = match (&self.policy, &self.policy_file) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(file)) => Some(std::fs::read_to_string(file).map_err(|error| {
                anyhow::anyhow!("cannot read the policy from {}: {error}", file.display())
            })?),
            (None, None) => None,
        };
        let mut daemon = self.monitor.daemon().await?;
        let settings = daemon
            .update_group(v1::UpdateGroupRequest {
                min_instances: self.min,
                max_instances: self.max,
                desired_capacity: self.desired,
                policy_toml,
            })
            .await?;
        println!(
            "bounds [{}, {}]{}",
            settings.min_instances,
            settings.max_instances,
            self.desired
                .map_or(String::new(), |d| format!(", desired capacity {d}"))
        );
        match settings.policy_toml.as_str() {
            "" => println!("policy: the config file's"),
            text => println!("policy (set by an operator):\n{}", text.trim_end()),
        }
        Ok(())
    }
}

/// Starts, cancels, rolls back or describes an instance refresh.
#[derive(Debug, clap::Args)]
pub struct Refresh {
    #[command(flatten)]
    pub monitor: MonitorArgs,
    /// EC2: the AMI the new instances are launched from (after `bake-ami`).
    #[arg(long)]
    pub ami: Option<String>,
    /// EC2: the instance type of the new instances.
    #[arg(long)]
    pub instance_type: Option<String>,
    /// EC2: a file holding the user data every new instance runs at boot, in place of the
    /// group's (its agent's settings in /etc/autoscaler/agent.env, lifecycle hooks).
    #[arg(long)]
    pub user_data: Option<std::path::PathBuf>,
    /// Locally: an argument added to every new agent's (repeat it).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Locally: an argument added to every new application's (repeat it).
    #[arg(long = "app-arg", allow_hyphen_values = true)]
    pub app_args: Vec<String>,
    /// Keep at least this share of the desired capacity in service (EC2's default 90).
    #[arg(long)]
    pub min_healthy: Option<u32>,
    /// Run at most this share of it at once; above 100 new instances launch first (default 100).
    #[arg(long)]
    pub max_healthy: Option<u32>,
    /// Seconds a new instance serves before it counts (default: the controller's warm-up).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Leave the instances already on the new version.
    #[arg(long)]
    pub skip_matching: bool,
    /// Pause at these percentages replaced (`50,100`).
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Vec<u32>,
    /// Seconds each checkpoint pauses (default 3600).
    #[arg(long)]
    pub checkpoint_delay: Option<u64>,
    /// Seconds the new instances are watched at the end before it succeeds (default 0).
    #[arg(long)]
    pub bake: Option<u64>,
    /// Stop, rather than roll back, when new instances fail.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Cancel the running refresh (its instances stay as they are).
    #[arg(long, conflicts_with_all = ["rollback", "describe"])]
    pub cancel: bool,
    /// Roll the running refresh back to the version before it.
    #[arg(long, conflicts_with = "describe")]
    pub rollback: bool,
    /// Print the versions and the running (or last) refresh.
    #[arg(long)]
    pub describe: bool,
    /// Follow the refresh until it ends, printing its progress.
    #[arg(long)]
    pub wait: bool,
}

impl Refresh {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut daemon = self.monitor.daemon().await?;
        if self.describe {
            let described = daemon.describe_refresh().await?;
            for version in &described.versions {
                let spec = version.spec.clone().unwrap_or_default();
                println!(
                    "{} since {}: image {}, type {}, agent args {:?}, app args {:?}{}",
                    version.version,
                    autoscaler_policy::schedule::rfc3339(version.since_ms),
                    spec.image_id.as_deref().unwrap_or("(the group's)"),
                    spec.instance_type.as_deref().unwrap_or("(the group's)"),
                    spec.agent_args,
                    spec.app_args,
                    spec.user_data.as_ref().map_or(String::new(), |u| format!(
                        ", user data of {} bytes",
                        u.len()
                    ))
                );
            }
            match &described.refresh {
                Some(refresh) => println!("refresh {}", refresh_text(refresh)),
                None => println!("no instance refresh yet"),
            }
            return Ok(());
        }
        let refresh = if self.cancel || self.rollback {
            daemon.stop_refresh(self.rollback).await?
        } else {
            let user_data = match &self.user_data {
                Some(file) => Some(std::fs::read_to_string(file).map_err(|error| {
                    anyhow::anyhow!("cannot read the user data from {}: {error}", file.display())
                })?),
                None => None,
            };
            let changed = self.ami.is_some()
                || self.instance_type.is_some()
                || user_data.is_some()
                || !self.agent_args.is_empty()
                || !self.app_args.is_empty();
            let request = v1::StartInstanceRefreshRequest {
                spec: changed.then(|| v1::LaunchSpec {
                    image_id: self.ami.clone(),
                    instance_type: self.instance_type.clone(),
                    agent_args: self.agent_args.clone(),
                    app_args: self.app_args.clone(),
                    user_data,
                }),
                preferences: Some(v1::RefreshPreferences {
                    min_healthy_percentage: self.min_healthy,
                    max_healthy_percentage: self.max_healthy,
                    instance_warmup_secs: self.warmup,
                    skip_matching: self.skip_matching,
                    checkpoints: self.checkpoints.clone(),
                    checkpoint_delay_secs: self.checkpoint_delay,
                    bake_time_secs: self.bake,
                    auto_rollback: self.no_auto_rollback.then_some(false),
                    ..v1::RefreshPreferences::default()
                }),
            };
            daemon.start_refresh(request).await?
        };
        println!("refresh {}", refresh_text(&refresh));
        if !self.wait {
            return Ok(());
        }
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let status = daemon.status_after(u64::MAX).await?;
            let Some(refresh) = status.refresh else {
                bail!("the monitor reports no refresh (did its leader change?)");
            };
            let line = refresh_text(&refresh);
            if line != last {
                println!("refresh {line}");
                last = line;
            }
            match refresh.status.as_str() {
                "successful" => return Ok(()),
                "cancelled" | "rolled-back" | "failed" => {
                    bail!("the refresh ended {}: {}", refresh.status, refresh.reason)
                }
                _ => {}
            }
        }
    }
}
