//! `cargo xtask test`: formatting, lints, the binaries the tests start, every test, the AWS
//! rehearsal against the emulator, and shortened runs of the demo, plain and with traffic.

use crate::util;

#[derive(Debug, clap::Args)]
pub struct Test {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the shortened runs of the demo at the end.
    #[arg(long)]
    no_demo: bool,
}

impl Test {
    pub fn run(self) -> anyhow::Result<()> {
        let sh = util::shell()?;
        let python = util::python_venv(&sh)?;
        let chromium = match std::env::var_os("AUTOSCALER_CHROMIUM") {
            Some(path) => std::path::PathBuf::from(path),
            None => util::chromium(&sh)?,
        };
        let haproxy = match std::env::var_os("AUTOSCALER_HAPROXY") {
            Some(path) => std::path::PathBuf::from(path),
            None => util::haproxy(&sh)?,
        };
        if !self.no_lint {
            util::cargo(&sh)
                .args(["fmt", "--all", "--", "--check"])
                .run()?;
            util::cargo(&sh)
                .args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
                .run()?;
            // What `cargo xtask bench` builds: the monitor without its EC2 provider.
            util::cargo(&sh)
                .arg("clippy")
                .args(util::WITHOUT_EC2)
                .args(["--", "-D", "warnings"])
                .run()?;
        }
        // The end-to-end tests start the agent and monitor binaries: build them first.
        util::build_binaries(&sh)?;
        util::cargo(&sh)
            .args(["test", "--workspace"])
            .env("AUTOSCALER_PYTHON", &python)
            .env("AUTOSCALER_CHROMIUM", &chromium)
            .env("AUTOSCALER_HAPROXY", &haproxy)
            .run()?;
        // The AWS workflow against the emulator, end to end.
        util::cargo(&sh).args(["xtask", "rehearse"]).run()?;
        // The main job, shortened: it exits non-zero unless the fleet went 2 -> 5 -> 2 and the
        // killed agent was replaced.
        if !self.no_demo {
            util::cargo(&sh)
                .args(["xtask", "demo", "--plain", "--duration", "120"])
                .run()?;
            // The same story with real requests through HAProxy: it also fails if any request
            // failed while the group scaled out or in.
            util::cargo(&sh)
                .args(["xtask", "demo", "--traffic", "--plain", "--duration", "120"])
                .run()?;
        }
        eprintln!("xtask test: all checks passed");
        Ok(())
    }
}
