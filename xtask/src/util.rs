//! Helpers shared by the commands: the workspace root, running a command with its output shown,
//! and the Python virtual environment the tests use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// `command` as one would type it: the variables it sets, the program, the arguments (not the
/// variables it removes: see `cargo`).
fn shown(command: &Command) -> String {
    let set = command
        .get_envs()
        .filter_map(|(name, value)| Some(format!("{}={}", name.display(), value?.display())));
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .display()
        .to_string();
    let args = command.get_args().map(|arg| arg.display().to_string());
    set.chain([program])
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Runs `command` with inherited output; an error names the command if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = shown(command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Builds the programs (debug) the way `cargo xtask test` does, so that the demo, the rehearsal
/// and the tests share one build (the same packages, hence the same features).
pub fn build_binaries() -> anyhow::Result<()> {
    run(cargo().args(["build", "--workspace", "--bins", "--quiet"]))
}

/// `cargo` as the one running us, without what `cargo run` told us about ourselves
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): some build scripts (ring's) rerun when those
/// change, and with them everything above them, the AWS SDK included. Without this, a build
/// started from `xtask` and the same build started from `xtask-aws` rebuilt each other's work
/// (4 minutes each, on this machine).
/// The packages `cargo xtask bench` builds, without the EC2 provider: the agent, the monitor
/// and the daemon, their binaries and examples (the benchmarks). `test` lints the same set.
pub const WITHOUT_EC2: [&str; 9] = [
    "--no-default-features",
    "-p",
    "autoscaler-agent",
    "-p",
    "autoscaler-monitor",
    "-p",
    "autoscaler-daemon",
    "--bins",
    "--examples",
];

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(name);
        }
    }
    command
}

/// The Python of `.venv`, created and given `xtask/requirements.txt` if it lacks them.
pub fn python_venv() -> anyhow::Result<PathBuf> {
    let root = root();
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "cannot create .venv: Python 3 with the venv module is needed (Debian: apt-get install python3-venv)",
        )?;
    }
    let requirements = root.join("xtask/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements))
        .context("cannot install the test's Python packages from the package index")?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(python)
}

/// Debian's Chromium for the browser test, installed with apt-get when it is missing.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    if chromium.exists() {
        return Ok(chromium);
    }
    eprintln!("the dashboard's browser test needs Chromium: installing Debian's chromium package");
    let installed = run(Command::new("apt-get").arg("update").arg("-qq")).and_then(|()| {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if let Err(error) = installed {
        bail!(
            "cannot install Chromium ({error:#}): install Debian's chromium package (apt-get install chromium) \
             or set AUTOSCALER_CHROMIUM to a Chromium binary"
        );
    }
    if !chromium.exists() {
        bail!(
            "apt-get installed chromium but {} is missing",
            chromium.display()
        );
    }
    Ok(chromium)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_shown_as_typed_without_the_variables_it_removes() {
        let mut command = cargo();
        command.args(["build", "--quiet"]).env("AUTOSCALER_X", "1");
        assert_eq!(shown(&command), "AUTOSCALER_X=1 cargo build --quiet");
    }
}
