//! The agent's footprint on a 1 GiB t2.micro: the size of the binary as it ships (the `agent`
//! profile), its resident memory while a monitor polls it at 1 Hz (and how that grows over a run
//! of minutes), and the CPU it spends per poll answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use autoscaler_proto::auth::Token;
use autoscaler_testkit::process::{cpu_seconds, resident_kib};

use super::Figure;

/// A process of the benchmark's, stopped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /metrics` from the agent, within a timeout.
fn agent_metrics(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Heartbeats the agent says it answered.
fn polls_answered(address: SocketAddr) -> Option<f64> {
    let text = agent_metrics(address).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("autoscaler_agent_polls_total "))?
        .trim()
        .parse()
        .ok()
}

fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs the shipped agent (`agent_binary`) under the monitor alone (`monitor_binary`, polling
/// at its default 1 Hz, over mutual TLS) for `run`, and measures it.
pub fn measure(
    agent_binary: &Path,
    monitor_binary: &Path,
    run: Duration,
) -> anyhow::Result<Vec<Figure>> {
    let size = std::fs::metadata(agent_binary)
        .with_context(|| format!("cannot read {}", agent_binary.display()))?
        .len();
    let dir = std::env::temp_dir().join(format!("autoscaler-footprint-{}", std::process::id()));
    let tls_dir = dir.join("tls");
    autoscaler_proto::tls::ensure_dir(&tls_dir, "footprint")?;
    let token = Token::generate().context("cannot draw a token")?;
    let monitor_address = free_address()?;
    let agent_address = free_address()?;
    let metrics_address = free_address()?;
    let log =
        |name: &str| -> anyhow::Result<Stdio> { Ok(std::fs::File::create(dir.join(name))?.into()) };
    let _monitor = Running(
        Command::new(monitor_binary)
            .args(["--no-controller", "--listen", &monitor_address.to_string()])
            .arg("--tls-dir")
            .arg(&tls_dir)
            .env("AUTOSCALER_TOKEN", token.expose())
            .stdout(log("monitor.log")?)
            .stderr(log("monitor.log")?)
            .spawn()
            .context("cannot start the monitor")?,
    );
    let agent = Running(
        Command::new(agent_binary)
            .args(["--instance-id", "local-0001"])
            .args(["--listen", &agent_address.to_string()])
            .args(["--monitor", &monitor_address.to_string()])
            .args(["--metrics-listen", &metrics_address.to_string()])
            .arg("--tls-dir")
            .arg(&tls_dir)
            .env("AUTOSCALER_TOKEN", token.expose())
            .stdout(log("agent.log")?)
            .stderr(log("agent.log")?)
            .spawn()
            .context("cannot start the agent")?,
    );
    let pid = agent.0.id().to_string();

    // Until the monitor polls it.
    let give_up = Instant::now() + Duration::from_secs(30);
    while polls_answered(metrics_address).unwrap_or(0.0) < 2.0 {
        if Instant::now() > give_up {
            bail!(
                "the agent was not polled within 30 s: see the logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A minute to settle (allocator pools, TLS sessions), then the measured run.
    let settle = Duration::from_secs(60).min(run / 4);
    std::thread::sleep(settle);
    let polls_start = polls_answered(metrics_address).context("the agent's metrics")?;
    let cpu_start = cpu_seconds(&pid);
    let rss_start = resident_kib(&pid);
    let started = Instant::now();
    let mut rss_peak = rss_start;
    while started.elapsed() < run {
        std::thread::sleep(Duration::from_secs(5));
        rss_peak = rss_peak.max(resident_kib(&pid));
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let polls = polls_answered(metrics_address).context("the agent's metrics")? - polls_start;
    let cpu = cpu_seconds(&pid) - cpu_start;
    let rss_end = resident_kib(&pid);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    if polls < 1.0 {
        bail!("the agent answered no poll in {minutes:.1} minutes");
    }
    let figure = |name: &str, value: f64, unit: &str, note: &str| Figure {
        name: name.to_string(),
        value,
        unit: unit.to_string(),
        note: note.to_string(),
    };
    Ok(vec![
        figure(
            "agent-binary",
            size as f64 / 1e6,
            "MB",
            "the agent as it ships (profile `agent`: size-optimised, LTO, stripped)",
        ),
        figure(
            "agent-rss-start",
            rss_start / 1024.0,
            "MiB",
            "resident, polled at 1 Hz, after the first minute",
        ),
        figure(
            "agent-rss-end",
            rss_end / 1024.0,
            "MiB",
            "resident at the end of the run",
        ),
        figure(
            "agent-rss-peak",
            rss_peak / 1024.0,
            "MiB",
            "highest resident sample (every 5 s)",
        ),
        figure(
            "agent-rss-growth",
            (rss_end - rss_start) / minutes,
            "KiB/min",
            "resident memory's growth over the run",
        ),
        figure("agent-run", minutes, "min", "measured run"),
        figure(
            "agent-polls",
            polls,
            "polls",
            "heartbeats answered in the run",
        ),
        figure(
            "agent-cpu-per-poll",
            cpu / polls * 1e6,
            "us",
            "the agent's CPU (user and system) per poll answered, the simulated load's sampling (5 a second) included",
        ),
    ])
}
