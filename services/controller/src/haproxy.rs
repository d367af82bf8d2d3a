//! The local load balancer: HAProxy (Debian's package, 2.6 or later), started by the daemon with
//! a generated configuration (one frontend, one backend of dynamic servers) and driven through
//! its runtime API on a UNIX socket in the state dir: `add server` and `enable health` when an
//! instance enters service, `set server ... state drain` to drain it, `state maint` and `del
//! server` to remove it, `show stat` for each server's state and requests in flight. It outlives
//! the daemon that started it, as the instances do: a successor (a standby taking over, a
//! restarted daemon) takes up the HAProxy it finds running its configuration, servers and
//! connections as they are, so that no request fails while the leader changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::balancer::{Balancer, Pending, Target, TargetState, TargetStatus};
use crate::cloud::{CloudError, CloudErrorKind};
use crate::local::{Stopped, stop_child, stop_pid, zombie_or_gone};

/// The backend every instance is a server of.
pub const BACKEND: &str = "app";

/// How long one runtime API command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long HAProxy gets to start answering on its socket, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How the local balancer runs.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// The `haproxy` program.
    pub binary: PathBuf,
    /// Where clients send requests.
    pub listen: SocketAddr,
    /// Where its configuration, socket and log are kept.
    pub dir: PathBuf,
    /// The path its health checks ask (`GET`, 200 expected).
    pub health_path: String,
    /// Between health checks of one server.
    pub check_interval: Duration,
    /// Failed checks in a row that take a server out of service.
    pub unhealthy_after: u32,
    /// Passed checks in a row that put it (back) in.
    pub healthy_after: u32,
}

impl HaproxyConfig {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        format!(
            "# Written by autoscaler-monitor at every start; servers are added at run time.\n\
             global\n\
             \x20   stats socket {socket} mode 600 level admin\n\
             \x20   stats timeout 10s\n\
             \x20   maxconn 4096\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout queue 10s\n\
             \x20   # A request whose connection failed goes to another server.\n\
             \x20   retries 2\n\
             \x20   option redispatch 1\n\
             frontend autoscaler\n\
             \x20   bind {listen}\n\
             \x20   default_backend {BACKEND}\n\
             backend {BACKEND}\n\
             \x20   balance leastconn\n\
             \x20   option httpchk GET {health}\n\
             \x20   http-check expect status 200\n\
             \x20   retry-on conn-failure empty-response\n",
            socket = self.socket().display(),
            listen = self.listen,
            health = self.health_path,
        )
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> CloudError {
    CloudError::new(
        CloudErrorKind::Unavailable,
        format!("haproxy: {what}: {error}"),
    )
}

/// One command on the runtime API socket at `socket`; its answer.
async fn command(socket: &Path, line: &str) -> Result<String, CloudError> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(unavailable(&format!("`{line}`"), error)),
        Err(_) => Err(CloudError::new(
            CloudErrorKind::Timeout,
            format!("haproxy: `{line}` not answered within {COMMAND_TIMEOUT:?}"),
        )),
    }
}

/// A server name HAProxy takes: the instance ids of both providers are (`local-0007`,
/// `i-0123abcd`); anything else is refused before it reaches the socket.
fn server_name(instance_id: &str) -> Result<&str, CloudError> {
    let valid = !instance_id.is_empty()
        && instance_id.len() <= 64
        && instance_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(instance_id)
    } else {
        Err(CloudError::new(
            CloudErrorKind::Other,
            format!("{instance_id:?} is not a server name HAProxy takes"),
        ))
    }
}

/// The servers of `BACKEND` in a `show stat` answer (CSV with a `# ` header line).
pub fn parse_stat(csv: &str) -> Vec<TargetStatus> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let columns: BTreeMap<&str, usize> = header
        .split(',')
        .enumerate()
        .map(|(i, name)| (name, i))
        .collect();
    let field = |row: &[&str], name: &str| -> Option<String> {
        columns
            .get(name)
            .and_then(|i| row.get(*i))
            .map(|v| v.to_string())
    };
    lines
        .filter_map(|line| {
            let row: Vec<&str> = line.split(',').collect();
            if field(&row, "pxname")? != BACKEND {
                return None;
            }
            let name = field(&row, "svname")?;
            if name == "BACKEND" || name == "FRONTEND" {
                return None;
            }
            let status = field(&row, "status").unwrap_or_default();
            let check = field(&row, "check_status").unwrap_or_default();
            let number = |name: &str| {
                field(&row, name)
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            let in_flight = number("scur") + number("qcur");
            // `MAINT`, `DRAIN`, `UP`, `DOWN`, `NOLB`, with details such as `UP 1/2` or
            // `MAINT (resolution)`.
            // `DOWN 1/2`: down, and passing checks on its way up (a new server before its
            // `rise`-th passed check): not yet in service, and not failing either.
            let rising = status.starts_with("DOWN")
                && status
                    .split_whitespace()
                    .nth(1)
                    .and_then(|progress| progress.split_once('/'))
                    .and_then(|(passed, _)| passed.parse::<u32>().ok())
                    .is_some_and(|passed| passed > 0);
            let state = match status.split_whitespace().next().unwrap_or("") {
                "MAINT" => TargetState::Unused,
                "DRAIN" => TargetState::Draining,
                _ if status.contains("DRAIN") => TargetState::Draining,
                _ if check.contains("INI") || rising => TargetState::Initial,
                "UP" | "NOLB" => TargetState::Healthy,
                _ => TargetState::Unhealthy,
            };
            let reason = (state == TargetState::Unhealthy)
                .then(|| {
                    let description = field(&row, "last_chk").unwrap_or_default();
                    format!("{status}: check {check} {description}")
                        .trim()
                        .to_string()
                })
                .filter(|r| !r.is_empty());
            Some(TargetStatus {
                instance_id: name,
                state,
                in_flight: Some(in_flight),
                reason,
            })
        })
        .collect()
}

/// A running HAProxy, stopped by `stop`; left running when dropped (a successor takes it up).
#[derive(Debug)]
pub struct Haproxy {
    config: HaproxyConfig,
    process: tokio::sync::Mutex<Running>,
}

/// The HAProxy process: this daemon's child, or one it took up (by its pid), or stopped.
#[derive(Debug)]
enum Running {
    Child(tokio::process::Child),
    TakenUp(u32),
    Stopped,
}

impl Haproxy {
    /// Takes up the HAProxy a previous daemon left running on the same socket with the same
    /// configuration (its servers keep serving); otherwise stops it, writes the configuration
    /// and starts HAProxy. Returns once it answers on its socket.
    pub async fn start(config: HaproxyConfig) -> Result<Haproxy, CloudError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| unavailable(&format!("cannot create {}", config.dir.display()), e))?;
        let socket = config.socket();
        let file = config.dir.join("haproxy.cfg");
        if let Ok(info) = command(&socket, "show info").await
            && let Some(pid) = info
                .lines()
                .find_map(|line| line.strip_prefix("Pid: "))
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .filter(|pid| *pid > 1 && i32::try_from(*pid).is_ok())
        {
            let same = std::fs::read_to_string(&file).is_ok_and(|text| text == config.render());
            if same {
                tracing::info!(
                    pid,
                    "taking up the HAProxy a previous daemon left running: its servers keep serving"
                );
                return Ok(Haproxy {
                    config,
                    process: tokio::sync::Mutex::new(Running::TakenUp(pid)),
                });
            }
            tracing::warn!(
                pid,
                "stopping the HAProxy a previous daemon left running with another configuration"
            );
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            if let Err(error) = stop_pid(pid, deadline).await {
                tracing::warn!(pid, %error, "cannot stop the HAProxy left running");
            }
        }
        let child = spawn(&config).await?;
        Ok(Haproxy {
            config,
            process: tokio::sync::Mutex::new(Running::Child(child)),
        })
    }

    pub fn config(&self) -> &HaproxyConfig {
        &self.config
    }

    /// Starts HAProxy again if it ended (it crashed, or someone killed it): the controller
    /// registers the instances in service again at the same evaluation, as the targets are
    /// gone. Says whether it had ended.
    async fn keep_running(&self) -> Result<bool, CloudError> {
        let mut process = self.process.lock().await;
        let ended = match &mut *process {
            Running::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(error) => Some(error.to_string()),
            },
            Running::TakenUp(pid) if zombie_or_gone(*pid) => Some(format!("pid {pid} is gone")),
            Running::TakenUp(_) | Running::Stopped => None,
        };
        let Some(why) = ended else {
            return Ok(false);
        };
        tracing::warn!(%why, "HAProxy ended; starting it again");
        let child = spawn(&self.config).await?;
        *process = Running::Child(child);
        Ok(true)
    }

    /// Stops HAProxy (this daemon's child or the one it took up): SIGTERM, then SIGKILL after
    /// a grace.
    pub async fn stop(&self) {
        let mut process = self.process.lock().await;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let stopped = match std::mem::replace(&mut *process, Running::Stopped) {
            Running::Child(mut child) => stop_child(&mut child, deadline).await,
            Running::TakenUp(pid) => stop_pid(pid, deadline).await,
            Running::Stopped => return,
        };
        match stopped {
            Ok(Stopped::Killed) => tracing::warn!("HAProxy ignored SIGTERM; it was killed"),
            Ok(_) => tracing::info!("HAProxy stopped"),
            Err(error) => tracing::warn!(%error, "cannot stop HAProxy"),
        }
    }

    /// HAProxy's process id, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        match &*self.process.lock().await {
            Running::Child(child) => child.id(),
            Running::TakenUp(pid) => Some(*pid),
            Running::Stopped => None,
        }
    }

    /// Whether this daemon took up a HAProxy it found running rather than starting one.
    pub async fn taken_up(&self) -> bool {
        matches!(*self.process.lock().await, Running::TakenUp(_))
    }

    async fn command(&self, line: &str) -> Result<String, CloudError> {
        command(&self.config.socket(), line).await
    }

    /// Runs `line`; an answer that is not one of `fine` (empty counts as fine) is an error.
    async fn expect(&self, line: &str, fine: &[&str]) -> Result<(), CloudError> {
        self.answer(line, fine).await.map(drop)
    }

    /// Runs `line` and returns its answer; one that is not one of `fine` (empty counts as
    /// fine) is an error.
    async fn answer(&self, line: &str, fine: &[&str]) -> Result<String, CloudError> {
        let answer = self.command(line).await?;
        let answer = answer.trim();
        if answer.is_empty() || fine.iter().any(|f| answer.contains(f)) {
            Ok(answer.to_string())
        } else {
            Err(CloudError::new(
                CloudErrorKind::Unavailable,
                format!("haproxy: `{line}`: {answer}"),
            ))
        }
    }
}

/// Why HAProxy would not start, from what it logged: its first alert that names a cause (a
/// socket it cannot bind, a line of its configuration), not the summary it ends with ("Some
/// protocols failed to start their listeners! Exiting.").
pub fn start_failure(log: &str) -> String {
    let generic = [
        "failed to start their listeners",
        "Fatal errors found in configuration",
        "Error(s) found in configuration file",
    ];
    let alerts: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|line| line.contains("[ALERT]") || line.contains("[WARNING]"))
        .collect();
    let cause = alerts
        .iter()
        .filter(|line| line.contains("[ALERT]"))
        .chain(alerts.iter())
        .find(|line| !generic.iter().any(|g| line.contains(g)))
        .copied()
        .or_else(|| log.lines().rev().map(str::trim).find(|l| !l.is_empty()));
    match cause {
        // `[ALERT]    (1234) : message`: the message.
        Some(line) => line
            .split_once(") : ")
            .map_or(line, |(_, message)| message)
            .trim()
            .to_string(),
        None => "no log".to_string(),
    }
}

/// Writes the configuration and starts HAProxy as a process of its own; returns once it
/// answers on its socket.
async fn spawn(config: &HaproxyConfig) -> Result<tokio::process::Child, CloudError> {
    let socket = config.socket();
    let file = config.dir.join("haproxy.cfg");
    let _ = std::fs::remove_file(&socket);
    std::fs::write(&file, config.render())
        .map_err(|e| unavailable(&format!("cannot write {}", file.display()), e))?;
    let log_path = config.dir.join("haproxy.log");
    // Appended to: a HAProxy started again keeps the log of the one that ended.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| unavailable(&format!("cannot open {}", log_path.display()), e))?;
    let log_err = log.try_clone().map_err(|e| unavailable("log file", e))?;
    // Where this start's lines begin in the log.
    let logged_before = log.metadata().map_or(0, |m| m.len());
    let mut child = tokio::process::Command::new(&config.binary)
        .arg("-f")
        .arg(&file)
        // In the foreground, as the daemon's child.
        .arg("-db")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Not killed on drop: a daemon that hands over leaves it to its successor.
        .kill_on_drop(false)
        .spawn()
        .map_err(|error| {
            CloudError::new(
                CloudErrorKind::Other,
                format!(
                    "cannot start {} ({error}): install Debian's haproxy package \
                         (apt-get install haproxy), or set load_balancer.binary",
                    config.binary.display()
                ),
            )
        })?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if command(&socket, "show info").await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let this_start = log
                .get(usize::try_from(logged_before).unwrap_or(0)..)
                .unwrap_or(&log);
            return Err(CloudError::new(
                CloudErrorKind::Other,
                format!(
                    "haproxy exited at start ({status}): {} (its log: {})",
                    start_failure(&String::from_utf8_lossy(this_start)),
                    log_path.display()
                ),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CloudError::new(
                CloudErrorKind::Timeout,
                format!(
                    "haproxy did not answer on {} within {START_TIMEOUT:?}",
                    socket.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(listen = %config.listen, socket = %socket.display(), "HAProxy started");
    Ok(child)
}

const NO_SUCH_SERVER: &str = "No such server";

impl Balancer for Haproxy {
    fn targets(&self) -> Pending<'_, Vec<TargetStatus>> {
        Box::pin(async move {
            if self.keep_running().await? {
                return Ok(Vec::new());
            }
            Ok(parse_stat(&self.command("show stat").await?))
        })
    }

    fn register<'a>(&'a self, target: &'a Target) -> Pending<'a, ()> {
        Box::pin(async move {
            let name = server_name(&target.instance_id)?;
            let address: SocketAddr = target.address.parse().map_err(|_| {
                CloudError::new(
                    CloudErrorKind::Other,
                    format!(
                        "{:?} is not an address HAProxy takes (ip:port)",
                        target.address
                    ),
                )
            })?;
            let config = &self.config;
            let added = self.answer(
                &format!(
                    "add server {BACKEND}/{name} {address} check inter {inter} fall {fall} rise {rise}",
                    address = address,
                    inter = config.check_interval.as_millis().max(100),
                    fall = config.unhealthy_after.max(1),
                    rise = config.healthy_after.max(1),
                ),
                &["New server registered", "Already exists"],
            )
            .await?;
            self.expect(&format!("enable health {BACKEND}/{name}"), &[])
                .await?;
            // A new server starts down, as a new ELB target starts "initial": it gets no
            // request until it has passed `rise` health checks. (HAProxy 2.6 counts a server
            // whose check has not run yet as up, and sends it requests at once; `init-state`
            // came only in 3.1.) Its health can be forced down only out of maintenance: it
            // passes through drain (no new request) on the way. One registered again keeps the
            // health its checks gave it.
            if added.contains("New server registered") {
                self.expect(&format!("set server {BACKEND}/{name} state drain"), &[])
                    .await?;
                self.expect(&format!("set server {BACKEND}/{name} health down"), &[])
                    .await?;
            }
            self.expect(&format!("set server {BACKEND}/{name} state ready"), &[])
                .await
        })
    }

    fn deregister<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let name = server_name(instance_id)?;
            self.expect(
                &format!("set server {BACKEND}/{name} state drain"),
                &[NO_SUCH_SERVER],
            )
            .await
        })
    }

    fn remove<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let name = server_name(instance_id)?;
            self.expect(
                &format!("set server {BACKEND}/{name} state maint"),
                &[NO_SUCH_SERVER],
            )
            .await?;
            // Refused while connections are still attached: tried again at a later evaluation.
            self.expect(
                &format!("del server {BACKEND}/{name}"),
                &["Server deleted", NO_SUCH_SERVER],
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside test, finding 9: the cause, not HAProxy's closing summary.
    #[test]
    fn a_failed_start_is_told_by_its_cause() {
        let log = "[NOTICE]   (7) : haproxy version is 2.6.12\n\
                   [ALERT]    (7) : Starting frontend autoscaler: cannot bind socket (Address already in use) [127.0.0.1:8080]\n\
                   [ALERT]    (7) : [/usr/sbin/haproxy.main()] Some protocols failed to start their listeners! Exiting.\n";
        assert_eq!(
            start_failure(log),
            "Starting frontend autoscaler: cannot bind socket (Address already in use) [127.0.0.1:8080]"
        );
        assert_eq!(start_failure("just one line\n"), "just one line");
        assert_eq!(start_failure(""), "no log");
    }

    #[test]
    fn show_stat_gives_each_server_its_state_and_requests_in_flight() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,status,check_status,last_chk\n\
                   autoscaler,FRONTEND,,,3,9,OPEN,,\n\
                   app,local-0001,0,0,2,5,UP,L7OK,\n\
                   app,local-0002,1,1,0,3,DRAIN,L7OK,\n\
                   app,local-0003,0,0,0,0,DOWN,L4CON,Connection refused\n\
                   app,local-0004,0,0,0,0,DOWN,INI,\n\
                   app,local-0005,0,0,0,0,MAINT,,\n\
                   app,local-0006,0,0,0,0,DOWN 1/2,L7OK,\n\
                   app,BACKEND,1,1,2,5,UP,,\n";
        let targets = parse_stat(csv);
        let states: Vec<(&str, TargetState, Option<u32>)> = targets
            .iter()
            .map(|t| (t.instance_id.as_str(), t.state, t.in_flight))
            .collect();
        assert_eq!(
            states,
            [
                ("local-0001", TargetState::Healthy, Some(2)),
                ("local-0002", TargetState::Draining, Some(1)),
                ("local-0003", TargetState::Unhealthy, Some(0)),
                ("local-0004", TargetState::Initial, Some(0)),
                ("local-0005", TargetState::Unused, Some(0)),
                ("local-0006", TargetState::Initial, Some(0)),
            ]
        );
        assert!(
            targets[2]
                .reason
                .as_deref()
                .unwrap()
                .contains("Connection refused")
        );
        assert!(!targets[1].drained(), "one request still queued");
        assert!(targets[4].drained());
        assert!(targets[2].drained(), "down, nothing in flight");
        assert!(parse_stat("").is_empty());
        assert!(parse_stat("no header\n").is_empty());
    }

    #[test]
    fn only_server_names_haproxy_takes_reach_the_socket() {
        assert!(server_name("local-0007").is_ok());
        assert!(server_name("i-0123456789abcdef0").is_ok());
        for bad in ["", "a b", "a/b", "x;shutdown", "local\n0001"] {
            assert!(server_name(bad).is_err(), "{bad:?}");
        }
    }
}
