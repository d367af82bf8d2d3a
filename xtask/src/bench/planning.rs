//! The planning benchmark: `autoscaler-simulate` (release) on multi-week traces with a 180 s
//! boot, 14 days of warm-up (the forecasters' history) and bounds [2, 20]: the two built-in
//! weekly shapes and Taylor's real electricity demand (`cargo xtask dataset taylor`), every
//! policy beside the oracle, and the forecaster's error. Its section of docs/BENCHMARKS.md.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::util;

/// The goal: no second above the SLO at no more than this many times the oracle's cost.
const GOAL_RATIO: f64 = 1.10;

/// The reactive policies (no forecast, no schedule), of which the best is compared.
const REACTIVE: [&str; 6] = [
    "ours-target",
    "ours-target-70",
    "ours-step",
    "aws-step",
    "aws-target",
    "k8s-hpa",
];

/// One row of the simulator's table.
struct Row {
    policy: String,
    instance_hours: f64,
    ratio: f64,
    slo_percent: f64,
    slo_secs: u64,
    scale_outs: u64,
    scale_ins: u64,
}

impl Row {
    fn meets(&self) -> bool {
        self.slo_secs == 0 && self.ratio <= GOAL_RATIO
    }
}

struct Replay {
    trace: String,
    about: String,
    rows: Vec<Row>,
    forecaster: String,
}

fn rows(printed: &str) -> Vec<Row> {
    printed
        .lines()
        .skip_while(|l| !l.starts_with("POLICY"))
        .skip(1)
        .map_while(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells.len() == 13).then(|| Row {
                policy: cells[0].to_string(),
                instance_hours: cells[1].parse().unwrap_or(f64::NAN),
                ratio: cells[2].parse().unwrap_or(f64::NAN),
                slo_percent: cells[8].parse().unwrap_or(f64::NAN),
                slo_secs: cells[9].parse().unwrap_or(u64::MAX),
                scale_outs: cells[10].parse().unwrap_or(0),
                scale_ins: cells[11].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// Runs the replays; the markdown section.
pub fn run(sh: &Shell) -> anyhow::Result<String> {
    util::cargo(sh)
        .args(["build", "--release", "-p", "autoscaler-policy"])
        .args(["--bin", "autoscaler-simulate"])
        .run()?;
    let simulate = util::profile_dir("release")?.join("autoscaler-simulate");
    let taylor = crate::dataset::fetch("taylor")?;
    let dir = util::target_dir()?.join("bench");
    std::fs::create_dir_all(&dir)?;
    // Our target tracking at 70 %, without a forecast: the reactive policy ours-predictive
    // builds on.
    let target_70 = dir.join("ours-target-70.toml");
    std::fs::write(
        &target_70,
        "min_instances = 2\nmax_instances = 20\ninstance_limit = 20\n\
         [policy]\nkind = \"target-tracking\"\ntarget = 70.0\ntolerance = 0.1\n",
    )?;
    // The same with an office-hours window: weekdays from 06:45, for 10 h 30, at least 10.
    let scheduled = dir.join("ours-scheduled.toml");
    std::fs::write(
        &scheduled,
        "min_instances = 2\nmax_instances = 20\ninstance_limit = 20\n\
         [policy]\nkind = \"target-tracking\"\ntarget = 70.0\ntolerance = 0.1\n\
         [[schedule]]\nname = \"office-hours\"\ncron = \"45 6 * * 1-5\"\ntime_zone = \"UTC\"\n\
         duration_secs = 37800\nmin_instances = 10\n",
    )?;
    let traces: [(&str, Vec<String>, &str); 3] = [
        (
            "office-week",
            words("--shape office-week --duration 28d --base 1 --peak 8 --noise 0.05"),
            "built in: office hours, 4 weeks, 1-8 capacities, +-5 % noise a second",
        ),
        (
            "consumer-week",
            words("--shape consumer-week --duration 28d --base 1 --peak 8 --noise 0.05"),
            "built in: a consumer service's evenings, 4 weeks, 1-8 capacities, +-5 % noise",
        ),
        (
            "taylor",
            vec!["--csv".to_string(), taylor.display().to_string()],
            "real: Taylor's half-hourly electricity demand of England and Wales, 5 June to 27 \
             August 2000 (12 weeks; the `taylor` series of R's forecast package, as the pmdarima \
             2.0.4 wheel on PyPI ships it), mapped to 1-8 capacities, linear between half hours",
        ),
    ];
    let mut replays = Vec::new();
    for (name, trace_args, about) in traces {
        eprintln!("(planning: {name})");
        let mut policies: Vec<String> = [
            "ours-target",
            "ours-predictive",
            "ours-step",
            "aws-step",
            "aws-target",
            "aws-predictive",
            "k8s-hpa",
        ]
        .map(String::from)
        .to_vec();
        policies.push(path_text(&target_70));
        if name == "office-week" {
            policies.push(path_text(&scheduled));
        }
        let chart = dir.join(format!("planning-{name}.svg"));
        let printed = cmd!(sh, "{simulate} {trace_args...}")
            .args(words(
                "--warm-up 14d --min 2 --max 20 --boot-delay 180 --aws-target 70 --hpa-target 70",
            ))
            .args(
                policies
                    .iter()
                    .flat_map(|p| ["--policy".to_string(), p.clone()]),
            )
            .arg("--chart")
            .arg(&chart)
            .read()
            .with_context(|| format!("the {name} replay"))?;
        let rows = rows(&printed);
        if rows.len() != policies.len() + 1 {
            bail!("the {name} replay printed {} rows:\n{printed}", rows.len());
        }
        let forecaster = printed
            .lines()
            .find(|l| l.starts_with("forecaster"))
            .unwrap_or("forecaster: not scored")
            .to_string();
        replays.push(Replay {
            trace: name.to_string(),
            about: about.to_string(),
            rows,
            forecaster,
        });
    }
    Ok(section(&replays))
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

fn section(replays: &[Replay]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Planning ahead\n");
    let _ = writeln!(
        out,
        "`cargo xtask simulate` on multi-week traces: a 180 s boot (an EC2 instance and its \
         application's warm-up), bounds [2, 20], an 80 % SLO per instance, the first 14 days the \
         forecasters' history (`--warm-up 14d`, neither replayed nor scored), the references at \
         70 % (`--aws-target 70 --hpa-target 70`). `ours-predictive` is our target tracking at 70 % \
         with `[controller.predictive] mode = \"forecast-and-scale\"` and its floor sized at 78 %; \
         `ours-target-70` the same without the forecast; `ours-scheduled` the same with an \
         office-hours window (weekdays 06:45 for 10 h 30, at least 10). The oracle knows the \
         future and boots in no time: supply = ceil(demand / 80 %) every second. Goal: 0 % of the \
         time above the SLO at no more than {GOAL_RATIO:.2} times the oracle's instance-hours, \
         where the best reactive policy and `aws-predictive` need more on one trace at least.\n"
    );
    let mut ours_everywhere = true;
    let mut others_short_somewhere = false;
    for replay in replays {
        let _ = writeln!(out, "### {}\n\n{}.\n", replay.trace, replay.about);
        let _ = writeln!(
            out,
            "| policy | instance-hours | x oracle | time above the SLO | seconds above | scale-outs | scale-ins |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for row in &replay.rows {
            let name = row
                .policy
                .trim_end_matches(".toml")
                .rsplit('/')
                .next()
                .unwrap_or(&row.policy);
            let _ = writeln!(
                out,
                "| {name} | {:.1} | {:.3} | {:.3} % | {} | {} | {} |",
                row.instance_hours,
                row.ratio,
                row.slo_percent,
                row.slo_secs,
                row.scale_outs,
                row.scale_ins
            );
        }
        let find = |name: &str| replay.rows.iter().find(|r| r.policy.contains(name));
        let ours = find("ours-predictive").is_some_and(Row::meets);
        let reactive_best = replay
            .rows
            .iter()
            .filter(|r| {
                REACTIVE
                    .iter()
                    .any(|n| r.policy.ends_with(n) || r.policy.ends_with(&format!("{n}.toml")))
            })
            .filter(|r| r.slo_secs == 0)
            .map(|r| r.ratio)
            .fold(f64::INFINITY, f64::min);
        let reactive_meets = reactive_best <= GOAL_RATIO;
        let aws_meets = find("aws-predictive").is_some_and(Row::meets);
        ours_everywhere &= ours;
        others_short_somewhere |= !reactive_meets && !aws_meets;
        let _ = writeln!(
            out,
            "\n{}\n\nours-predictive: {}; the best reactive policy with no second above the SLO: {}; aws-predictive: {}.\n",
            replay
                .forecaster
                .replacen("forecaster", "The forecaster", 1),
            if ours {
                "meets the goal"
            } else {
                "**misses the goal**"
            },
            if reactive_best.is_finite() {
                format!("{reactive_best:.3} x the oracle")
            } else {
                "none".to_string()
            },
            if aws_meets {
                "meets the goal"
            } else {
                "needs more"
            },
        );
    }
    let _ = writeln!(
        out,
        "Verdict: {}.\n",
        if ours_everywhere && others_short_somewhere {
            "met (ours-predictive within the goal on every trace, where the best reactive policy and aws-predictive both need more on one at least)"
        } else {
            "**missed**"
        }
    );
    out
}

/// Replaces the planning section of `report` (or puts it before `## Noticing`).
pub fn splice(report: &str, section: &str) -> String {
    let start = report.find("## Planning ahead");
    let next = |from: usize| {
        report[from + 3..]
            .find("\n## ")
            .map_or(report.len(), |at| from + 3 + at + 1)
    };
    match start {
        Some(at) => format!("{}{}{}", &report[..at], section, &report[next(at)..]),
        None => match report.find("## Noticing") {
            Some(at) => format!("{}{}{}", &report[..at], section, &report[at..]),
            None => format!("{report}\n{section}"),
        },
    }
}
