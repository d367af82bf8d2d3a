//! `autoscaler-simulate`: replays a demand trace through several policies (the project's own,
//! from its config files, and the AWS and Kubernetes references) and prints their scores as a
//! table and their curves as an SVG chart.

use std::path::PathBuf;
use std::process::ExitCode;

use autoscaler_policy::config::ControllerConfig;
use autoscaler_policy::simulate::trace::{Shape, ShapeParams, Trace, parse_duration};
use autoscaler_policy::simulate::{
    self as simulation, CloudModel, Options, Policy, Run, chart, simulate,
};
use clap::Parser;

/// Replay a demand trace through scaling policies and score them.
#[derive(Parser, Debug)]
#[command(name = "autoscaler-simulate", version)]
struct Args {
    /// A built-in demand shape (ignored with --csv).
    #[arg(long, value_enum, default_value = "flash-crowd")]
    shape: Shape,
    /// A `time,demand` CSV (seconds, instance capacities) to replay instead of a shape.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Length of a built-in shape: 90s, 15m, 6h, 30d.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    duration: usize,
    /// Lowest demand of a shape, in instance capacities.
    #[arg(long, default_value_t = 0.6)]
    base: f64,
    /// Highest demand of a shape, in instance capacities.
    #[arg(long, default_value_t = 2.4)]
    peak: f64,
    /// Per-second multiplicative noise of a shape (0.02 is +/-2 %).
    #[arg(long, default_value_t = 0.02)]
    noise: f64,
    /// Seed of the noise and of launch failures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Policies to compare: ours-target, ours-step, ours-predictive, aws-step, aws-target,
    /// aws-predictive, k8s-hpa, or a TOML file (a daemon config with a [controller] table, or
    /// the table's fields alone). Default: all seven.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Smallest fleet for the built-in and reference policies.
    #[arg(long, default_value_t = 2)]
    min: u32,
    /// Largest fleet for the built-in and reference policies.
    #[arg(long, default_value_t = 5)]
    max: u32,
    /// Target load of the Kubernetes HPA reference, percent.
    #[arg(long, default_value_t = 50.0)]
    hpa_target: f64,
    /// Target load of the EC2 target tracking and predictive scaling references, percent.
    #[arg(long, default_value_t = 50.0)]
    aws_target: f64,
    /// The trace's first part, not replayed nor scored: its demand is the history the
    /// forecasters start with (ours-predictive, aws-predictive): 14d, 36h.
    #[arg(long, value_parser = parse_duration)]
    warm_up: Option<usize>,
    /// Seconds from launch to serving.
    #[arg(long, default_value_t = 60)]
    boot_delay: u64,
    /// Seconds a terminated instance is still paid for.
    #[arg(long, default_value_t = 30)]
    termination_delay: u64,
    /// Probability that the provider refuses a launch, 0-1.
    #[arg(long, default_value_t = 0.0)]
    launch_failure_rate: f64,
    /// Seconds from a launch until the provider lists the instance (at most 120: the live
    /// controller stops counting a launch it does not see listed after that).
    #[arg(long, default_value_t = 0)]
    listing_lag: u64,
    /// Seconds a removed instance with requests in flight drains from a load balancer before
    /// its termination; 0: no load balancer.
    #[arg(long, default_value_t = 0)]
    drain: u64,
    /// The wall-clock time of the trace's first second (RFC 3339): the clock scheduled windows
    /// hold at.
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    /// Per-instance load SLO, percent.
    #[arg(long, default_value_t = 80.0)]
    slo: f64,
    /// A scale-in this many seconds after a scale-out counts as a reversal.
    #[arg(long, default_value_t = 300)]
    reversal_window: u64,
    /// Where to write the chart.
    #[arg(long, default_value = "target/simulation.svg")]
    chart: PathBuf,
}

/// The built-in policies, in the table's order.
const BUILT_IN: [&str; 7] = [
    "ours-target",
    "ours-step",
    "ours-predictive",
    "aws-step",
    "aws-target",
    "aws-predictive",
    "k8s-hpa",
];

fn policy(name: &str, args: &Args) -> Result<Policy, String> {
    let (min, max) = (args.min, args.max);
    Ok(match name {
        "ours-target" => Policy::ours_target(min, max),
        "ours-step" => Policy::ours_step(min, max),
        "ours-predictive" => Policy::ours_predictive(min, max),
        "aws-step" => Policy::aws_step(min, max),
        "aws-target" => Policy::aws_target(args.aws_target, min, max),
        "aws-predictive" => Policy::aws_predictive(args.aws_target, min, max),
        "k8s-hpa" => Policy::hpa(args.hpa_target, min, max),
        path => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "policy `{path}` is none of {} nor a readable file: {e}",
                    BUILT_IN.join(", ")
                )
            })?;
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
            let controller = match table.remove("controller") {
                Some(toml::Value::Table(controller)) => controller,
                Some(_) => return Err(format!("{path}: `controller` is not a table")),
                None => table,
            };
            let config: ControllerConfig = controller
                .try_into()
                .map_err(|e| format!("{path}: [controller]: {e}"))?;
            config.validate().map_err(|e| format!("{path}: {e}"))?;
            let name = std::path::Path::new(path)
                .file_stem()
                .map_or(path.to_string(), |s| s.to_string_lossy().into_owned());
            Policy::Project {
                name,
                config: Box::new(config),
            }
        }
    })
}

fn check(args: &Args) -> Result<(), String> {
    let check_bounds = ControllerConfig {
        min_instances: args.min,
        max_instances: args.max,
        instance_limit: args.max.max(1),
        ..ControllerConfig::default()
    };
    check_bounds.validate().map_err(|e| {
        e.to_string()
            .replace("`controller.min_instances`", "--min")
            .replace("`controller.max_instances`", "--max")
    })?;
    for (flag, target) in [
        ("--hpa-target", args.hpa_target),
        ("--aws-target", args.aws_target),
    ] {
        if !(target > 0.0 && target <= 100.0) {
            return Err(format!("{flag} {target} must be within 0-100"));
        }
    }
    if !(args.slo > 0.0 && args.slo <= 100.0) {
        return Err(format!("--slo {} must be within 0-100", args.slo));
    }
    if !(0.0..=1.0).contains(&args.launch_failure_rate) {
        return Err(format!(
            "--launch-failure-rate {} must be within 0-1",
            args.launch_failure_rate
        ));
    }
    let listed_within = autoscaler_policy::policy::LISTED_WITHIN.as_secs();
    if args.listing_lag > listed_within {
        return Err(format!(
            "--listing-lag {} must be at most {listed_within}: the controller stops counting a \
             launch it does not see listed after that",
            args.listing_lag
        ));
    }
    for (flag, secs) in [
        ("--boot-delay", args.boot_delay),
        ("--termination-delay", args.termination_delay),
        ("--drain", args.drain),
    ] {
        if secs > 86_400 {
            return Err(format!("{flag} {secs} must be at most 86400"));
        }
    }
    Ok(())
}

fn table(runs: &[Run], oracle: &Run) -> String {
    let least = oracle.scores.instance_hours;
    let mut out = format!(
        "{:<16} {:>10} {:>7} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>7} {:>5} {:>5} {:>5}\n",
        "POLICY",
        "INST-H",
        "xORACLE",
        "ACC_U",
        "ACC_O",
        "TS_U%",
        "TS_O%",
        "JITTER",
        "SLO%",
        "SLO-S",
        "OUT",
        "IN",
        "REV"
    );
    for run in runs.iter().chain([oracle]) {
        let s = &run.scores;
        out.push_str(&format!(
            "{:<16} {:>10.1} {:>7.3} {:>8.3} {:>8.3} {:>7.1} {:>7.1} {:>8.3} {:>8.3} {:>7} {:>5} {:>5} {:>5}\n",
            run.policy,
            s.instance_hours,
            s.instance_hours / least.max(f64::MIN_POSITIVE),
            s.accuracy_u,
            s.accuracy_o,
            s.timeshare_u,
            s.timeshare_o,
            s.jitter,
            s.slo_violation_share,
            s.slo_violation_secs,
            s.scale_outs,
            s.scale_ins,
            s.reversals
        ));
    }
    out
}

fn run(args: Args) -> Result<(), String> {
    check(&args)?;
    let trace = match &args.csv {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = path
                .file_name()
                .map_or("csv".into(), |n| n.to_string_lossy());
            Trace::from_csv(&name, &text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Trace::shape(
            args.shape,
            &ShapeParams {
                duration_secs: args.duration,
                base: args.base,
                peak: args.peak,
                noise: args.noise,
                seed: args.seed,
            },
        )
        .map_err(|e| e.to_string())?,
    };
    let names: Vec<String> = if args.policies.is_empty() {
        BUILT_IN.map(String::from).to_vec()
    } else {
        args.policies.clone()
    };
    let policies = names
        .iter()
        .map(|name| policy(name, &args))
        .collect::<Result<Vec<_>, _>>()?;
    let warm_up = args.warm_up.unwrap_or(0);
    let options = Options {
        cloud: CloudModel {
            boot_delay_secs: args.boot_delay,
            termination_delay_secs: args.termination_delay,
            launch_failure_rate: args.launch_failure_rate,
            listing_lag_secs: args.listing_lag,
            drain_secs: args.drain,
            seed: args.seed,
        },
        slo: args.slo,
        reversal_window_secs: args.reversal_window,
        keep_series: true,
        start_secs: start_secs(&args.start)?,
        warm_up_secs: warm_up,
    };
    if warm_up >= trace.demand.len() {
        return Err(format!(
            "--warm-up {} s leaves nothing of the {} s trace to replay",
            warm_up,
            trace.demand.len()
        ));
    }
    let started = std::time::Instant::now();
    let runs: Vec<Run> = policies
        .iter()
        .map(|policy| simulate(&trace, policy, &options))
        .collect();
    let elapsed = started.elapsed();
    println!(
        "trace {}: {} s ({:.1} h), demand {:.2}-{:.2} instance capacities; boot {} s, listing lag {} s, drain {} s, termination {} s, launch failures {:.0} %, SLO {} %",
        trace.name,
        trace.demand.len(),
        trace.demand.len() as f64 / 3_600.0,
        trace.demand.iter().copied().fold(f64::INFINITY, f64::min),
        trace.demand.iter().copied().fold(0.0, f64::max),
        args.boot_delay,
        args.listing_lag,
        args.drain,
        args.termination_delay,
        args.launch_failure_rate * 100.0,
        args.slo
    );
    if warm_up > 0 {
        println!(
            "  the first {:.1} h are the forecasters' history, not replayed nor scored",
            warm_up as f64 / 3_600.0
        );
    }
    for run in &runs {
        println!("  {:<16} {}", run.policy, run.description);
    }
    for warning in runs.iter().flat_map(|run| &run.warnings) {
        eprintln!("warning: {warning}");
    }
    let oracle = simulation::oracle(&trace, args.min, args.max, &options);
    println!("  {:<16} {}", oracle.policy, oracle.description);
    println!();
    print!("{}", table(&runs, &oracle));
    if let Some((ours, naive)) = simulation::forecast_error(&trace, &options) {
        println!(
            "\nforecaster (hourly forecasts of the replayed demand, 5-minute slots): error {:.1} % (WAPE), under-forecast {:.0} % of the time; seasonal-naive baseline {:.1} %, {:.0} %",
            ours.error_percent, ours.under_percent, naive.error_percent, naive.under_percent
        );
    }
    if let Some(parent) = args.chart.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let replayed = Trace {
        name: trace.name.clone(),
        demand: trace.after(warm_up).to_vec(),
    };
    std::fs::write(&args.chart, chart::svg(&replayed, &runs))
        .map_err(|e| format!("cannot write {}: {e}", args.chart.display()))?;
    println!(
        "\nchart: {} ({} policies replayed in {:.0} ms)",
        args.chart.display(),
        runs.len(),
        elapsed.as_secs_f64() * 1_000.0
    );
    Ok(())
}

/// `--start` in seconds since the Unix epoch.
fn start_secs(start: &str) -> Result<u64, String> {
    chrono::DateTime::parse_from_rfc3339(start)
        .ok()
        .and_then(|at| u64::try_from(at.timestamp()).ok())
        .ok_or_else(|| {
            format!("--start {start:?} must be an RFC 3339 time after 1970, with its offset")
        })
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("autoscaler-simulate: {error}");
            ExitCode::from(2)
        }
    }
}
