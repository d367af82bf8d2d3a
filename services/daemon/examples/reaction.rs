//! Benchmark of how fast the monitor and controller notice and react, with the default timings
//! (1 s polls, unhealthy after 3 misses, 1 s evaluations) on the local provider. Run by
//! `cargo xtask bench`; prints one `figure|value|unit|note` line per measurement.
//!
//! - Noticing: agents frozen with SIGSTOP one at a time (alive, so only the monitor's polls can
//!   tell), the time to "unhealthy" and to the replacement launch, p50 and p99.
//! - False alarms: a CPU hog on every core for a while, counting instances that turn suspect,
//!   unhealthy or get replaced.
//! - Reacting: every agent's load raised at once; the time from the first evaluation that sees
//!   the average above the target's tolerance band to the launch.

use autoscaler_policy::time::now_ms;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autoscaler_controller::local::InstanceRecord;
use autoscaler_daemon::daemon::{self, DaemonConfig, RunOptions};
use autoscaler_proto::auth::{AttachToken, Credentials, Token};
use autoscaler_proto::tls::{Role, TlsMaterial, Transport};
use autoscaler_proto::v1;
use autoscaler_proto::v1::operator_client::OperatorClient;
use autoscaler_proto::v1::status_client::StatusClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TOKEN: &str = "bench-token-0123456789";

type Status = StatusClient<InterceptedService<Channel, AttachToken>>;

/// A channel to the daemon at `address`, as the operator of the group whose material is in `tls_dir`.
fn channel(address: &str, tls_dir: &std::path::Path) -> Channel {
    let material = TlsMaterial::load(tls_dir, Role::Operator).expect("the bench's TLS material");
    Credentials::new(token(), Transport::tls(material))
        .channel(address, Role::Monitor, Duration::from_secs(5))
        .expect("a valid address")
}

fn token() -> Token {
    Token::new(TOKEN).expect("a long enough token")
}

async fn status(client: &mut Status) -> v1::GetStatusResponse {
    loop {
        if let Ok(response) = client
            .get_status(v1::GetStatusRequest { decisions_after: 0 })
            .await
        {
            return response.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(
    client: &mut Status,
    what: &str,
    deadline: Duration,
    condition: impl Fn(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let give_up = Instant::now() + deadline;
    loop {
        let status = status(client).await;
        if condition(&status) {
            return status;
        }
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn healthy(status: &v1::GetStatusResponse) -> usize {
    status
        .instances
        .iter()
        .filter(|i| i.is_healthy() && i.state() == v1::InstanceState::Running)
        .count()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn figure(name: &str, value: f64, unit: &str, note: &str) {
    println!("{name}|{value:.2}|{unit}|{note}");
}

#[tokio::main]
async fn main() {
    let kills: usize = std::env::args()
        .skip_while(|a| a != "--kills")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let hog_secs: u64 = std::env::args()
        .skip_while(|a| a != "--hog-secs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let agent_binary: PathBuf = std::env::current_exe()
        .expect("the bench's own path")
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples")
        .join("autoscaler-agent");
    assert!(
        agent_binary.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        agent_binary.display()
    );
    let state_dir = std::env::temp_dir().join(format!("autoscaler-bench-{}", std::process::id()));
    let config = DaemonConfig::from_toml(&format!(
        r#"
group = "bench"
[controller]
min_instances = 3
max_instances = 5
scale_out_cooldown_secs = 0
warmup_secs = 5
[provider]
kind = "local"
state_dir = "{}"
agent_args = ["--max-slope", "100", "--drift-amplitude", "0", "--initial-load", "30", "--target-load", "30"]
terminate_grace_ms = 1000
"#,
        state_dir.display()
    ))
    .expect("a valid bench config");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls_dir = state_dir.join("tls");
    autoscaler_proto::tls::ensure_dir(&tls_dir, "bench").expect("the bench's TLS material");
    let options = RunOptions {
        agent_binary,
        advertise: address.clone(),
        aws: None,
        http: None,
        tls: daemon::TlsSource::Dir(tls_dir.clone()),
        temp_dir: std::env::temp_dir(),
        path: std::env::var_os("PATH").unwrap_or_default(),
        reload: None,
    };
    let daemon = tokio::spawn(async move {
        daemon::run(config, token(), listener, options, async {
            stopped.await.ok();
        })
        .await
        .expect("the daemon runs");
    });
    let mut client =
        StatusClient::with_interceptor(channel(&address, &tls_dir), AttachToken::new(&token()));
    let mut operator =
        OperatorClient::with_interceptor(channel(&address, &tls_dir), AttachToken::new(&token()));
    wait_for(&mut client, "3 healthy", Duration::from_secs(60), |s| {
        healthy(s) == 3
    })
    .await;

    // Noticing.
    let mut to_unhealthy = Vec::new();
    let mut to_launch = Vec::new();
    for _ in 0..kills {
        let current = wait_for(&mut client, "3 healthy", Duration::from_secs(60), |s| {
            healthy(s) == 3 && s.instances.len() == 3
        })
        .await;
        let victim = current.instances[0].instance_id.clone();
        let pid = InstanceRecord::read(&state_dir, &victim)
            .expect("the victim's record")
            .pid as i32;
        let frozen_at = now_ms();
        let frozen = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("SIGSTOP");
        wait_for(&mut client, "unhealthy", Duration::from_secs(30), |s| {
            s.instances
                .iter()
                .any(|i| i.instance_id == victim && i.health() == v1::InstanceHealth::Unhealthy)
                || s.instances.iter().all(|i| i.instance_id != victim)
        })
        .await;
        to_unhealthy.push(frozen.elapsed().as_secs_f64());
        let replaced = wait_for(&mut client, "replacement", Duration::from_secs(30), |s| {
            s.decisions.iter().any(|d| {
                d.replaced.iter().any(|r| r.starts_with(&victim)) && !d.launched.is_empty()
            })
        })
        .await;
        let decision = replaced
            .decisions
            .iter()
            .find(|d| d.replaced.iter().any(|r| r.starts_with(&victim)))
            .expect("found above");
        to_launch.push((decision.at_unix_ms - frozen_at) as f64 / 1_000.0);
    }
    let p = |values: &mut Vec<f64>, q| percentile(values, q);
    figure(
        "notice-unhealthy-p50",
        p(&mut to_unhealthy, 50.0),
        "s",
        "agent frozen (SIGSTOP) to marked unhealthy",
    );
    figure(
        "notice-unhealthy-p99",
        p(&mut to_unhealthy, 99.0),
        "s",
        "agent frozen (SIGSTOP) to marked unhealthy",
    );
    figure(
        "notice-replace-p50",
        p(&mut to_launch, 50.0),
        "s",
        "agent frozen to the replacement's launch decision",
    );
    figure(
        "notice-replace-p99",
        p(&mut to_launch, 99.0),
        "s",
        "agent frozen to the replacement's launch decision",
    );
    figure(
        "notice-kills",
        kills as f64,
        "",
        "agents frozen, one at a time",
    );

    // False alarms under a CPU hog on every core.
    wait_for(&mut client, "3 healthy", Duration::from_secs(60), |s| {
        healthy(s) == 3 && s.instances.len() == 3
    })
    .await;
    let before = status(&mut client).await;
    let last_sequence = before
        .decisions
        .iter()
        .map(|d| d.sequence)
        .max()
        .unwrap_or(0);
    let hogging = Arc::new(AtomicBool::new(true));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let hogging = hogging.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while hogging.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut suspect_samples = 0;
    let mut unhealthy_samples = 0;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(hog_secs) {
        let now = status(&mut client).await;
        samples += 1;
        suspect_samples += now
            .instances
            .iter()
            .filter(|i| i.health() == v1::InstanceHealth::Suspect)
            .count();
        unhealthy_samples += now
            .instances
            .iter()
            .filter(|i| i.health() == v1::InstanceHealth::Unhealthy)
            .count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hogging.store(false, Ordering::Relaxed);
    for hog in hogs {
        let _ = hog.join();
    }
    let after = status(&mut client).await;
    let replaced: usize = after
        .decisions
        .iter()
        .filter(|d| d.sequence > last_sequence)
        .map(|d| d.replaced.len())
        .sum();
    figure(
        "false-alarm-replacements",
        replaced as f64,
        "",
        &format!("healthy agents replaced during {hog_secs} s of a CPU hog on all {cores} cores"),
    );
    figure(
        "false-alarm-unhealthy-samples",
        unhealthy_samples as f64,
        "",
        &format!("instance-samples marked unhealthy, of {samples} status reads (every 100 ms)"),
    );
    figure(
        "false-alarm-suspect-samples",
        suspect_samples as f64,
        "",
        &format!("instance-samples marked suspect (one missed poll), of {samples} status reads"),
    );

    // Reacting: every agent's load to 90 % at once (target 50 %, tolerance 10 %).
    let current = wait_for(&mut client, "3 healthy", Duration::from_secs(60), |s| {
        healthy(s) == 3 && s.instances.len() == 3
    })
    .await;
    let last_sequence = current
        .decisions
        .iter()
        .map(|d| d.sequence)
        .max()
        .unwrap_or(0);
    let raised_at = now_ms();
    for instance in &current.instances {
        operator
            .set_load_target(v1::OperatorLoadTargetRequest {
                instance_id: instance.instance_id.clone(),
                target_percent: 90.0,
                hold: true,
            })
            .await
            .expect("SetLoadTarget");
    }
    let reacted = wait_for(&mut client, "a scale-out", Duration::from_secs(30), |s| {
        s.decisions
            .iter()
            .any(|d| d.sequence > last_sequence && !d.launched.is_empty())
    })
    .await;
    let mut fresh: Vec<&v1::DecisionRecord> = reacted
        .decisions
        .iter()
        .filter(|d| d.sequence > last_sequence)
        .collect();
    fresh.sort_by_key(|d| d.sequence);
    let launch = fresh
        .iter()
        .find(|d| !d.launched.is_empty())
        .expect("found above");
    let crossed = fresh
        .iter()
        .find(|d| d.average_load_percent.is_some_and(|a| a > 55.0))
        .map_or(launch.at_unix_ms, |d| d.at_unix_ms);
    figure(
        "react-crossing-to-launch",
        (launch.at_unix_ms - crossed) as f64 / 1_000.0,
        "s",
        "first evaluation seeing the average above 55 % to the launch",
    );
    figure(
        "react-raise-to-launch",
        (launch.at_unix_ms - raised_at) as f64 / 1_000.0,
        "s",
        "agents' load raised (SetLoadTarget) to the launch: includes the next poll",
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon).await;
    let _ = std::fs::remove_dir_all(&state_dir);
}
