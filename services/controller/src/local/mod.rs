//! The local provider: every instance is a child `autoscaler-agent` process on 127.0.0.1 with an
//! id like `local-0007`, and, when the group serves traffic, an `autoscaler-app` process beside
//! it on a port of its own. A state directory records each one (pids, the app's port, launch
//! time), so a restarted daemon adopts the instances it finds alive instead of launching
//! duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cloud::{Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState, SpecError};
use crate::spec::{LaunchSpec, SpecVersion};

mod process;
mod record;

use process::*;
pub use process::{Stopped, stop_child};
pub(crate) use process::{stop_pid, zombie_or_gone};
use record::*;
pub use record::{AppRecord, InstanceRecord, RECORD_SUFFIX};

/// How local instances are started.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Where instance records and agent logs are kept.
    pub state_dir: PathBuf,
    /// The `autoscaler-agent` binary.
    pub agent_binary: PathBuf,
    /// The monitor's address, `host:port`, given to every agent.
    pub monitor_address: String,
    /// A file the leading daemon writes its address to: given instead of the address, so that
    /// agents follow a standby that takes over (`--monitor-file`).
    pub monitor_file: Option<PathBuf>,
    /// Environment for every agent, secrets included (the group's token): kept out of `Debug`.
    pub agent_env: AgentEnv,
    /// The group's TLS directory, given to every agent (`--tls-dir`); `None` starts them with
    /// `--plaintext`, which only a local run asks for.
    pub tls_dir: Option<PathBuf>,
    /// Extra flags for every agent (load model settings, for example).
    pub agent_args: Vec<String>,
    /// How long an agent gets to exit after SIGTERM before SIGKILL.
    pub terminate_grace: Duration,
    /// The application started beside every agent, when the group serves traffic; its agent
    /// then reports the application's real load (`--load app`).
    pub app: Option<LocalApp>,
}

/// How the application beside every agent is started.
#[derive(Clone, Debug)]
pub struct LocalApp {
    /// The `autoscaler-app` binary.
    pub binary: PathBuf,
    /// Extra flags for every app (its slots, service and CPU time).
    pub args: Vec<String>,
}

/// Variables set in every agent's environment. Their values may be secrets (the daemon passes
/// the group's token as `AUTOSCALER_TOKEN`), so `Debug` shows their names only.
#[derive(Clone, Default)]
pub struct AgentEnv(pub Vec<(String, String)>);

impl std::fmt::Debug for AgentEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}=<redacted>")))
            .finish()
    }
}

/// The largest instance number: ids are `local-` and at most nine digits, so no arithmetic on
/// them can overflow, whatever the state dir holds.
pub const MAX_INSTANCE_NUMBER: u64 = 999_999_999;

/// Where unreadable files of the state dir are moved (never deleted), under the state dir.
pub const SET_ASIDE_DIR: &str = "set-aside";

/// Set in every agent's environment to the state dir, so that a restarted daemon finds the
/// agents its group started even when their records are missing or unreadable.
pub const STATE_DIR_ENV: &str = "AUTOSCALER_LOCAL_STATE_DIR";

/// The same for every application process (another name, so that an app is never taken for an
/// agent).
pub const APP_STATE_DIR_ENV: &str = "AUTOSCALER_LOCAL_APP_STATE_DIR";

#[derive(Debug)]
struct LocalInstance {
    pid: u32,
    launched_at: SystemTime,
    /// Present for processes this daemon started; adopted ones are not our children.
    child: Option<tokio::process::Child>,
    /// The application beside the agent, if the group runs one.
    app: Option<AppProcess>,
    /// The launch specification version it was launched with.
    version: Option<String>,
    /// Why the instance ended, once it has: its process's exit status and the last line of its
    /// log.
    ended: Option<String>,
}

#[derive(Debug)]
struct AppProcess {
    pid: u32,
    port: u16,
    child: Option<tokio::process::Child>,
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
    /// The state dir as every agent's environment names it (`STATE_DIR_ENV`).
    marker: PathBuf,
    state: Mutex<State>,
}

fn io_error(what: &str, error: impl std::fmt::Display) -> CloudError {
    CloudError::new(CloudErrorKind::Other, format!("{what}: {error}"))
}

impl LocalInstance {
    /// A running agent this daemon did not start (found after a restart), and its app if it
    /// still runs: not our children.
    fn adopted(record: InstanceRecord, instance_id: &str) -> LocalInstance {
        let app = record.app.map(|app| AppProcess {
            pid: app.pid,
            port: app.port,
            child: None,
        });
        let mut instance = LocalInstance {
            pid: record.pid,
            launched_at: record.launched_at,
            child: None,
            app,
            version: None,
            ended: None,
        };
        if let Some(app) = &instance.app
            && !runs_agent(app.pid, instance_id)
        {
            instance.ended = Some(format!("its app (process {}) is gone", app.pid));
        }
        instance
    }

    /// The record that describes it.
    fn record(&self) -> InstanceRecord {
        InstanceRecord {
            pid: self.pid,
            launched_at: self.launched_at,
            app: self.app.as_ref().map(|app| AppRecord {
                pid: app.pid,
                port: app.port,
            }),
        }
    }

    /// Whether the instance still runs (its agent, and its app if it has one); the first time
    /// it is found ended, notes why.
    fn alive(&mut self, instance_id: &str, state_dir: &Path) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let agent_log = state_dir.join(format!("{instance_id}.log"));
        let app_log = state_dir.join(format!("{instance_id}.app.log"));
        let ended =
            process_ended(self.pid, &mut self.child, instance_id, &agent_log).or_else(|| {
                let app = self.app.as_mut()?;
                process_ended(app.pid, &mut app.child, instance_id, &app_log)
                    .map(|why| format!("its app ended: {why}"))
            });
        let Some(why) = ended else {
            return true;
        };
        tracing::warn!(%instance_id, pid = self.pid, "local instance ended: {why}");
        self.ended = Some(why);
        false
    }
}

/// Why process `pid` (our `child`, or adopted) of `instance_id` ended, with the last line of
/// `log` when its exit status may be explained there (not when a signal ended it); `None` while
/// it runs.
fn process_ended(
    pid: u32,
    child: &mut Option<tokio::process::Child>,
    instance_id: &str,
    log: &Path,
) -> Option<String> {
    let (mut why, log_may_tell) = match child {
        Some(child) => match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => (status.to_string(), status.code().is_some()),
            Err(error) => (format!("cannot wait for process {pid}: {error}"), true),
        },
        None if runs_agent(pid, instance_id) => return None,
        None => (format!("process {pid} is gone"), true),
    };
    if log_may_tell && let Some(line) = last_log_line(log) {
        why = format!("{why}; last log line: {line}");
    }
    Some(why)
}

impl LocalCloud {
    /// Opens the state directory and adopts the agents of the group that still run: those
    /// recorded there, and those whose record is missing or unreadable (found by their
    /// environment). A file it cannot read is set aside, never deleted; an agent of the group
    /// with an id it cannot take is stopped. No content of the directory makes it panic.
    pub fn open(config: LocalConfig) -> Result<LocalCloud, CloudError> {
        let state_dir = &config.state_dir;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| io_error(&format!("cannot create {}", state_dir.display()), e))?;
        let marker = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.clone());
        let mut instances = BTreeMap::new();
        let mut next_id: u64 = 1;
        let entries = std::fs::read_dir(state_dir)
            .map_err(|e| io_error(&format!("cannot read {}", state_dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Ids once used are never used again, whatever else was lost (a record removed,
            // the counter emptied): the logs they left count too.
            if let Some(number) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(logged_number)
            {
                next_id = next_id.max(number + 1);
                continue;
            }
            let Some(instance_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(RECORD_SUFFIX))
                .map(str::to_string)
            else {
                continue;
            };
            let Some(number) = instance_number(&instance_id) else {
                set_aside(
                    state_dir,
                    &path,
                    &format!(
                        "{instance_id:?} is not a local instance id (local- and at most nine digits)"
                    ),
                );
                continue;
            };
            next_id = next_id.max(number + 1);
            match InstanceRecord::read_path(&path) {
                Some(record) if runs_agent(record.pid, &instance_id) => {
                    tracing::info!(%instance_id, pid = record.pid, "adopting a running local instance");
                    let mut instance = LocalInstance::adopted(record, &instance_id);
                    instance.version = read_version(state_dir, &instance_id);
                    instances.insert(instance_id, instance);
                }
                Some(InstanceRecord { pid, .. }) => {
                    tracing::info!(%instance_id, pid, "local instance ended while no daemon ran; its record removed");
                    let _ = std::fs::remove_file(&path);
                }
                // Its agent, if it runs, is found below by its environment.
                None => set_aside(
                    state_dir,
                    &path,
                    &format!(
                        "the record of {instance_id} is unreadable (expected \"<pid> <launch ms>\", \
                         then \"<app pid> <app port>\" if it runs an app)"
                    ),
                ),
            }
        }
        let counter = state_dir.join("next-id");
        match read_small(&counter) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(recorded) if recorded <= MAX_INSTANCE_NUMBER => {
                    next_id = next_id.max(recorded);
                }
                _ => set_aside(
                    state_dir,
                    &counter,
                    &format!("next-id is not a number of at most {MAX_INSTANCE_NUMBER}"),
                ),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => set_aside(
                state_dir,
                &counter,
                &format!("next-id is unreadable ({error})"),
            ),
        }
        for (pid, instance_id) in processes_of(STATE_DIR_ENV, &marker) {
            if instances.values().any(|i: &LocalInstance| i.pid == pid) {
                continue;
            }
            let takeable = instance_id
                .as_deref()
                .and_then(|id| Some((id, instance_number(id)?)))
                .filter(|(id, _)| !instances.contains_key(*id));
            match takeable {
                Some((instance_id, number)) => {
                    let instance_id = instance_id.to_string();
                    next_id = next_id.max(number + 1);
                    let launched_at = process_started(pid).unwrap_or_else(SystemTime::now);
                    let record = InstanceRecord {
                        pid,
                        launched_at,
                        app: None,
                    };
                    if let Err(error) = record.write(&InstanceRecord::path(state_dir, &instance_id))
                    {
                        tracing::warn!(%instance_id, %error, "cannot write the record again");
                    }
                    tracing::warn!(%instance_id, pid, "adopting a running agent of this group whose record was missing or unreadable");
                    let mut instance = LocalInstance::adopted(record, &instance_id);
                    instance.version = read_version(state_dir, &instance_id);
                    if config.app.is_some() {
                        // Its app's port is lost with the record: replaced as soon as listed.
                        instance.ended = Some("its record, with its app's port, was lost".into());
                    }
                    instances.insert(instance_id, instance);
                }
                None => {
                    tracing::warn!(
                        pid,
                        ?instance_id,
                        "stopping an agent of this group whose instance id cannot be taken"
                    );
                    stop_stray(pid, config.terminate_grace);
                }
            }
        }
        // Apps of this group that no adopted instance owns (their agent ended, or the record was
        // lost): nothing would ever stop them.
        for (pid, instance_id) in processes_of(APP_STATE_DIR_ENV, &marker) {
            let owned = instances
                .values()
                .any(|i: &LocalInstance| i.app.as_ref().is_some_and(|app| app.pid == pid));
            if !owned {
                tracing::warn!(
                    pid,
                    ?instance_id,
                    "stopping an app of this group that no instance owns"
                );
                stop_stray(pid, config.terminate_grace);
            }
        }
        // At most MAX_INSTANCE_NUMBER + 1: every number read is in range.
        Ok(LocalCloud {
            config,
            marker,
            state: Mutex::new(State { instances, next_id }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, instance_id: &str) -> PathBuf {
        InstanceRecord::path(&self.config.state_dir, instance_id)
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// A log file of the state dir, for a process's stdout and stderr.
    fn log(&self, name: &str) -> Result<(Stdio, Stdio), CloudError> {
        let log_path = self.config.state_dir.join(name);
        let log = std::fs::File::create(&log_path)
            .map_err(|e| io_error(&format!("cannot create {}", log_path.display()), e))?;
        let log_err = log.try_clone().map_err(|e| io_error("log file", e))?;
        Ok((log.into(), log_err.into()))
    }

    /// Starts the app of `instance_id` on a free port of 127.0.0.1.
    fn spawn_app(
        &self,
        app: &LocalApp,
        instance_id: &str,
        extra: &[String],
    ) -> Result<AppProcess, CloudError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| io_error("cannot find a free port for the app", e))?
            .port();
        let (log, log_err) = self.log(&format!("{instance_id}.app.log"))?;
        // Not killed on drop: a restarted daemon adopts the instances that still run.
        let child = tokio::process::Command::new(&app.binary)
            .args(["--instance-id", instance_id])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(&app.args)
            .args(extra)
            .env(APP_STATE_DIR_ENV, &self.marker)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| io_error(&format!("cannot start {}", app.binary.display()), e))?;
        Ok(AppProcess {
            // A child just spawned has its id until it is reaped.
            pid: child.id().unwrap_or_default(),
            port,
            child: Some(child),
        })
    }

    fn spawn(
        &self,
        instance_id: &str,
        seed: u64,
        app: Option<&AppProcess>,
        extra: &[String],
    ) -> Result<tokio::process::Child, CloudError> {
        let (log, log_err) = self.log(&format!("{instance_id}.log"))?;
        let load_args: Vec<String> = match app {
            Some(app) => vec![
                "--load".into(),
                "app".into(),
                "--app-address".into(),
                format!("127.0.0.1:{}", app.port),
            ],
            None => Vec::new(),
        };
        // Not killed on drop: a restarted daemon adopts the agents that still run.
        tokio::process::Command::new(&self.config.agent_binary)
            .args(["--instance-id", instance_id])
            .args(["--listen", "127.0.0.1:0"])
            .args(match &self.config.monitor_file {
                Some(file) => vec!["--monitor-file".into(), file.clone().into_os_string()],
                None => vec![
                    std::ffi::OsString::from("--monitor"),
                    self.config.monitor_address.clone().into(),
                ],
            })
            .args(["--seed", &seed.to_string()])
            .args(match &self.config.tls_dir {
                Some(dir) => vec!["--tls-dir".into(), dir.clone().into_os_string()],
                None => vec![std::ffi::OsString::from("--plaintext")],
            })
            .args(&self.config.agent_args)
            .args(extra)
            .args(load_args)
            .envs(self.config.agent_env.0.iter().map(|(k, v)| (k, v)))
            .env(STATE_DIR_ENV, &self.marker)
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

    /// Launches one instance per token, on `spec` when given (its extra arguments, its version
    /// kept beside the record).
    fn launch_local(
        &self,
        tokens: &[String],
        spec: Option<&SpecVersion>,
    ) -> Result<Vec<String>, CloudError> {
        let mut launched = Vec::new();
        for _ in tokens {
            let mut state = self.lock();
            let number = state.next_id;
            if number > MAX_INSTANCE_NUMBER {
                return Err(CloudError::new(
                    CloudErrorKind::Other,
                    format!(
                        "no local instance number is left (the last is {MAX_INSTANCE_NUMBER}); \
                         start with an empty state dir"
                    ),
                ));
            }
            let instance_id = format!("local-{number:04}");
            let seed = number;
            let next = number + 1;
            state.next_id = next;
            drop(state);
            write_whole(&self.config.state_dir.join("next-id"), &next.to_string())
                .map_err(|e| io_error("cannot record the next instance id", e))?;
            let no_args = Vec::new();
            let (agent_args, app_args) = spec.map_or((&no_args, &no_args), |s| {
                (&s.spec.agent_args, &s.spec.app_args)
            });
            let app = match &self.config.app {
                Some(app) => Some(self.spawn_app(app, &instance_id, app_args)?),
                None => None,
            };
            let child = match self.spawn(&instance_id, seed, app.as_ref(), agent_args) {
                Ok(child) => child,
                Err(error) => {
                    if let Some(mut app) = app.and_then(|app| app.child) {
                        let _ = app.start_kill();
                    }
                    return Err(error);
                }
            };
            let instance = LocalInstance {
                // A child just spawned has its id until it is reaped.
                pid: child.id().unwrap_or_default(),
                launched_at: SystemTime::now(),
                child: Some(child),
                app,
                version: spec.map(SpecVersion::version),
                ended: None,
            };
            if let Some(version) = &instance.version {
                write_whole(
                    &version_path(&self.config.state_dir, &instance_id),
                    &format!("{version}\n"),
                )
                .map_err(|e| io_error("cannot record the instance's version", e))?;
            }
            instance
                .record()
                .write(&self.record_path(&instance_id))
                .map_err(|e| io_error("cannot record the instance", e))?;
            tracing::info!(
                %instance_id,
                pid = instance.pid,
                app_port = instance.app.as_ref().map(|app| app.port),
                "local instance launched"
            );
            self.lock().instances.insert(instance_id.clone(), instance);
            launched.push(instance_id);
        }
        Ok(launched)
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
        let state_dir = &self.config.state_dir;
        let mut state = self.lock();
        Ok(state
            .instances
            .iter_mut()
            .map(|(instance_id, instance)| {
                let running = instance.alive(instance_id, state_dir);
                CloudInstance {
                    instance_id: instance_id.clone(),
                    state: if running {
                        InstanceState::Running
                    } else {
                        InstanceState::Stopped
                    },
                    launched_at: instance.launched_at,
                    zone: "local".to_string(),
                    state_reason: instance.ended.clone(),
                    app_address: instance
                        .app
                        .as_ref()
                        .map(|app| format!("127.0.0.1:{}", app.port)),
                    // Not kept: a local launch is never in doubt (`Cloud::launch`).
                    launch_token: None,
                    version: instance.version.clone(),
                }
            })
            .collect())
    }

    async fn launch(&self, tokens: &[String]) -> Result<Vec<String>, CloudError> {
        self.launch_local(tokens, None)
    }

    async fn launch_with(
        &self,
        tokens: &[String],
        spec: &SpecVersion,
    ) -> Result<Vec<String>, CloudError> {
        self.launch_local(tokens, Some(spec))
    }

    fn check_spec(&self, spec: &LaunchSpec) -> Result<(), SpecError> {
        if spec.image_id.is_some() {
            return Err(SpecError::new(
                "launch_spec.image_id",
                "the local platform has no machine images: it launches the built binaries",
            ));
        }
        if spec.instance_type.is_some() {
            return Err(SpecError::new(
                "launch_spec.instance_type",
                "the local platform has no instance types",
            ));
        }
        if spec.user_data.is_some() {
            return Err(SpecError::new(
                "launch_spec.user_data",
                "local instances run no boot script: give agent_args or app_args",
            ));
        }
        if !spec.app_args.is_empty() && self.config.app.is_none() {
            return Err(SpecError::new(
                "launch_spec.app_args",
                "this group runs no application (no [load_balancer])",
            ));
        }
        Ok(())
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
        // Taken out of the state, so that no lock is held while they stop; all are asked at
        // once and given the same grace.
        let stopping: Vec<(String, LocalInstance)> = {
            let mut state = self.lock();
            instance_ids
                .iter()
                .filter_map(|id| Some((id.clone(), state.instances.remove(id)?)))
                .collect()
        };
        let deadline = tokio::time::Instant::now() + self.config.terminate_grace;
        let mut stops = tokio::task::JoinSet::new();
        for (instance_id, mut instance) in stopping {
            let state_dir = self.config.state_dir.clone();
            let record = self.record_path(&instance_id);
            stops.spawn(async move {
                // Notes why it ended, if it had.
                instance.alive(&instance_id, &state_dir);
                // The app (its requests in flight finish) and the agent at once.
                let app = async {
                    match instance.app.as_mut() {
                        Some(app) => {
                            stop_process(app.pid, &mut app.child, &instance_id, deadline).await
                        }
                        None => Ok(Stopped::Gone),
                    }
                };
                let agent = stop_process(instance.pid, &mut instance.child, &instance_id, deadline);
                let (app, agent) = tokio::join!(app, agent);
                for (what, stopped) in [("app", app), ("agent", agent)] {
                    match stopped {
                        Ok(Stopped::Killed) => tracing::warn!(
                            %instance_id,
                            "the {what} ignored SIGTERM; it was sent SIGKILL"
                        ),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%instance_id, %error, "cannot stop the {what}")
                        }
                    }
                }
                let _ = std::fs::remove_file(record);
                let _ = std::fs::remove_file(version_path(&state_dir, &instance_id));
                tracing::info!(%instance_id, "local instance terminated");
            });
        }
        while stops.join_next().await.is_some() {}
        Ok(())
    }
}
