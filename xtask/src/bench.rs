//! `cargo xtask bench`: runs the benchmarks (release builds, never part of `cargo xtask test`)
//! and writes docs/BENCHMARKS.md with the machine's description and every figure beside the
//! goal or reference it answers.

use std::fmt::Write;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::util;

#[derive(Debug, Args)]
pub struct Bench {
    /// Print the figures without rewriting docs/BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

/// One measurement: name, value, unit, what it is.
struct Figure {
    name: String,
    value: f64,
    unit: String,
    note: String,
}

fn figures(output: &str) -> Vec<Figure> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, '|');
            let name = parts.next()?.to_string();
            let value = parts.next()?.parse().ok()?;
            Some(Figure {
                name,
                value,
                unit: parts.next()?.to_string(),
                note: parts.next()?.to_string(),
            })
        })
        .collect()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("unknown".to_string(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores ({model}), {memory} of memory, {rustc}, release build")
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        let shown = "cargo bench -p autoscaler-policy --bench deciding";
        eprintln!("$ {shown}");
        let output = util::cargo()
            .args([
                "bench",
                "--quiet",
                "-p",
                "autoscaler-policy",
                "--bench",
                "deciding",
            ])
            .output()
            .context("cannot run cargo bench")?;
        if !output.status.success() {
            bail!(
                "{shown} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let deciding = figures(&String::from_utf8_lossy(&output.stdout));
        if deciding.is_empty() {
            bail!("{shown} printed no figures");
        }
        let mut report = String::new();
        let _ = writeln!(report, "# Benchmarks\n");
        let _ = writeln!(
            report,
            "Written by `cargo xtask bench` on {}; do not edit by hand.\n",
            date()
        );
        let _ = writeln!(report, "Machine: {}.\n", machine());
        let _ = writeln!(report, "## Deciding\n");
        let _ = writeln!(
            report,
            "The pure policy (`autoscaler_policy::policy::evaluate`, the code the live controller \
             runs) and the policy simulator replaying a 30-day diurnal trace at one step per \
             second. Goal for the replay: well under a second per policy.\n"
        );
        let _ = writeln!(report, "| figure | value | what |\n|---|---:|---|");
        for figure in &deciding {
            let _ = writeln!(
                report,
                "| {} | {} {} | {} |",
                figure.name, figure.value, figure.unit, figure.note
            );
            println!(
                "{:<28} {:>10} {:<3} {}",
                figure.name, figure.value, figure.unit, figure.note
            );
        }
        if let Some(largest) = deciding.iter().find(|f| f.name == "evaluate-10000") {
            let _ = writeln!(
                report,
                "\nAt the default 1 s evaluation interval, deciding for a fleet of 10,000 takes \
                 {:.4} % of one core: the policy is never the bottleneck.\n",
                largest.value / 1e6 * 100.0
            );
        }
        let _ = writeln!(report, "## Not measured yet\n");
        let _ = writeln!(
            report,
            "Reach (one monitor polling 100 / 1,000 / 10,000 agents against a plain tonic \
             ceiling), noticing (kill to unhealthy and to replacement, false alarms under a CPU \
             hog) and reacting (threshold crossing to launch call) are issue 8's remaining work \
             and have no figures here yet."
        );
        if !self.no_write {
            let path = util::root().join("docs/BENCHMARKS.md");
            std::fs::create_dir_all(path.parent().expect("docs/"))?;
            std::fs::write(&path, report)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "an unknown date".to_string())
}
