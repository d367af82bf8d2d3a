//! `cargo xtask simulate`: runs `autoscaler-simulate` (release build, so a month of trace
//! replays in well under a second) with the arguments given. `--history CONFIG` replays the
//! demand a running group recorded in its store (the SQLite file or the DynamoDB table its
//! config names), exported by `autoscaler-monitor --export-demand`, at its own clock.

use std::ffi::OsString;

use anyhow::Context;
use clap::Args;

use crate::util;

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct Simulate {
    /// Arguments for autoscaler-simulate (`cargo xtask simulate --help` lists them), and
    /// `--history CONFIG`: the demand recorded by the group that config runs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

impl Simulate {
    pub fn run(self) -> anyhow::Result<()> {
        // The user's working directory stays, so that relative paths mean what they typed.
        let sh = util::shell()?;
        sh.change_dir(std::env::current_dir()?);
        let mut args = self.args;
        if let Some(at) = args.iter().position(|a| a == "--history") {
            let config = args
                .get(at + 1)
                .cloned()
                .context("--history needs the group's config file")?;
            args.drain(at..at + 2);
            let trace = util::target_dir()?.join("history.csv");
            util::cargo(&sh)
                .arg("run")
                .arg("--manifest-path")
                .arg(util::root().join("Cargo.toml"))
                .args([
                    "-p",
                    "autoscaler-daemon",
                    "--bin",
                    "autoscaler-monitor",
                    "--",
                ])
                .arg("--config")
                .arg(&config)
                .arg("--export-demand")
                .arg(&trace)
                .run()
                .context("exporting the group's recorded demand")?;
            let text = std::fs::read_to_string(&trace)?;
            let start = text
                .lines()
                .find_map(|l| l.strip_prefix("# start "))
                .context("the exported demand names no start")?
                .to_string();
            args.splice(
                0..0,
                [
                    OsString::from("--csv"),
                    trace.into_os_string(),
                    OsString::from("--start"),
                    OsString::from(start),
                ],
            );
        }
        util::cargo(&sh)
            .arg("run")
            .arg("--manifest-path")
            .arg(util::root().join("Cargo.toml"))
            .args([
                "--release",
                "-p",
                "autoscaler-policy",
                "--bin",
                "autoscaler-simulate",
                "--",
            ])
            .args(&args)
            .run()?;
        Ok(())
    }
}
