//! `cargo xtask test`: formatting, lints, the binaries the tests start, every test, the AWS
//! rehearsal against the emulator, and a shortened run of the demo.

use crate::util;

#[derive(Debug, clap::Args)]
pub struct Test {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the shortened run of the demo at the end.
    #[arg(long)]
    no_demo: bool,
}

impl Test {
    pub fn run(self) -> anyhow::Result<()> {
        let python = util::python_venv()?;
        let chromium = match std::env::var_os("AUTOSCALER_CHROMIUM") {
            Some(path) => std::path::PathBuf::from(path),
            None => util::chromium()?,
        };
        if !self.no_lint {
            util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
            util::run(util::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // What `cargo xtask bench` builds: the monitor without its EC2 provider.
            util::run(
                util::cargo()
                    .arg("clippy")
                    .args(util::WITHOUT_EC2)
                    .args(["--", "-D", "warnings"]),
            )?;
        }
        // The end-to-end tests start the agent and monitor binaries: build them first.
        util::build_binaries()?;
        util::run(
            util::cargo()
                .args(["test", "--workspace"])
                .env("AUTOSCALER_PYTHON", &python)
                .env("AUTOSCALER_CHROMIUM", &chromium),
        )?;
        // The AWS workflow against the emulator, end to end.
        util::run(util::cargo().args(["xtask", "rehearse"]))?;
        // The main job, shortened: it exits non-zero unless the fleet went 2 -> 5 -> 2 and the
        // killed agent was replaced.
        if !self.no_demo {
            util::run(util::cargo().args(["xtask", "demo", "--plain", "--duration", "120"]))?;
        }
        eprintln!("xtask test: all checks passed");
        Ok(())
    }
}
