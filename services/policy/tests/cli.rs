//! `autoscaler-simulate` end to end: a comparison run prints every policy's scores and writes
//! the chart; bad input gets a clear error, exit code 2 and no chart.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn simulate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_autoscaler-simulate"))
        .args(args)
        .output()
        .expect("autoscaler-simulate runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn compares_policies_on_a_csv_trace_and_draws_them() {
    let dir = scratch("cli-compare");
    let csv = dir.join("trace.csv");
    std::fs::write(&csv, "time,demand\n0,0.5\n600,2.8\n1800,0.5\n3599,0.5\n").unwrap();
    let config = dir.join("mine.toml");
    std::fs::write(
        &config,
        "group = \"x\"\n[controller]\nmin_instances = 2\nmax_instances = 5\nscale_in_cooldown_secs = 30\n",
    )
    .unwrap();
    let chart = dir.join("chart.svg");
    let (code, stdout, stderr) = simulate(&[
        "--csv",
        csv.to_str().unwrap(),
        "--policy",
        "ours-target",
        "--policy",
        "aws-step",
        "--policy",
        "k8s-hpa",
        "--policy",
        config.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("trace trace.csv: 3600 s"), "{stdout}");
    for name in ["ours-target", "aws-step", "k8s-hpa", "mine"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name) && l.split_whitespace().count() == 13)
            .unwrap_or_else(|| panic!("no score row for {name}:\n{stdout}"));
        let hours: f64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            (2.0..=5.0).contains(&hours),
            "{name}: {hours} instance-hours in one hour with 2-5 instances"
        );
        // Its cost as a ratio to the oracle's, which pays the least that meets the SLO.
        let ratio: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(ratio >= 1.0, "{name}: {ratio} times the oracle:\n{stdout}");
    }
    let oracle = stdout
        .lines()
        .find(|l| l.starts_with("oracle") && l.split_whitespace().count() == 13)
        .unwrap_or_else(|| panic!("no oracle row:\n{stdout}"));
    assert_eq!(oracle.split_whitespace().nth(2), Some("1.000"), "{stdout}");
    assert_eq!(
        oracle.split_whitespace().nth(8),
        Some("0.000"),
        "no second above the SLO: {stdout}"
    );
    let svg = std::fs::read_to_string(&chart).expect("the chart is written");
    assert!(svg.contains(">mine</text>"));
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let dir = scratch("cli-bad");
    let chart = dir.join("chart.svg");
    let bad_csv = dir.join("bad.csv");
    std::fs::write(&bad_csv, "0,1\n5,2\n3,1\n").unwrap();
    let bad_first_row = dir.join("bad-first.csv");
    std::fs::write(&bad_first_row, "0,1x\n600,2\n").unwrap();
    let bad_config = dir.join("bad.toml");
    std::fs::write(&bad_config, "[controller]\nmin_instances = 1\n").unwrap();
    let cases: [(&[&str], &str); 9] = [
        // A first row with a number in it is data, not a header to skip.
        (
            &["--csv", bad_first_row.to_str().unwrap()],
            "line 1: `0,1x` is not two numbers",
        ),
        (
            &["--csv", bad_csv.to_str().unwrap()],
            "line 3: time 3 does not rise",
        ),
        (
            &["--policy", bad_config.to_str().unwrap()],
            "`controller.min_instances` is 1",
        ),
        (
            &["--policy", "no-such-policy"],
            "is none of ours-target, ours-step, ours-predictive",
        ),
        (
            &["--warm-up", "6h"],
            "--warm-up 21600 s leaves nothing of the 21600 s trace",
        ),
        (
            &["--min", "4", "--max", "3"],
            "--min is 4, above max_instances = 3",
        ),
        (&["--duration", "100d"], "must be within 1s-90d"),
        (
            &["--listing-lag", "121"],
            "--listing-lag 121 must be at most 120",
        ),
        (&["--drain", "90000"], "--drain 90000 must be at most 86400"),
    ];
    for (args, words) in cases {
        let mut all = args.to_vec();
        all.extend(["--chart", chart.to_str().unwrap()]);
        let (code, _, stderr) = simulate(&all);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(!chart.exists(), "{args:?} wrote a chart");
    }
}

#[test]
fn jitter_on_a_multi_instance_step_is_bungee_s() {
    // Demand 1 -> 4 instances; the HPA model's supply goes 2 -> 4 -> 5: 3 supply events
    // against 3 demand events, so BUNGEE's jitter over the 20 minutes is 0.
    let dir = scratch("cli-bungee");
    let csv = dir.join("step.csv");
    std::fs::write(&csv, "0,0.8\n600,3.8\n1199,3.8\n").unwrap();
    let chart = dir.join("chart.svg");
    let (code, stdout, stderr) = simulate(&[
        "--csv",
        csv.to_str().unwrap(),
        "--policy",
        "k8s-hpa",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("POLICY"))
        .expect("a score table");
    let column = header
        .split_whitespace()
        .position(|c| c == "JITTER")
        .expect("a jitter column");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("k8s-hpa") && l.split_whitespace().count() == 13)
        .unwrap_or_else(|| panic!("no k8s-hpa row:\n{stdout}"));
    let jitter = row.split_whitespace().nth(column).unwrap();
    assert_eq!(jitter, "0.000", "{stdout}");
    let scale_outs = row.split_whitespace().nth(10).unwrap();
    assert_eq!(scale_outs, "2", "the supply moved in two steps: {stdout}");
}
