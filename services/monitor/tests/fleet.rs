//! End-to-end tests of the controller on the local provider: scale out under high load, scale in
//! under low load, a killed agent replaced, a restarted daemon adopting its running instances
//! without duplicates, and an invalid config refused. The fleet stays within its bounds
//! throughout (checked on every status read).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoscaler_monitor::daemon::{self, DaemonConfig};
use autoscaler_proto::auth::AttachToken;
use autoscaler_proto::v1;
use autoscaler_proto::v1::status_client::StatusClient;
use support::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Status = StatusClient<InterceptedService<Channel, AttachToken>>;

fn status_client(address: std::net::SocketAddr) -> Status {
    StatusClient::with_interceptor(channel(address), AttachToken::new(&token()))
}

/// Kills every agent recorded in a state directory when dropped, so a failed test leaves no
/// process behind.
struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> StateDir {
        let dir =
            std::env::temp_dir().join(format!("autoscaler-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }

    fn pid_of(&self, instance_id: &str) -> Option<i32> {
        let record =
            std::fs::read_to_string(self.0.join(format!("{instance_id}.instance"))).ok()?;
        record.split_whitespace().next()?.parse().ok()
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".instance")
                            .map(str::to_string)
                    })
                    .filter_map(|id| self.pid_of(&id))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn fast_daemon_config(state_dir: &Path) -> DaemonConfig {
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

struct RunningDaemon {
    address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningDaemon {
    async fn start(config: DaemonConfig) -> RunningDaemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let options = daemon::RunOptions {
                agent_binary: agent_binary(),
                advertise: address.to_string(),
                aws: None,
            };
            daemon::run(config, token(), listener, options, async {
                stopped.await.ok();
            })
            .await
            .expect("daemon run");
        });
        RunningDaemon {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the daemon stops within 20 s")
            .unwrap();
    }
}

/// Reads the status until `condition` holds, checking on every read that the group never has
/// more than `max` instances.
async fn wait_status(
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
        let listed = status
            .instances
            .iter()
            .filter(|i| i.state != "unlisted")
            .count();
        assert!(
            listed <= max,
            "{listed} instances, above the maximum {max}: {status:#?}"
        );
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting until {what}; status: {:#?}",
            status.instances
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn healthy(status: &v1::GetStatusResponse) -> usize {
    status
        .instances
        .iter()
        .filter(|i| i.health == "healthy" && i.state == "running")
        .count()
}

/// Sets every healthy agent's load target to the shared value, as a load balancer spreading
/// demand would, until dropped.
struct LoadDriver {
    target: Arc<Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadDriver {
    fn start(address: std::net::SocketAddr, initial: f64) -> LoadDriver {
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
                        if instance.health != "healthy" {
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

    fn set(&self, level: f64) {
        *self.target.lock().unwrap() = level;
    }
}

impl Drop for LoadDriver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn scales_out_under_high_load_and_in_under_low_load() {
    let state_dir = StateDir::new("scale");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    wait_status(
        &mut client,
        "the minimum of 2 healthy",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;

    let load = LoadDriver::start(daemon.address, 90.0);
    let status = wait_status(
        &mut client,
        "scaled out to the maximum of 4",
        4,
        Duration::from_secs(60),
        |s| healthy(s) == 4,
    )
    .await;
    let launched: usize = status.decisions.iter().map(|d| d.launched.len()).sum();
    assert_eq!(
        launched, 4,
        "2 at start and 2 for the load: {:#?}",
        status.decisions
    );

    load.set(5.0);
    let status = wait_status(
        &mut client,
        "scaled in to the minimum of 2",
        4,
        Duration::from_secs(60),
        |s| s.instances.len() == 2 && healthy(s) == 2,
    )
    .await;
    let scale_ins: Vec<&v1::DecisionRecord> = status
        .decisions
        .iter()
        .filter(|d| !d.terminated.is_empty())
        .collect();
    assert!(!scale_ins.is_empty());
    assert!(
        scale_ins.iter().all(|d| d.summary.contains("scale in")),
        "{scale_ins:#?}"
    );
    drop(load);

    let pids = state_dir.pids();
    assert_eq!(pids.len(), 2);
    daemon.stop().await;
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the daemon");
    }
}

#[tokio::test]
async fn a_killed_agent_is_replaced() {
    let state_dir = StateDir::new("replace");
    let daemon = RunningDaemon::start(fast_daemon_config(&state_dir.0)).await;
    let mut client = status_client(daemon.address);
    let status = wait_status(&mut client, "2 healthy", 4, Duration::from_secs(30), |s| {
        healthy(s) == 2
    })
    .await;
    let victim = status.instances[0].instance_id.clone();
    let pid = state_dir.pid_of(&victim).expect("a pid for the victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let status = wait_status(
        &mut client,
        "the victim replaced and 2 healthy again",
        4,
        Duration::from_secs(30),
        |s| healthy(s) == 2 && s.instances.iter().all(|i| i.instance_id != victim),
    )
    .await;
    let replacing = status
        .decisions
        .iter()
        .find(|d| d.replaced.iter().any(|r| r.starts_with(&victim)))
        .expect("a decision that replaced the victim");
    assert_eq!(replacing.terminated, [victim]);
    assert_eq!(replacing.launched.len(), 1, "{replacing:#?}");
    assert!(replacing.rules.contains(&"health".to_string()));
    daemon.stop().await;
}

fn spawn_daemon_process(state_dir: &Path, port: u16, config_path: &Path) -> tokio::process::Child {
    let monitor_binary = agent_binary().with_file_name("autoscaler-monitor");
    tokio::process::Command::new(monitor_binary)
        .arg("--config")
        .arg(config_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state_dir)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("starting autoscaler-monitor")
}

#[tokio::test]
async fn a_restarted_daemon_adopts_its_running_instances_without_duplicates() {
    let state_dir = StateDir::new("adopt");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    let config_path = state_dir.0.join("config.toml");
    std::fs::write(
        &config_path,
        "[monitor]\npoll_interval_ms = 200\npoll_timeout_ms = 150\n[controller]\nevaluation_interval_ms = 250\nregistration_grace_secs = 5\nwarmup_secs = 3\n[provider]\nkind = \"local\"\nagent_args = [\"--reregister-after-ms\", \"1000\"]\n",
    )
    .unwrap();
    let port = free_port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut first = spawn_daemon_process(&state_dir.0, port, &config_path);
    let mut client = status_client(address);
    let before = wait_status(
        &mut client,
        "2 healthy under the first daemon",
        5,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;
    let ids: BTreeSet<String> = before
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();

    // A crash: the daemon dies at once, its agents live on.
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let mut second = spawn_daemon_process(&state_dir.0, port, &config_path);
    let mut client = status_client(address);
    let after = wait_status(
        &mut client,
        "the same 2 healthy under the second daemon",
        5,
        Duration::from_secs(30),
        |s| healthy(s) == 2,
    )
    .await;
    let adopted: BTreeSet<String> = after
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(adopted, ids);
    // Past the registration grace, still nothing launched or replaced.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = client
        .get_status(v1::GetStatusRequest { decisions_after: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(
        later
            .decisions
            .iter()
            .all(|d| d.launched.is_empty() && d.terminated.is_empty()),
        "the second daemon acted: {:#?}",
        later.decisions
    );
    assert_eq!(later.instances.len(), 2);

    let pids = state_dir.pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the daemon");
    }
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_the_field_named() {
    let state_dir = StateDir::new("invalid");
    std::fs::create_dir_all(&state_dir.0).unwrap();
    let config_path = state_dir.0.join("bad.toml");
    std::fs::write(
        &config_path,
        "[controller]\nmin_instances = 3\nmax_instances = 2\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(agent_binary().with_file_name("autoscaler-monitor"))
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0"])
        .env("AUTOSCALER_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("controller.min_instances"), "{stderr}");
    assert!(
        state_dir.pids().is_empty(),
        "an invalid config launched something"
    );
}
