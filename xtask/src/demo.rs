//! `cargo xtask demo`: runs the monitor and controller on the local provider and tells a scaling
//! story live: demand rises (the fleet grows from 2 to 5), an agent is killed (it is replaced),
//! demand falls (the fleet shrinks back to 2). Exits 0 only if all of that happened. With
//! `--traffic` the demand is real: requests through HAProxy to an application on every
//! instance, whose real load drives the decisions; the summary counts the requests served and
//! failed around every scaling and the replacement.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use anyhow::{Context, bail};
use autoscaler_controller::local::{InstanceRecord, stop_child};
use autoscaler_proto::auth::Token;
use autoscaler_proto::v1;
use autoscaler_testkit::traffic::{Outcome, Traffic, tally};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::util;

#[derive(Debug, clap::Args)]
pub struct Demo {
    /// How long the story lasts, in seconds; its phases scale with it.
    #[arg(long, default_value_t = 180)]
    duration: u64,
    /// Print plain lines instead of redrawing a live table (the default when not on a terminal).
    #[arg(long)]
    plain: bool,
    /// Real HTTP traffic: an application beside every agent, HAProxy in front (Debian's
    /// package, installed with apt-get where missing), and a load generator sending the demand
    /// as requests through it.
    #[arg(long)]
    traffic: bool,
}

/// What one instance of `provisioning/demo-traffic.toml` serves at most: 4 slots of 50 ms.
const CAPACITY_RPS: f64 = 80.0;

/// Demand over the story, in units of instance capacity (one instance at 100 % serves one unit).
fn demand(progress: f64) -> f64 {
    let (low, high, end) = (0.7, 4.6, 0.6);
    let ramp = |from: f64, to: f64, start: f64, stop: f64| {
        from + (to - from) * ((progress - start) / (stop - start))
    };
    match progress {
        p if p < 0.10 => low,
        p if p < 0.35 => ramp(low, high, 0.10, 0.35),
        p if p < 0.58 => high,
        p if p < 0.66 => ramp(high, end, 0.58, 0.66),
        _ => end,
    }
}

/// When the demo kills an agent, as a fraction of the story.
const KILL_AT: f64 = 0.45;

/// How long the daemon gets to stop its agents and exit before it is killed.
const DAEMON_GRACE: Duration = Duration::from_secs(20);

fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let start = values.len().saturating_sub(20);
    values[start..]
        .iter()
        .map(|v| BARS[((v / 100.0 * 7.0).round() as usize).min(7)])
        .collect()
}

impl Story {
    /// Notes a moment for the traffic's summary; moments at the same time are one.
    fn moment(&mut self, t: f64, what: String, scaling: bool) {
        match self.moments.last_mut() {
            Some((at, text, was_scaling)) if (*at - t).abs() < 0.01 => {
                text.push_str("; ");
                text.push_str(&what);
                *was_scaling = *was_scaling && scaling;
            }
            _ => self.moments.push((t, what, scaling)),
        }
    }
}

/// What the story saw, for the summary and the verdict.
#[derive(Default)]
struct Story {
    start_size_reached: bool,
    peak: usize,
    reached_max_at: Option<f64>,
    back_to_min_at: Option<f64>,
    killed: Option<(String, f64)>,
    replaced_at: Option<f64>,
    events: Vec<String>,
    sizes: Vec<(f64, usize)>,
    /// With traffic: when each scaling, drain and the kill happened (seconds into the story),
    /// what it was, and whether it was a scaling (where no request may fail).
    moments: Vec<(f64, String, bool)>,
    /// With traffic: what became of every request.
    requests: Vec<Outcome>,
}

impl Demo {
    pub fn run(self) -> anyhow::Result<()> {
        if self.duration < 60 {
            bail!(
                "--duration {} is too short to tell the story; give at least 60 seconds",
                self.duration
            );
        }
        let sh = util::shell()?;
        // The daemon looks haproxy up in PATH, then /usr/sbin: an AUTOSCALER_HAPROXY named
        // `haproxy` is found first.
        let haproxy = match (self.traffic, std::env::var_os("AUTOSCALER_HAPROXY")) {
            (false, _) => None,
            (true, Some(path)) => Some(std::path::PathBuf::from(path)),
            (true, None) => Some(util::haproxy(&sh)?),
        };
        util::build_binaries(&sh)?;
        let target_dir = util::profile_dir("dev")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = match haproxy.as_ref().and_then(|h| h.parent()) {
            Some(dir) => {
                let mut dirs = vec![dir.to_path_buf()];
                dirs.extend(std::env::split_paths(
                    &std::env::var_os("PATH").unwrap_or_default(),
                ));
                Some(std::env::join_paths(dirs)?)
            }
            None => None,
        };
        runtime.block_on(self.tell(&target_dir, path))
    }

    /// Runs the story; `path`, when given, is the daemon's PATH (where it finds haproxy).
    async fn tell(
        &self,
        target_dir: &Path,
        path: Option<std::ffi::OsString>,
    ) -> anyhow::Result<()> {
        let token = Token::generate().context("cannot draw the demo's token")?;
        let state_dir =
            std::env::temp_dir().join(format!("autoscaler-demo-{}", std::process::id()));
        std::fs::create_dir_all(&state_dir)?;
        let free_port = || -> std::io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let address = format!("127.0.0.1:{}", free_port()?);
        let dashboard = format!("127.0.0.1:{}", free_port()?);
        let balancer: Option<SocketAddr> = match self.traffic {
            true => Some(format!("127.0.0.1:{}", free_port()?).parse()?),
            false => None,
        };
        let (config, balancer_args) = match balancer {
            Some(balancer) => (
                "provisioning/demo-traffic.toml",
                vec!["--balancer-listen".to_string(), balancer.to_string()],
            ),
            None => ("provisioning/demo.toml", Vec::new()),
        };
        let token_file = state_dir.join("token");
        std::fs::write(&token_file, token.expose())?;
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let tls_dir = state_dir.join("tls");
        autoscaler_proto::tls::ensure_dir(&tls_dir, "demo")?;
        let log = std::fs::File::create(state_dir.join("monitor.log"))?;
        let mut daemon = Command::new(target_dir.join("autoscaler-monitor"))
            .arg("--config")
            .arg(util::root().join(config))
            .args(["--listen", &address, "--http-listen", &dashboard])
            .args(&balancer_args)
            .envs(path.map(|path| ("PATH", path)))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--tls-dir")
            .arg(&tls_dir)
            .env("AUTOSCALER_TOKEN", token.expose())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The last resort, if this task is dropped (a panic): the daemon's own stop, which
            // ends its agents, is `stop_child` below.
            .kill_on_drop(true)
            .spawn()
            .context("cannot start autoscaler-monitor")?;
        let story = self
            .follow(
                &address,
                &dashboard,
                balancer,
                &token,
                (&token_file, &tls_dir),
                &state_dir,
            )
            .await;
        // Ask politely (the daemon terminates its agents), then make sure; on every path.
        let deadline = tokio::time::Instant::now() + DAEMON_GRACE;
        if let Err(error) = stop_child(&mut daemon, deadline).await {
            eprintln!("cannot stop the daemon: {error}");
        }
        let story = story?;
        let leftovers: Vec<u32> = InstanceRecord::all(&state_dir)
            .into_iter()
            .map(|(_, record)| record.pid)
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        summarize(&story, &leftovers)
    }

    /// Follows the running daemon for the story's duration, driving demand and killing an
    /// agent midway, and says what it saw.
    async fn follow(
        &self,
        address: &str,
        dashboard: &str,
        balancer: Option<SocketAddr>,
        token: &Token,
        (token_file, tls_dir): (&Path, &Path),
        state_dir: &Path,
    ) -> anyhow::Result<Story> {
        let live = !self.plain && std::io::stdout().is_terminal();
        println!(
            "autoscaler demo: monitor and controller on {address}, local provider, min 2, max 5"
        );
        println!("  dashboard: http://{dashboard}/  (metrics: http://{dashboard}/metrics)");
        if let Some(balancer) = balancer {
            println!(
                "  traffic: HAProxy at http://{balancer}/ in front of an app on every instance \
                 ({CAPACITY_RPS:.0} requests/s each at most); the demand is sent as requests"
            );
        }
        println!(
            "  from another terminal: cargo xtask status --monitor {address} --token-file {} --tls-dir {} --follow",
            token_file.display(),
            tls_dir.display()
        );
        println!("  logs and instance records: {}", state_dir.display());
        println!(
            "  the story: demand rises, an agent is killed at {:.0}s, demand falls; {}s in all\n",
            KILL_AT * self.duration as f64,
            self.duration
        );

        let credentials = crate::status_client::credentials(token.expose(), Some(tls_dir))?;
        let mut daemon_client = crate::status_client::Daemon::new(address, &credentials)?;
        let mut story = Story::default();
        let mut seen_decisions = 0u64;
        let mut decision_lines: Vec<String> = Vec::new();
        let started = Instant::now();
        let total = Duration::from_secs(self.duration);
        let mut last_plain_table = 0.0;
        let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
        let traffic = balancer.map(|balancer| Traffic::start(balancer, 0.0));

        while started.elapsed() < total {
            tokio::select! {
                _ = &mut interrupt => {
                    println!("\ninterrupted: stopping the daemon and its agents");
                    bail!("interrupted");
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let t = started.elapsed().as_secs_f64();
            let progress = t / total.as_secs_f64();
            let Ok(report) = daemon_client.status_after(seen_decisions).await else {
                continue;
            };

            // New decisions, as they happen.
            for record in &report.decisions {
                seen_decisions = seen_decisions.max(record.sequence);
                if record.repeated > 0 && record.launched.is_empty() && record.terminated.is_empty()
                {
                    continue;
                }
                let line = format!("[{t:6.1}s] #{:<3} {}", record.sequence, record.summary);
                if !record.replaced.is_empty()
                    && story.killed.as_ref().is_some_and(|(id, _)| {
                        record.replaced.iter().any(|r| r.starts_with(id.as_str()))
                    })
                {
                    story.replaced_at.get_or_insert(t);
                }
                for outcome in &record.outcome {
                    decision_lines.push(format!("           -> {outcome}"));
                }
                if !live {
                    println!("{line}");
                    for outcome in &record.outcome {
                        println!("           -> {outcome}");
                    }
                }
                let len = decision_lines.len();
                decision_lines.insert(len - record.outcome.len(), line);
                // What changed: the decision's own summary when it acted, and the terminations
                // a drain ended (recorded by a later, quiet decision).
                let acted = record.summary.starts_with("launch")
                    || record.summary.starts_with("scale in")
                    || record.summary.starts_with("replace");
                if acted {
                    story.events.push(format!("{t:6.1}s  {}", record.summary));
                }
                for outcome in &record.outcome {
                    let terminated = outcome.contains(": terminated ");
                    if terminated && !acted {
                        story.events.push(format!("{t:6.1}s  {outcome}"));
                    }
                    // The first fill of the group (from 0) is not a scaling the traffic sees.
                    let filling = record.summary.contains(" 0 -> ");
                    let scaling = !outcome.contains("replaced");
                    if !filling
                        && (outcome.starts_with("launched ")
                            || outcome.starts_with("draining ")
                            || terminated)
                    {
                        story.moment(t, outcome.clone(), scaling);
                    }
                }
            }

            // The fleet, and the demand spread over its healthy instances.
            let running: Vec<&v1::InstanceStatus> =
                report.instances.iter().filter(|i| i.listed()).collect();
            let healthy: Vec<&v1::InstanceStatus> =
                running.iter().copied().filter(|i| i.is_healthy()).collect();
            let size = running.len();
            story.sizes.push((t, size));
            if healthy.len() == 2 && size == 2 {
                story.start_size_reached = true;
                if story.reached_max_at.is_some() {
                    story.back_to_min_at.get_or_insert(t);
                }
            }
            story.peak = story.peak.max(healthy.len());
            if healthy.len() == 5 {
                story.reached_max_at.get_or_insert(t);
            }
            let level = demand(progress);
            if let Some(traffic) = &traffic {
                // Requests start once the group first stands, as clients would find it.
                let serving = running
                    .iter()
                    .filter(|i| i.target_state() == v1::TargetState::Healthy)
                    .count();
                if serving >= 2 || traffic.rate() > 0.0 {
                    traffic.set_rate(level * CAPACITY_RPS);
                }
            } else if !healthy.is_empty() {
                let per_instance = (level * 100.0 / healthy.len() as f64).min(100.0);
                for instance in &healthy {
                    let _ = daemon_client
                        .set_load_target(&instance.instance_id, per_instance, true)
                        .await;
                }
            }

            // Midway, an agent dies (with its app, when it has one: the instance is gone).
            if story.killed.is_none()
                && progress >= KILL_AT
                && let Some(victim) = healthy.first()
                && let Some(InstanceRecord { pid, app, .. }) =
                    InstanceRecord::read(state_dir, &victim.instance_id)
            {
                // The reader accepts only pids a signal can safely go to.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                if let Some(app) = app {
                    let _ = kill(Pid::from_raw(app.pid as i32), Signal::SIGKILL);
                }
                let what = match app {
                    Some(app) => format!("the agent (pid {pid}) and the app (pid {})", app.pid),
                    None => format!("the agent (pid {pid})"),
                };
                let line = format!(
                    "[{t:6.1}s] demo: killed {what} of {} with SIGKILL",
                    victim.instance_id
                );
                story.moment(t, format!("killed {}", victim.instance_id), false);
                if !live {
                    println!("{line}");
                }
                decision_lines.push(line);
                story
                    .events
                    .push(format!("{t:6.1}s  demo killed {}", victim.instance_id));
                story.killed = Some((victim.instance_id.clone(), t));
            }

            if live {
                draw(&report, t, self.duration, level, &decision_lines, dashboard);
            } else if t - last_plain_table >= 15.0 {
                last_plain_table = t;
                println!(
                    "[{t:6.1}s] demand {level:.2} units{}; fleet {size} (desired {}): {}",
                    traffic
                        .as_ref()
                        .map_or(String::new(), |t| format!(" ({:.0} requests/s)", t.rate())),
                    report.desired_instances,
                    running
                        .iter()
                        .map(|i| format!(
                            "{} {} {}",
                            i.instance_id,
                            i.health().name(),
                            i.load_percent.map_or("-".into(), |l| format!("{l:.0}%"))
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }

        if let Some(traffic) = traffic {
            story.requests = traffic.stop().await;
        }
        Ok(story)
    }
}

fn draw(
    report: &v1::GetStatusResponse,
    t: f64,
    duration: u64,
    demand: f64,
    decisions: &[String],
    dashboard: &str,
) {
    let mut out = String::new();
    out.push_str("\x1b[H\x1b[2J");
    out.push_str(&format!(
        "autoscaler demo  t = {t:5.1}s / {duration}s  dashboard http://{dashboard}/\n   demand {demand:.2} units   fleet {} (desired {}, min {}, max {})\n\n",
        report.instances.iter().filter(|i| i.listed()).count(),
        report.desired_instances,
        report.min_instances,
        report.max_instances
    ));
    if let Some(failing) = &report.launch_failures {
        out.push_str(&format!(
            "   launches failing: {} in a row; last: {}\n\n",
            failing.consecutive, failing.last_reason
        ));
    }
    out.push_str(&format!(
        "{:<12} {:<9} {:<11} {:>6}  {:<20}  {}\n",
        "INSTANCE", "STATE", "HEALTH", "LOAD", "RECENT LOAD", "BALANCER"
    ));
    for instance in &report.instances {
        let balancer = match instance.target_state().name() {
            "" => String::new(),
            state => format!(
                "{state}{}",
                instance
                    .requests_per_second
                    .map_or(String::new(), |r| format!(", {r:.0} requests/s"))
            ),
        };
        out.push_str(&format!(
            "{:<12} {:<9} {:<11} {:>6}  {:<20}  {balancer}\n",
            instance.instance_id,
            instance.state().name(),
            instance.health().name(),
            crate::status_client::load_text(instance.load_percent),
            sparkline(&instance.recent_loads)
        ));
    }
    out.push_str("\nDecisions (newest last):\n");
    let start = decisions.len().saturating_sub(14);
    for line in &decisions[start..] {
        out.push_str(line);
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

fn summarize(story: &Story, leftovers: &[u32]) -> anyhow::Result<()> {
    println!("\n=== summary ===");
    let final_size = story.sizes.last().map_or(0, |(_, size)| *size);
    println!(
        "peak size: {} healthy instances; final size: {final_size}",
        story.peak
    );
    println!("scaling and replacements:");
    for event in &story.events {
        println!("  {event}");
    }
    match (&story.killed, story.replaced_at) {
        (Some((id, killed)), Some(replaced)) => {
            println!(
                "replaced: {id}, killed at {killed:.1}s, replaced at {replaced:.1}s ({:.1}s later)",
                replaced - killed
            )
        }
        (Some((id, _)), None) => println!("replaced: {id} was killed and NOT replaced"),
        (None, _) => println!("replaced: nothing (no agent was killed)"),
    }
    let mut failures = Vec::new();
    if !story.requests.is_empty() {
        let all = tally(&story.requests, Duration::ZERO, Duration::MAX);
        println!(
            "requests: {} served, {} failed in all; around each scaling and the kill (until the next one):",
            all.served, all.failed
        );
        let mut failed_while_scaling = 0;
        for (i, (at, what, scaling)) in story.moments.iter().enumerate() {
            let until = story
                .moments
                .get(i + 1)
                .map_or(at + 20.0, |(next, _, _)| *next)
                .min(at + 20.0);
            let window = tally(
                &story.requests,
                Duration::from_secs_f64(*at),
                Duration::from_secs_f64(until.max(*at)),
            );
            println!(
                "  {at:6.1}s  {what:<45} {:>6} served, {:>4} failed",
                window.served, window.failed
            );
            if *scaling {
                failed_while_scaling += window.failed;
            }
        }
        if failed_while_scaling > 0 {
            failures.push("requests failed while the group scaled out or in");
        }
        if all.served == 0 {
            failures.push("no request was served");
        }
    }
    if !story.start_size_reached {
        failures.push("the fleet never stood at its minimum of 2");
    }
    if story.reached_max_at.is_none() {
        failures.push("the fleet never reached 5");
    }
    if story.back_to_min_at.is_none() {
        failures.push("the fleet did not come back to 2 after its peak");
    }
    if story.replaced_at.is_none() {
        failures.push("the killed agent was not replaced");
    }
    if !leftovers.is_empty() {
        println!("agents left running: {leftovers:?}");
        failures.push("agents outlived the daemon");
    }
    if failures.is_empty() {
        let traffic = if story.requests.is_empty() {
            ""
        } else {
            ", no request failed while it scaled"
        };
        println!(
            "verdict: PASS (2 -> 5 -> 2, the killed agent replaced, no process left behind{traffic})"
        );
        Ok(())
    } else {
        bail!("verdict: FAIL: {}", failures.join("; "))
    }
}
