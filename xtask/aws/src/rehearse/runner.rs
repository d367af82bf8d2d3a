//! The rehearsal's runner: moto runs nothing inside its instances, so this plays their hosts. It
//! starts a local process for each running instance according to its role tag (the monitor from
//! the config in its user-data, an agent for the others), with the emulator's endpoint and test
//! credentials in its environment, and stops it when the instance is terminated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use autoscaler_controller::ec2::InstanceRole;
use autoscaler_controller::local::stop_child;
use base64::Engine;
use tokio::process::{Child, Command};

use crate::aws::{self, Aws};

/// Starts and stops local processes for the emulator's instances.
pub(super) struct Runner {
    aws: Aws,
    endpoint: String,
    log_dir: PathBuf,
    bin_dir: PathBuf,
    processes: BTreeMap<String, Child>,
    /// Where each monitor host's process listens, by instance id.
    monitors: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Runner {
    /// Starts playing the hosts of the group's instances: a reconcile pass every 500 ms, the
    /// binaries from `bin_dir` reaching the emulator at `endpoint`, their logs in `log_dir`.
    pub(super) fn start(aws: Aws, endpoint: &str, log_dir: &Path, bin_dir: &Path) -> RunningRunner {
        let mut runner = Runner {
            aws,
            endpoint: endpoint.to_string(),
            log_dir: log_dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            processes: BTreeMap::new(),
            monitors: Arc::default(),
        };
        let monitors = runner.monitors.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = runner.reconcile().await {
                    eprintln!("  runner: {error:#}");
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        RunningRunner {
            stop,
            task,
            monitors,
        }
    }

    fn command(&self, binary: &str, instance_id: &str) -> anyhow::Result<Command> {
        let log = std::fs::File::create(self.log_dir.join(format!("{instance_id}.log")))?;
        let mut command = Command::new(self.bin_dir.join(binary));
        command
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A runner that ends leaves no process behind.
            .kill_on_drop(true);
        Ok(command)
    }

    /// The monitor's config from the instance's user-data, as the real host would write it.
    async fn monitor_config(&self, instance_id: &str) -> anyhow::Result<PathBuf> {
        let attribute = self
            .aws
            .ec2
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| aws::explain("read the monitor's user-data", e))?;
        let encoded = attribute
            .user_data()
            .and_then(|u| u.value())
            .context("the monitor host has no user-data")?;
        let script = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded)?)?;
        let (_, rest) = script
            .split_once(aws::CONFIG_BEGIN)
            .context("no config in the user-data")?;
        let (config, _) = rest
            .split_once(aws::CONFIG_END)
            .context("unterminated config in the user-data")?;
        let path = self.log_dir.join(format!("{instance_id}.toml"));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    async fn start_host(&mut self, instance_id: &str, role: InstanceRole) -> anyhow::Result<()> {
        let child = match role {
            InstanceRole::Monitor => {
                let config = self.monitor_config(instance_id).await?;
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let address = format!("127.0.0.1:{port}");
                self.monitors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(instance_id.to_string(), address.clone());
                self.command("autoscaler-monitor", instance_id)?
                    .arg("--config")
                    .arg(&config)
                    .args([
                        "--listen",
                        &address,
                        "--advertise",
                        &address,
                        "--token-from-ssm",
                    ])
                    .spawn()?
            }
            _ => self
                .command("autoscaler-agent", instance_id)?
                .args([
                    "--instance-id",
                    instance_id,
                    "--group",
                    &self.aws.group,
                    "--token-from-ssm",
                    "--tls-from-ssm",
                ])
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--max-slope",
                    "40",
                    "--drift-amplitude",
                    "0",
                ])
                .args(["--reregister-after-ms", "2000"])
                .spawn()?,
        };
        eprintln!("  runner: started a local {role} process for {instance_id}");
        self.processes.insert(instance_id.to_string(), child);
        Ok(())
    }

    /// One pass: a process for every running agent or monitor, none for the others.
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let instances = self
            .aws
            .instances(&[InstanceRole::Agent, InstanceRole::Monitor])
            .await?;
        let running: BTreeMap<String, InstanceRole> = instances
            .into_iter()
            .filter(|i| i.state == "running" || i.state == "pending")
            .filter_map(|i| Some((i.instance_id, i.role?)))
            .collect();
        for (instance_id, role) in &running {
            if !self.processes.contains_key(instance_id) {
                self.start_host(instance_id, *role).await?;
            }
        }
        let gone: Vec<String> = self
            .processes
            .keys()
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect();
        for instance_id in gone {
            if let Some(mut child) = self.processes.remove(&instance_id) {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                stop_child(&mut child, deadline).await?;
                eprintln!("  runner: stopped the process of {instance_id} (instance terminated)");
            }
        }
        Ok(())
    }
}

/// A runner at work in the background, until `stop`.
pub(super) struct RunningRunner {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    monitors: Arc<Mutex<BTreeMap<String, String>>>,
}

impl RunningRunner {
    /// The monitor host whose process listens at `address`.
    pub(super) fn monitor_at(&self, address: &str) -> Option<String> {
        self.monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, listens)| listens.as_str() == address)
            .map(|(id, _)| id.clone())
    }

    /// Stops the runner; its processes are stopped with it.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
