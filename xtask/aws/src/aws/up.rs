//! `cargo xtask up`: the group's token and TLS material, and the monitor host that runs the
//! daemon from the custom AMI.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use autoscaler_controller::ec2::Ec2Config;
use base64::Engine;

use super::{Aws, GroupArgs, ensure_tls, wait_for};
use crate::util;
use autoscaler_controller::ec2::InstanceRole;

/// Starts the monitor host (monitor and controller) from the AMI, then waits until it has
/// published its address and the fleet has reached its minimum.
#[derive(Debug, clap::Args)]
pub struct Up {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The monitor's config (its `group` is set to --group).
    #[arg(long, default_value = "provisioning/aws.toml")]
    pub config: std::path::PathBuf,
    /// How long to wait for the fleet, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Put an Application Load Balancer in front of the group (in the default VPC: its
    /// security group, an HTTP listener on port 80, a target group on the application's port
    /// 8080 that only the load balancer may reach); its instances then run the application and
    /// report its real load.
    #[arg(long)]
    pub load_balancer: bool,
    /// Who may send requests to the load balancer (a CIDR).
    #[arg(long, default_value = "0.0.0.0/0", requires = "load_balancer")]
    pub load_balancer_from: String,
    /// Start a second monitor host, standing by: it takes over when the leader's lease runs
    /// out (the lease lives in the group's DynamoDB table). It counts against the account's
    /// instance limit.
    #[arg(long)]
    pub standby: bool,
}

/// In the monitor host's user-data (provisioning/monitor-user-data.sh), the config sits between
/// these two lines.
pub const CONFIG_BEGIN: &str = "cat > /etc/autoscaler/autoscaler.toml <<'AUTOSCALER_CONFIG'\n";
pub const CONFIG_END: &str = "AUTOSCALER_CONFIG\n";

/// The monitor's config for the group, checked; with `load_balancer`, its controller drives the
/// group's target group (`[load_balancer] kind = "elb"`, unless the file has its own). Its store
/// is the group's DynamoDB table (unless the file names another), and its fleet's maximum leaves
/// room in the account's instance limit for `monitors` monitor hosts.
pub fn monitor_config(
    path: &Path,
    group: &str,
    load_balancer: bool,
    monitors: u32,
) -> anyhow::Result<(String, autoscaler_daemon::daemon::DaemonConfig)> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        util::root().join(path)
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}", path.display()))?;
    table.insert("group".to_string(), toml::Value::String(group.to_string()));
    if !table.contains_key("store") {
        let mut store = toml::Table::new();
        store.insert("kind".into(), "dynamodb".into());
        table.insert("store".into(), toml::Value::Table(store));
    }
    if let Some(controller) = table.get_mut("controller").and_then(|c| c.as_table_mut()) {
        let limit = controller
            .get("instance_limit")
            .and_then(|l| l.as_integer())
            .unwrap_or(5);
        let room = limit - i64::from(monitors);
        if controller
            .get("max_instances")
            .and_then(|m| m.as_integer())
            .is_some_and(|max| max > room)
        {
            eprintln!(
                "  the account allows {limit} instances and {monitors} are monitor hosts: at most {room} application instances"
            );
            controller.insert("max_instances".into(), toml::Value::Integer(room));
        }
    }
    // Behind a load balancer, its health checks count too (EC2 Auto Scaling's ELB health check
    // type, which AWS recommends with a load balancer), unless the file says otherwise.
    if load_balancer {
        let controller = table
            .entry("controller")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(controller) = controller.as_table_mut()
            && !controller.contains_key("health_check_type")
        {
            controller.insert("health_check_type".into(), "load-balancer".into());
        }
    }
    if load_balancer && !table.contains_key("load_balancer") {
        let mut elb = toml::Table::new();
        elb.insert("kind".into(), "elb".into());
        elb.insert(
            "app_port".into(),
            toml::Value::Integer(super::APP_PORT.into()),
        );
        // Beyond the target group's deregistration delay.
        elb.insert(
            "drain_timeout_secs".into(),
            toml::Value::Integer(i64::from(super::DEREGISTRATION_DELAY_SECS) + 30),
        );
        table.insert("load_balancer".into(), toml::Value::Table(elb));
    }
    let text = toml::to_string(&table)?;
    let config = autoscaler_daemon::daemon::DaemonConfig::from_toml(&text)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if !matches!(
        config.provider,
        autoscaler_daemon::daemon::ProviderSection::Ec2(_)
    ) {
        bail!(
            "{}: the monitor host needs `[provider] kind = \"ec2\"`",
            path.display()
        );
    }
    Ok((text, config))
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        let aws = Aws::connect(&self.group.group).await?;
        self.run_with(&aws).await
    }

    pub async fn run_with(self, aws: &Aws) -> anyhow::Result<()> {
        eprintln!("up of group {}", aws.group);
        let monitors = if self.standby { 2 } else { 1 };
        let (config_text, config) =
            monitor_config(&self.config, &aws.group, self.load_balancer, monitors)?;
        let instance_limit = config.controller.instance_limit;
        let max = config.controller.max_instances;
        eprintln!(
            "  plan: {} and {}-{max} application instances (the account allows {instance_limit} in all){}",
            if self.standby {
                "a monitor host and a standby one"
            } else {
                "a monitor host"
            },
            config.controller.min_instances,
            if self.load_balancer {
                ", behind an Application Load Balancer (its health checks count too)"
            } else {
                ""
            }
        );
        let autoscaler_daemon::daemon::ProviderSection::Ec2(ec2) = config.provider.clone() else {
            unreachable!("checked by monitor_config")
        };
        let ami = aws
            .parameters
            .get(&aws.names.ami())
            .await
            .with_context(|| {
                format!(
                    "no custom AMI: run `cargo xtask bake-ami --group {}` first",
                    aws.group
                )
            })?;
        if let Err(autoscaler_aws::SsmError::NotFound(_)) =
            aws.parameters.get(&aws.names.token()).await
        {
            let token = autoscaler_proto::auth::Token::generate()
                .map_err(|error| anyhow::anyhow!("cannot draw the group token: {error}"))?;
            aws.parameters
                .put(&aws.names.token(), token.expose(), true)
                .await?;
            eprintln!(
                "  created the group token in {} (SecureString)",
                aws.names.token()
            );
        }
        ensure_tls(aws).await?;
        if let Some(autoscaler_daemon::daemon::StoreKind::Dynamodb) = config.store.kind {
            let table = config
                .store
                .table
                .clone()
                .unwrap_or_else(|| autoscaler_store::DynamoStore::table_name(&aws.group));
            if autoscaler_store::DynamoStore::new(&aws.sdk, &table)
                .ensure_table()
                .await
                .map_err(|error| anyhow!("cannot make the store's table {table}: {error}"))?
            {
                eprintln!(
                    "  created the DynamoDB table {table} (the lease, the policy's memory, the activity history)"
                );
            }
        }
        let balancer = match self.load_balancer {
            true => Some(aws.ensure_balancer(&self.load_balancer_from).await?),
            false => None,
        };

        let running: Vec<String> = aws
            .instances(&[InstanceRole::Monitor])
            .await?
            .into_iter()
            .filter(|m| m.state == "pending" || m.state == "running")
            .map(|m| m.instance_id)
            .collect();
        for id in &running {
            eprintln!("  reusing the monitor host {id}");
        }
        let mut hosts = running.clone();
        if running.len() < monitors as usize {
            if running.is_empty() {
                // A stale address from an earlier monitor would mislead the wait below.
                aws.parameters.delete(&aws.names.monitor()).await?;
            }
            let cloud = aws
                .cloud(Ec2Config {
                    ami_id: ami.clone(),
                    ..ec2
                })
                .await?;
            let template_path = util::root().join("provisioning/monitor-user-data.sh");
            let template = std::fs::read_to_string(&template_path)
                .with_context(|| format!("cannot read {}", template_path.display()))?;
            ensure!(
                template.contains(CONFIG_BEGIN) && template.contains("@CONFIG@"),
                "{} lost its config placeholder",
                template_path.display()
            );
            let user_data = template.replace("@CONFIG@", &config_text);
            let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
            let subnets = cloud.config().subnet_ids.clone();
            for n in running.len()..monitors as usize {
                // The standby in another availability zone than the leader.
                let subnet = subnets[n % subnets.len()].clone();
                let id = cloud
                    .run_instance(
                        InstanceRole::Monitor,
                        &ami,
                        &subnet,
                        Some(encoded.clone()),
                        &cloud.fresh_token(),
                        None,
                    )
                    .await
                    .map_err(|e| anyhow!("cannot launch a monitor host: {e}"))?;
                eprintln!("  launched the monitor host {id}");
                hosts.push(id);
            }
        }
        let monitor = hosts.join(", ");
        aws.wait_running(&hosts, Duration::from_secs(600)).await?;
        let timeout = Duration::from_secs(self.timeout);
        let address = wait_for(
            "the monitor to publish its address",
            timeout,
            Duration::from_secs(2),
            || async {
                match aws.parameters.get(&aws.names.monitor()).await {
                    Ok(address) => Ok(Some(address)),
                    Err(autoscaler_aws::SsmError::NotFound(_)) => Ok(None),
                    Err(error) => Err(error.into()),
                }
            },
        )
        .await?;
        eprintln!("  the monitor listens at {address}");
        let min = config.controller.min_instances as usize;
        let credentials = aws.operator_credentials().await?;
        let unreachable_since = std::sync::Mutex::new(None::<Instant>);
        wait_for(&format!("{min} healthy instances"), timeout, Duration::from_secs(2), || async {
            match crate::status_client::get_status(&address, &credentials).await {
                Ok(status) => {
                    *unreachable_since.lock().expect("not poisoned") = None;
                    let healthy = status.instances.iter().filter(|i| i.is_healthy()).count();
                    Ok((healthy >= min).then_some(()))
                }
                Err(_) => {
                    // From outside the VPC the monitor is out of reach: after half a minute of
                    // that, count running agents instead.
                    let since = *unreachable_since.lock().expect("not poisoned").get_or_insert_with(Instant::now);
                    if since.elapsed() < Duration::from_secs(30) {
                        return Ok(None);
                    }
                    let agents = aws.instances(&[InstanceRole::Agent]).await?;
                    let running = agents.iter().filter(|i| i.state == "running").count();
                    if running >= min {
                        eprintln!("  the monitor at {address} is not reachable from here; {running} agents run");
                    }
                    Ok((running >= min).then_some(()))
                }
            }
        })
        .await?;
        if let Some(dns) = balancer.and_then(|b| b.dns_name) {
            eprintln!("  requests: http://{dns}/ (the load balancer)");
        }
        eprintln!(
            "up done: monitor host {monitor}; `cargo xtask status --group {}` shows the fleet",
            aws.group
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use autoscaler_daemon::daemon::HealthCheckType;

    fn config_with(text: &str, load_balancer: bool) -> HealthCheckType {
        let dir = std::env::temp_dir().join(format!("xtask-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("aws-{load_balancer}-{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        let (_, config) = super::monitor_config(&path, "g", load_balancer, 1).unwrap();
        config.controller.health_check_type
    }

    #[test]
    fn behind_a_load_balancer_its_health_checks_count_unless_the_file_says_otherwise() {
        let plain = "[provider]\nkind = \"ec2\"\n";
        assert_eq!(config_with(plain, true), HealthCheckType::LoadBalancer);
        assert_eq!(config_with(plain, false), HealthCheckType::Monitor);
        let chosen = "[controller]\nhealth_check_type = \"monitor\"\n[provider]\nkind = \"ec2\"\n";
        assert_eq!(config_with(chosen, true), HealthCheckType::Monitor);
    }
}
