//! The local provider: every instance is a child `autoscaler-agent` process on 127.0.0.1 with an
//! id like `local-0007`. A state directory records each one (pid, launch time), so a restarted
//! daemon adopts the agents it finds alive instead of launching duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoscaler_proto::auth::Token;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cloud::{Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState};

/// How local instances are started.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Where instance records and agent logs are kept.
    pub state_dir: PathBuf,
    /// The `autoscaler-agent` binary.
    pub agent_binary: PathBuf,
    /// The monitor's address, `host:port`, given to every agent.
    pub monitor_address: String,
    pub token: Token,
    /// The group's TLS directory, given to every agent (`--tls-dir`); `None` starts them with
    /// `--plaintext`, which only a local run asks for.
    pub tls_dir: Option<PathBuf>,
    /// Extra flags for every agent (load model settings, for example).
    pub agent_args: Vec<String>,
    /// How long an agent gets to exit after SIGTERM before SIGKILL.
    pub terminate_grace: Duration,
}

#[derive(Debug)]
struct LocalInstance {
    pid: u32,
    launched_at: SystemTime,
    /// Present for processes this daemon started; adopted ones are not our children.
    child: Option<Child>,
}

#[derive(Debug)]
struct State {
    instances: BTreeMap<String, LocalInstance>,
    next_id: u64,
}

/// Instances as local processes.
#[derive(Debug)]
pub struct LocalCloud {
    config: LocalConfig,
    state: Mutex<State>,
}

fn io_error(what: &str, error: impl std::fmt::Display) -> CloudError {
    CloudError::new(CloudErrorKind::Other, format!("{what}: {error}"))
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True if `pid` runs the agent of `instance_id` (guards against a reused pid) and is no zombie.
fn runs_agent(pid: u32, instance_id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args
        .windows(2)
        .any(|pair| pair[0] == b"--instance-id" && pair[1] == instance_id.as_bytes());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true);
    ours && !zombie
}

impl LocalInstance {
    fn alive(&mut self, instance_id: &str) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => runs_agent(self.pid, instance_id),
        }
    }
}

impl LocalCloud {
    /// Opens the state directory and adopts the agents recorded there that still run.
    pub fn open(config: LocalConfig) -> Result<LocalCloud, CloudError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| io_error(&format!("cannot create {}", config.state_dir.display()), e))?;
        let mut instances = BTreeMap::new();
        let mut next_id = 1;
        let entries = std::fs::read_dir(&config.state_dir)
            .map_err(|e| io_error(&format!("cannot read {}", config.state_dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(instance_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".instance"))
                .map(str::to_string)
            else {
                continue;
            };
            if let Some(number) = instance_id
                .strip_prefix("local-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                next_id = next_id.max(number + 1);
            }
            let record = std::fs::read_to_string(&path).unwrap_or_default();
            let mut fields = record.split_whitespace().map(|f| f.parse::<u64>().ok());
            match (fields.next().flatten(), fields.next().flatten()) {
                (Some(pid), Some(launched_ms)) if runs_agent(pid as u32, &instance_id) => {
                    tracing::info!(%instance_id, pid, "adopting a running local instance");
                    instances.insert(
                        instance_id,
                        LocalInstance {
                            pid: pid as u32,
                            launched_at: UNIX_EPOCH + Duration::from_millis(launched_ms),
                            child: None,
                        },
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if let Ok(recorded) = std::fs::read_to_string(config.state_dir.join("next-id"))
            && let Ok(recorded) = recorded.trim().parse::<u64>()
        {
            next_id = next_id.max(recorded);
        }
        Ok(LocalCloud {
            config,
            state: Mutex::new(State { instances, next_id }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, instance_id: &str) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{instance_id}.instance"))
    }

    /// The pid of a running instance, for tests and the demo (which kill agents on purpose).
    pub fn pid(&self, instance_id: &str) -> Option<u32> {
        self.lock().instances.get(instance_id).map(|i| i.pid)
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    fn spawn(&self, instance_id: &str, seed: u64) -> Result<Child, CloudError> {
        let log_path = self.config.state_dir.join(format!("{instance_id}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| io_error(&format!("cannot create {}", log_path.display()), e))?;
        let log_err = log.try_clone().map_err(|e| io_error("log file", e))?;
        Command::new(&self.config.agent_binary)
            .args(["--instance-id", instance_id])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--monitor", &self.config.monitor_address])
            .args(["--seed", &seed.to_string()])
            .args(match &self.config.tls_dir {
                Some(dir) => vec!["--tls-dir".into(), dir.clone().into_os_string()],
                None => vec![std::ffi::OsString::from("--plaintext")],
            })
            .args(&self.config.agent_args)
            .env("AUTOSCALER_TOKEN", self.config.token.expose())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                io_error(
                    &format!("cannot start {}", self.config.agent_binary.display()),
                    e,
                )
            })
    }

    /// Terminates every instance: the daemon leaves no process behind when it exits.
    pub async fn terminate_all(&self) {
        let ids: Vec<String> = self.lock().instances.keys().cloned().collect();
        if let Err(error) = self.terminate(&ids).await {
            tracing::warn!(%error, "terminating the local instances");
        }
    }
}

impl Cloud for LocalCloud {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        let mut state = self.lock();
        Ok(state
            .instances
            .iter_mut()
            .map(|(instance_id, instance)| CloudInstance {
                instance_id: instance_id.clone(),
                state: if instance.alive(instance_id) {
                    InstanceState::Running
                } else {
                    InstanceState::Stopped
                },
                launched_at: instance.launched_at,
                zone: "local".to_string(),
            })
            .collect())
    }

    async fn launch(&self, count: u32) -> Result<Vec<String>, CloudError> {
        let mut launched = Vec::new();
        for _ in 0..count {
            let mut state = self.lock();
            let instance_id = format!("local-{:04}", state.next_id);
            let seed = state.next_id;
            state.next_id += 1;
            let next = state.next_id;
            drop(state);
            std::fs::write(self.config.state_dir.join("next-id"), next.to_string())
                .map_err(|e| io_error("cannot record the next instance id", e))?;
            let child = self.spawn(&instance_id, seed)?;
            let launched_at = SystemTime::now();
            let pid = child.id();
            std::fs::write(
                self.record_path(&instance_id),
                format!("{pid} {}\n", unix_ms(launched_at)),
            )
            .map_err(|e| io_error("cannot record the instance", e))?;
            tracing::info!(%instance_id, pid, "local instance launched");
            self.lock().instances.insert(
                instance_id.clone(),
                LocalInstance {
                    pid,
                    launched_at,
                    child: Some(child),
                },
            );
            launched.push(instance_id);
        }
        Ok(launched)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        {
            let state = self.lock();
            if let Some(stranger) = instance_ids
                .iter()
                .find(|id| !state.instances.contains_key(*id))
            {
                return Err(CloudError::new(
                    CloudErrorKind::NotFound,
                    format!("{stranger} is not an instance of this group"),
                ));
            }
        }
        let mut pending: Vec<String> = Vec::new();
        {
            let mut state = self.lock();
            for instance_id in instance_ids {
                let instance = state.instances.get_mut(instance_id).expect("checked above");
                if instance.alive(instance_id) {
                    let _ = kill(Pid::from_raw(instance.pid as i32), Signal::SIGTERM);
                    pending.push(instance_id.clone());
                }
            }
        }
        let deadline = Instant::now() + self.config.terminate_grace;
        while !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut state = self.lock();
            let past_grace = Instant::now() >= deadline;
            pending.retain(|instance_id| {
                let instance = state
                    .instances
                    .get_mut(instance_id)
                    .expect("only we remove");
                if !instance.alive(instance_id) {
                    return false;
                }
                if past_grace {
                    tracing::warn!(%instance_id, "agent ignored SIGTERM; sending SIGKILL");
                    let _ = kill(Pid::from_raw(instance.pid as i32), Signal::SIGKILL);
                    if let Some(child) = &mut instance.child {
                        let _ = child.wait();
                    }
                    return false;
                }
                true
            });
        }
        let mut state = self.lock();
        for instance_id in instance_ids {
            if let Some(mut instance) = state.instances.remove(instance_id)
                && let Some(child) = &mut instance.child
            {
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(self.record_path(instance_id));
            tracing::info!(%instance_id, "local instance terminated");
        }
        Ok(())
    }
}
