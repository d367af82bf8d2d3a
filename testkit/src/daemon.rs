//! The whole daemon (monitor and controller) on the local provider, for end-to-end tests: a
//! fast config, the daemon in process or as a process, status reads with deadlines, a load
//! driver and a watcher of the fleet's bounds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoscaler_daemon::daemon::{self, DaemonConfig};
use autoscaler_proto::v1;

use crate::group::{Status, TOKEN, agent_client, status_client, token, write_tls_dir};
use crate::process::{
    agent_binary, app_binary, free_port, haproxy_binary, loopback, monitor_binary,
};

pub fn fast_daemon_config(state_dir: &Path) -> DaemonConfig {
    let text = format!(
        r#"
group = "test"
[monitor]
poll_interval_ms = 200
poll_timeout_ms = 150
unhealthy_after = 3
[controller]
min_instances = 2
max_instances = 4
instance_limit = 5
evaluation_interval_ms = 250
warmup_secs = 3
registration_grace_secs = 10
scale_out_cooldown_secs = 1
scale_in_cooldown_secs = 2
[controller.policy]
kind = "target-tracking"
target = 50.0
tolerance = 0.1
[provider]
kind = "local"
state_dir = "{}"
agent_args = ["--max-slope", "100", "--drift-amplitude", "0", "--initial-load", "30", "--target-load", "30"]
terminate_grace_ms = 3000
"#,
        state_dir.display()
    );
    DaemonConfig::from_toml(&text).expect("valid test config")
}

pub struct RunningDaemon {
    pub address: SocketAddr,
    /// Where the dashboard listens.
    pub http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningDaemon {
    /// Starts the daemon with the test group's TLS material, written into its state directory.
    pub async fn start(config: DaemonConfig) -> RunningDaemon {
        let daemon::ProviderSection::Local(local) = &config.provider else {
            panic!("the daemon tests run the local provider");
        };
        let tls_dir = local
            .state_dir
            .as_ref()
            .expect("test configs name their state_dir")
            .join("tls");
        write_tls_dir(&tls_dir);
        RunningDaemon::start_with_tls(config, daemon::TlsSource::Dir(tls_dir)).await
    }

    pub async fn start_with_tls(config: DaemonConfig, tls: daemon::TlsSource) -> RunningDaemon {
        RunningDaemon::start_with(config, tls, None).await
    }

    /// Starts the daemon, telling its agents to reach the monitor at `advertise` (default: the
    /// address it listens on).
    pub async fn start_with(
        config: DaemonConfig,
        tls: daemon::TlsSource,
        advertise: Option<String>,
    ) -> RunningDaemon {
        let bind = || async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding the daemon");
            let address = listener.local_addr().expect("a bound listener");
            (listener, address)
        };
        let (listener, address) = bind().await;
        let (http_listener, http) = bind().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let options = daemon::RunOptions {
                agent_binary: agent_binary(),
                advertise: advertise.unwrap_or_else(|| address.to_string()),
                aws: None,
                http: Some(http_listener),
                tls,
                temp_dir: std::env::temp_dir(),
                path: std::env::var_os("PATH").unwrap_or_default(),
                reload: None,
            };
            daemon::run(config, token(), listener, options, async {
                stopped.await.ok();
            })
            .await
            .expect("daemon run");
        });
        RunningDaemon {
            address,
            http,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the daemon stops within 20 s")
            .expect("the daemon's task");
    }
}

/// A fast config file for daemons run as processes (`spawn_daemon_process`), in `state_dir`: at
/// most `max` instances, every agent holding `load` percent.
pub fn process_config_file(state_dir: &Path, max: u32, load: f64) -> std::path::PathBuf {
    std::fs::create_dir_all(state_dir).expect("the state dir");
    let path = state_dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"
group = "test"
[monitor]
poll_interval_ms = 200
poll_timeout_ms = 150
unhealthy_after = 3
[controller]
min_instances = 2
max_instances = {max}
evaluation_interval_ms = 250
warmup_secs = 3
registration_grace_secs = 10
scale_out_cooldown_secs = 1
scale_in_cooldown_secs = 0
[controller.policy]
kind = "target-tracking"
target = 50.0
tolerance = 0.1
[provider]
kind = "local"
agent_args = ["--reregister-after-ms", "1000", "--max-slope", "100", "--drift-amplitude", "0", "--initial-load", "{load}", "--target-load", "{load}"]
terminate_grace_ms = 3000
"#
        ),
    )
    .expect("writing the config");
    path
}

/// A fast config for a group that serves traffic: an app beside every agent (4 slots of 40 ms:
/// 100 requests a second at most per instance), HAProxy in front on a free port (returned),
/// health checks every 200 ms, target tracking at 50 % of the apps' slot time.
pub fn traffic_daemon_config(state_dir: &Path) -> (DaemonConfig, SocketAddr) {
    let (text, listen) = traffic_config_text(state_dir);
    (
        DaemonConfig::from_toml(&text).expect("valid test config"),
        listen,
    )
}

/// `traffic_daemon_config` as a file in `state_dir`, for daemons run as processes (a leader and
/// its standbys share it, and the balancer's address, returned).
pub fn traffic_config_file(state_dir: &Path) -> (std::path::PathBuf, SocketAddr) {
    std::fs::create_dir_all(state_dir).expect("the state dir");
    let (text, listen) = traffic_config_text(state_dir);
    let path = state_dir.join("config.toml");
    std::fs::write(&path, text).expect("writing the config");
    (path, listen)
}

fn traffic_config_text(state_dir: &Path) -> (String, SocketAddr) {
    let listen = loopback(free_port());
    let text = format!(
        r#"
group = "traffic"
[monitor]
poll_interval_ms = 200
poll_timeout_ms = 150
unhealthy_after = 3
[controller]
min_instances = 2
max_instances = 4
instance_limit = 5
evaluation_interval_ms = 250
warmup_secs = 3
registration_grace_secs = 10
scale_out_cooldown_secs = 2
scale_in_cooldown_secs = 3
[controller.policy]
kind = "target-tracking"
target = 50.0
tolerance = 0.1
[provider]
kind = "local"
state_dir = "{state_dir}"
terminate_grace_ms = 3000
app = true
app_binary = "{app}"
app_args = ["--slots", "4", "--service-ms", "40", "--cpu-ms", "0"]
[load_balancer]
kind = "haproxy"
listen = "{listen}"
binary = "{haproxy}"
check_interval_ms = 200
unhealthy_after = 2
drain_timeout_secs = 10
"#,
        state_dir = state_dir.display(),
        app = app_binary().display(),
        haproxy = haproxy_binary().display(),
    );
    (text, listen)
}

/// The instances the provider lists.
pub fn listed(status: &v1::GetStatusResponse) -> std::collections::BTreeSet<String> {
    status
        .instances
        .iter()
        .filter(|i| i.listed())
        .map(|i| i.instance_id.clone())
        .collect()
}

/// The listed instances the load balancer sends requests to.
pub fn serving(status: &v1::GetStatusResponse) -> Vec<String> {
    status
        .instances
        .iter()
        .filter(|i| i.listed() && i.target_state() == v1::TargetState::Healthy)
        .map(|i| i.instance_id.clone())
        .collect()
}

/// Reads the status until `condition` holds, checking on every read that the group never has
/// more than `max` instances.
pub async fn wait_status(
    client: &mut Status,
    what: &str,
    max: usize,
    deadline: Duration,
    condition: impl Fn(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let give_up = Instant::now() + deadline;
    loop {
        let status = match client
            .get_status(v1::GetStatusRequest { decisions_after: 0 })
            .await
        {
            Ok(response) => response.into_inner(),
            // The daemon may not listen yet.
            Err(error) => {
                assert!(
                    Instant::now() < give_up,
                    "timed out waiting until {what}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let listed = status.instances.iter().filter(|i| i.listed()).count();
        assert!(
            listed <= max,
            "{listed} instances, above the maximum {max}: {status:#?}"
        );
        if condition(&status) {
            return status;
        }
        if Instant::now() >= give_up {
            let decisions: Vec<String> = status
                .decisions
                .iter()
                .rev()
                .take(12)
                .rev()
                .map(|d| format!("#{} {} -> {:?}", d.sequence, d.summary, d.outcome))
                .collect();
            panic!(
                "timed out after {deadline:?} waiting until {what}; instances: {:#?}\nlast decisions:\n{}",
                status.instances,
                decisions.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn healthy(status: &v1::GetStatusResponse) -> usize {
    status
        .instances
        .iter()
        .filter(|i| i.is_healthy() && i.state() == v1::InstanceState::Running)
        .count()
}

/// Sets every healthy agent's load target to the shared value, as a load balancer spreading
/// demand would, until dropped.
pub struct LoadDriver {
    target: Arc<Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadDriver {
    pub fn start(address: SocketAddr, initial: f64) -> LoadDriver {
        let target = Arc::new(Mutex::new(initial));
        let shared = target.clone();
        let task = tokio::spawn(async move {
            let mut status = status_client(address);
            loop {
                if let Ok(response) = status
                    .get_status(v1::GetStatusRequest {
                        decisions_after: u64::MAX,
                    })
                    .await
                {
                    let level = *shared.lock().unwrap();
                    for instance in response.into_inner().instances {
                        if !instance.is_healthy() {
                            continue;
                        }
                        if let Ok(address) = instance.address.parse() {
                            let _ = agent_client(address, Some(TOKEN))
                                .set_load_target(v1::SetLoadTargetRequest {
                                    target_percent: level,
                                    hold: true,
                                })
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        LoadDriver { target, task }
    }

    pub fn set(&self, level: f64) {
        *self.target.lock().unwrap() = level;
    }
}

impl Drop for LoadDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches a daemon's fleet in the background, every 50 ms, for the invariant "the provider
/// lists no more than `max` instances, and, once the fleet has reached `min`, no fewer than
/// `min`". `check` fails the test with every violation seen.
pub struct FleetInvariant {
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FleetInvariant {
    pub fn watch(address: SocketAddr, min: usize, max: usize) -> FleetInvariant {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let violations = violations.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut client = status_client(address);
                let mut converged = false;
                loop {
                    if let Ok(Ok(response)) = tokio::time::timeout(
                        Duration::from_secs(1),
                        client.get_status(v1::GetStatusRequest {
                            decisions_after: u64::MAX,
                        }),
                    )
                    .await
                    {
                        let status = response.into_inner();
                        let listed = status.instances.iter().filter(|i| i.listed()).count();
                        samples.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        converged |= listed >= min;
                        if listed > max || (converged && listed < min) {
                            violations.lock().unwrap().push(format!(
                                "{listed} instances listed, outside [{min}, {max}]: {:?}",
                                status
                                    .instances
                                    .iter()
                                    .map(|i| (&i.instance_id, i.state().name(), i.health().name()))
                                    .collect::<Vec<_>>()
                            ));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        FleetInvariant {
            violations,
            samples,
            task,
        }
    }

    /// Stops watching; fails if the invariant ever broke or was never sampled.
    pub fn check(self) {
        self.task.abort();
        let samples = self.samples.load(std::sync::atomic::Ordering::Relaxed);
        assert!(samples > 0, "the fleet invariant was never sampled");
        let violations = self.violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "the fleet left its bounds {} times in {samples} samples: {:#?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
    }
}

/// Starts `autoscaler-monitor` as a process on `port` with the test group's TLS material in
/// `<state-dir>/tls`; killed when dropped.
pub fn spawn_daemon_process(
    state_dir: &Path,
    port: u16,
    config_path: &Path,
) -> tokio::process::Child {
    daemon_command(state_dir, port, config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("starting autoscaler-monitor")
}

/// `autoscaler-monitor` on `port` with `config_path` and `state_dir`, killed when dropped.
fn daemon_command(state_dir: &Path, port: u16, config_path: &Path) -> tokio::process::Command {
    // The daemon keeps the material it finds in `<state-dir>/tls`: the test group's.
    write_tls_dir(&state_dir.join("tls"));
    bare_daemon_command(state_dir, port, config_path)
}

/// `daemon_command` without writing the TLS material first: the daemon finds what is there.
pub fn bare_daemon_command(
    state_dir: &Path,
    port: u16,
    config_path: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(monitor_binary());
    command
        .arg("--config")
        .arg(config_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state_dir)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .kill_on_drop(true);
    command
}

/// Starts `autoscaler-monitor` as a process on `port` (and its dashboard on `http`, if given)
/// that must find the lease held, and returns once it says it stands by; killed when dropped.
pub async fn spawn_standby_process(
    state_dir: &Path,
    port: u16,
    http: Option<u16>,
    config_path: &Path,
) -> tokio::process::Child {
    let mut command = daemon_command(state_dir, port, config_path);
    if let Some(http) = http {
        command.args(["--http-listen", &format!("127.0.0.1:{http}")]);
    }
    standing_by(command).await
}

/// Starts `command` (an `autoscaler-monitor`) and returns once it says it stands by.
pub async fn standing_by(mut command: tokio::process::Command) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting autoscaler-monitor");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("its log") {
            if line.contains("standing by") {
                return;
            }
        }
        panic!("the daemon ended without standing by");
    })
    .await
    .expect("standing by within 20 s");
    // The rest of its log is read (and dropped), so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}
