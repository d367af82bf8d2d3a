//! `cargo xtask simulate`: runs `autoscaler-simulate` (release build, so a month of trace
//! replays in well under a second) with the arguments given.

use std::ffi::OsString;

use clap::Args;

use crate::util;

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct Simulate {
    /// Arguments for autoscaler-simulate (`cargo xtask simulate --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

impl Simulate {
    pub fn run(self) -> anyhow::Result<()> {
        // The user's working directory stays, so that relative paths mean what they typed.
        let sh = util::shell()?;
        sh.change_dir(std::env::current_dir()?);
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
            .args(&self.args)
            .run()?;
        Ok(())
    }
}
