//! The project's binaries as processes: where they are, free ports for them, whether a pid
//! still runs, and an agent process with the test group's certificate.

use std::net::SocketAddr;
use std::path::PathBuf;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::group::{TOKEN, write_tls_dir};

/// The project's binary `name`, built beside the running test (`cargo xtask test` builds them
/// first), or the path in the environment variable `env`.
pub fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let test_exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> or target/<profile>/examples/<example>
    let profile_dir = test_exe
        .parent()
        .and_then(|dir| dir.parent())
        .expect("the test runs from a target directory");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} does not exist: build it first with `cargo build --workspace --bins` (`cargo xtask test` does), or set {env}",
        binary.display()
    );
    binary
}

/// The `autoscaler-agent` binary.
pub fn agent_binary() -> PathBuf {
    binary("autoscaler-agent", "AUTOSCALER_AGENT_BIN")
}

/// The `autoscaler-monitor` binary (the daemon).
pub fn monitor_binary() -> PathBuf {
    binary("autoscaler-monitor", "AUTOSCALER_MONITOR_BIN")
}

/// The `autoscaler-app` binary.
pub fn app_binary() -> PathBuf {
    binary("autoscaler-app", "AUTOSCALER_APP_BIN")
}

/// HAProxy, for the tests of the local load balancer: `AUTOSCALER_HAPROXY`, or Debian's
/// `/usr/sbin/haproxy` (which `cargo xtask test` installs when it is missing).
pub fn haproxy_binary() -> PathBuf {
    let path = std::env::var_os("AUTOSCALER_HAPROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask test` (it installs Debian's haproxy package), or \
         `apt-get install haproxy`, or set AUTOSCALER_HAPROXY to an haproxy binary (2.6 or later)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The CPU time `pid` has used, user and system, in seconds (0 if it cannot be read). `pid` is
/// a number or `self`.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14, stime 15 (1-based), so 11 and 12 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports them in USER_HZ, 100 a second on every architecture it runs on.
    (ticks(11) + ticks(12)) / 100.0
}

/// The resident memory of `pid` (a number or `self`) in KiB (0 if it cannot be read).
pub fn resident_kib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sends `signal` to `pid`, which must be a real process (never 0, 1 or a group).
pub fn signal_pid(pid: i32, signal: Signal) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    kill(Pid::from_raw(pid), signal).expect("signalling a test process");
}

/// An agent process with the test group's certificate, killed when dropped (its TLS
/// directory removed).
pub struct AgentProcess {
    pub child: tokio::process::Child,
    pub address: SocketAddr,
    tls_dir: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.tls_dir);
    }
}

impl AgentProcess {
    pub fn spawn(instance_id: &str, monitor: SocketAddr) -> AgentProcess {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls_dir = std::env::temp_dir().join(format!(
            "autoscaler-test-agent-{}-{}",
            std::process::id(),
            address.port()
        ));
        write_tls_dir(&tls_dir);
        let child = tokio::process::Command::new(agent_binary())
            .arg("--tls-dir")
            .arg(&tls_dir)
            .args(["--instance-id", instance_id])
            .args(["--listen", &address.to_string()])
            .args(["--monitor", &monitor.to_string()])
            .args(["--reregister-after-ms", "1000"])
            .env("AUTOSCALER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("starting autoscaler-agent");
        AgentProcess {
            child,
            address,
            tls_dir,
        }
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("the agent process runs");
        signal_pid(pid as i32, signal);
    }
}

/// The workspace's root directory (this crate's parent).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with grpcio-tools that `cargo xtask test` installs into `.venv`, or
/// `AUTOSCALER_PYTHON`.
pub fn python() -> PathBuf {
    let python = std::env::var_os("AUTOSCALER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} does not exist: run `cargo xtask test`, which creates .venv and installs grpcio-tools from xtask/requirements.txt, or set AUTOSCALER_PYTHON to a Python that has grpcio-tools",
        python.display()
    );
    python
}
