//! The Reach benchmark (`cargo xtask bench` runs it): one monitor (this process: the monitor's
//! own `Registry` and poller, mutual TLS, default timings) polling N agents at 1 Hz, the agents
//! in separate swarm processes (`services/agent/examples/swarm.rs`, at most 5,000 each: the fd
//! limit), each on its own port; and, in the same run, the ceiling: a trivial unary RPC (Ping)
//! between two processes over the same transport, as fast as it goes.
//!
//! Prints one `name|value|unit|note` line per figure. Usage: reach [N ...] (default 100 1000 10000).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use autoscaler_monitor::registry::{Registration, Registry};
use autoscaler_monitor::{Monitor, MonitorConfig};
use autoscaler_policy::fleet::Health;
use autoscaler_proto::auth::{Credentials, Token};
use autoscaler_proto::tls::{Role, TlsMaterial, Transport};
use autoscaler_proto::v1;
use autoscaler_proto::v1::agent_client::AgentClient;
use autoscaler_testkit::process::{cpu_seconds, resident_kib};

/// The monitor binary's allocator (services/monitor/src/main.rs), so this measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token-0123456789";
const PER_SWARM: usize = 5_000;
const WINDOW: Duration = Duration::from_secs(20);

fn figure(name: &str, value: f64, unit: &str, note: &str) {
    println!("{name}|{value:.2}|{unit}|{note}");
}

/// The poll latency histogram as the monitor's `/metrics` shows it: cumulative counts per
/// bucket bound (the last one `+Inf`) and the total, read back from Prometheus' text format.
fn poll_latency(registry: &Registry) -> (Vec<(f64, u64)>, u64) {
    let mut metrics = prometheus_client::registry::Registry::default();
    registry.register_metrics(&mut metrics);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &metrics)
        .expect("writing to a String cannot fail");
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("autoscaler_poll_latency_seconds_bucket{le=\"")?;
            let (bound, rest) = rest.split_once("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0, |(_, count)| *count);
    (buckets, total)
}

/// A quantile from cumulative histogram buckets (upper bound, count), interpolated linearly
/// within the bucket as Prometheus's `histogram_quantile` does.
fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> f64 {
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * into;
        }
        lower = (bound, cumulative);
    }
    f64::INFINITY
}

struct Swarm {
    child: Child,
    agents: Vec<(String, String)>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn swarm(binary: &Path, count: usize, first: usize, tls_dir: &Path) -> Swarm {
    let mut child = Command::new(binary)
        .args([&count.to_string(), &first.to_string()])
        .arg(tls_dir)
        .arg(TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the swarm");
    let stdout = child.stdout.take().expect("piped");
    let mut agents = Vec::with_capacity(count);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("the swarm's output");
        if line == "ready" {
            break;
        }
        let (id, address) = line.split_once(' ').expect("`id address`");
        agents.push((id.to_string(), address.to_string()));
    }
    assert_eq!(agents.len(), count, "the swarm started every agent");
    Swarm { child, agents }
}

fn credentials(tls_dir: &Path, role: Role) -> Credentials {
    let material = TlsMaterial::load(tls_dir, role).expect("the bench's TLS material");
    Credentials::new(
        Token::new(TOKEN).expect("a long token"),
        Transport::tls(material),
    )
}

/// The ceiling: Ping as fast as 32 concurrent callers go, on one swarm agent in another process.
async fn ceiling(swarm_binary: &Path, tls_dir: &Path) {
    let swarm = swarm(swarm_binary, 1, 0, tls_dir);
    let credentials = credentials(tls_dir, Role::Monitor);
    let address = swarm.agents[0].1.clone();
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let channel = credentials
            .channel(&address, Role::Agent, Duration::from_secs(2))
            .expect("an address");
        let mut client = AgentClient::with_interceptor(channel, credentials.attach());
        let (calls, stop) = (calls.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut sequence = 0;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                if client.ping(v1::PingRequest { sequence }).await.is_ok() {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (calls0, cpu0, swarm_cpu0) = (
        calls.load(Ordering::Relaxed),
        cpu_seconds("self"),
        cpu_seconds(&swarm.child.id().to_string()),
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let made = (calls.load(Ordering::Relaxed) - calls0) as f64;
    let cpu = cpu_seconds("self") - cpu0;
    let swarm_cpu = cpu_seconds(&swarm.child.id().to_string()) - swarm_cpu0;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    figure(
        "ceiling-rps",
        made / elapsed,
        "RPC/s",
        "trivial unary RPC (Ping) over mutual TLS between two processes, 32 callers",
    );
    figure(
        "ceiling-caller-cpu-per-rpc",
        cpu / made * 1e6,
        "us",
        "caller's CPU per RPC",
    );
    figure(
        "ceiling-server-cpu-per-rpc",
        swarm_cpu / made * 1e6,
        "us",
        "server process's CPU per RPC",
    );
}

async fn reach(n: usize, swarm_binary: &Path, tls_dir: &Path) {
    let swarms: Vec<Swarm> = (0..n.div_ceil(PER_SWARM))
        .map(|i| {
            let count = PER_SWARM.min(n - i * PER_SWARM);
            swarm(swarm_binary, count, i * PER_SWARM, tls_dir)
        })
        .collect();
    let rss_before = resident_kib("self");
    let started = Instant::now();
    let monitor = Monitor::start(
        MonitorConfig::default(),
        credentials(tls_dir, Role::Monitor),
    )
    .expect("valid");
    let registry = monitor.registry().clone();
    for swarm in &swarms {
        for (instance_id, address) in &swarm.agents {
            registry.register(Registration {
                instance_id: instance_id.clone(),
                address: address.clone(),
                agent_version: autoscaler_proto::VERSION.to_string(),
            });
        }
    }
    let healthy = |registry: &Registry| {
        registry
            .snapshot()
            .instances
            .iter()
            .filter(|i| i.health == Health::Healthy)
            .count()
    };
    let give_up = Instant::now() + Duration::from_secs(120);
    while healthy(&registry) < n && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_healthy_after = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (buckets0, count0) = poll_latency(&registry);
    let cpu0 = cpu_seconds("self");
    let swarm_pids: Vec<String> = swarms.iter().map(|s| s.child.id().to_string()).collect();
    let swarm_cpu0: f64 = swarm_pids.iter().map(|p| cpu_seconds(p)).sum();
    let window_started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = window_started.elapsed().as_secs_f64();
    let (buckets1, count1) = poll_latency(&registry);
    let cpu = cpu_seconds("self") - cpu0;
    let swarm_cpu: f64 = swarm_pids.iter().map(|p| cpu_seconds(p)).sum::<f64>() - swarm_cpu0;
    let rss_after = resident_kib("self");
    let unhealthy_at_end = n - healthy(&registry);

    let polls = (count1 - count0) as f64;
    let window: Vec<(f64, u64)> = buckets1
        .iter()
        .zip(&buckets0)
        .map(|((bound, after), (_, before))| (*bound, after - before))
        .collect();
    let total = count1 - count0;
    let note = |what: &str| format!("{what}, N = {n}");
    figure(
        &format!("reach-{n}-asked"),
        n as f64,
        "polls/s",
        &note("polls asked (1 Hz each)"),
    );
    figure(
        &format!("reach-{n}-achieved"),
        polls / elapsed,
        "polls/s",
        &note("polls made (each is one Ping carrying the metrics)"),
    );
    figure(
        &format!("reach-{n}-p50"),
        quantile(&window, total, 0.50) * 1e3,
        "ms",
        &note("poll latency p50 (histogram, interpolated)"),
    );
    figure(
        &format!("reach-{n}-p99"),
        quantile(&window, total, 0.99) * 1e3,
        "ms",
        &note("poll latency p99 (histogram, interpolated)"),
    );
    figure(
        &format!("reach-{n}-cpu"),
        cpu / elapsed * 100.0,
        "%",
        &note("the monitor's CPU (100 % = one core)"),
    );
    figure(
        &format!("reach-{n}-cpu-per-poll"),
        cpu / polls.max(1.0) * 1e6,
        "us",
        &note("the monitor's CPU per poll (one RPC and its bookkeeping)"),
    );
    figure(
        &format!("reach-{n}-swarm-cpu"),
        swarm_cpu / elapsed * 100.0,
        "%",
        &note("the agents' processes' CPU"),
    );
    figure(
        &format!("reach-{n}-rss-per-agent"),
        (rss_after - rss_before) / n as f64,
        "KiB",
        &note("the monitor's resident memory per agent"),
    );
    figure(
        &format!("reach-{n}-healthy-after"),
        all_healthy_after,
        "s",
        &note("from registering all to all healthy (TLS handshakes included)"),
    );
    figure(
        &format!("reach-{n}-not-healthy"),
        unhealthy_at_end as f64,
        "",
        &note("instances not healthy at the end of the window"),
    );
    monitor.stop().await;
    drop(swarms);
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N is a number"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        sizes
    };
    let examples = std::env::current_exe()
        .expect("this program's path")
        .parent()
        .expect("target/<profile>/examples")
        .to_path_buf();
    let swarm_binary: PathBuf = examples.join("swarm");
    assert!(
        swarm_binary.exists(),
        "{} is missing: build it first (cargo build -p autoscaler-agent --example swarm; cargo xtask bench does)",
        swarm_binary.display()
    );
    let dir = std::env::temp_dir().join(format!("autoscaler-reach-{}", std::process::id()));
    let tls_dir = dir.join("tls");
    autoscaler_proto::tls::ensure_dir(&tls_dir, "reach").expect("the bench's TLS material");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        ceiling(&swarm_binary, &tls_dir).await;
        for n in sizes {
            reach(n, &swarm_binary, &tls_dir).await;
            let _ = std::io::stdout().flush();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
