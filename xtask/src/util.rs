//! Helpers shared by the commands: the workspace root and cargo's target directory, running a
//! command with its output shown, and the Python virtual environment the tests use.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Where cargo puts what it builds, as cargo itself says (`cargo metadata`'s `target_directory`):
/// `CARGO_TARGET_DIR` and `build.target-dir` move it away from `<workspace>/target`.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = target_dir_of(&mut cargo())?;
    Ok(FOUND.get_or_init(|| found).clone())
}

/// The `target_directory` that `cargo metadata`, run as `cargo`, names.
fn target_dir_of(cargo: &mut Command) -> anyhow::Result<PathBuf> {
    let output = cargo
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata's answer is not JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata names no target_directory")
}

/// The directory of a build profile's binaries: `debug` for `dev`, the profile's name otherwise.
pub fn profile_dir(profile: &str) -> anyhow::Result<PathBuf> {
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(target_dir()?.join(dir))
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
    run(cargo().args(["build", "--workspace", "--bins"]))
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

///
/// On an interactive terminal cargo shows its own progress (a cold build of the AWS SDK takes
/// minutes); elsewhere, in CI's log, it is quiet (`CARGO_TERM_QUIET`), unless the caller chose.
pub fn cargo() -> Command {
    cargo_for(std::io::stderr().is_terminal())
}

fn cargo_for(terminal: bool) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    if !terminal && std::env::var_os("CARGO_TERM_QUIET").is_none() {
        command.env("CARGO_TERM_QUIET", "true");
    }
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
                "-q",
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
        let mut command = cargo_for(true);
        command.args(["build", "--quiet"]).env("AUTOSCALER_X", "1");
        assert_eq!(shown(&command), "AUTOSCALER_X=1 cargo build --quiet");
    }

    #[test]
    fn cargo_shows_its_progress_on_a_terminal_and_is_quiet_in_a_log() {
        let quiet = |command: &Command| {
            command
                .get_envs()
                .any(|(name, value)| name == "CARGO_TERM_QUIET" && value.is_some())
        };
        // The test's own environment decides for a caller that set it.
        if std::env::var_os("CARGO_TERM_QUIET").is_none() {
            assert!(quiet(&cargo_for(false)), "quiet when not on a terminal");
        }
        assert!(!quiet(&cargo_for(true)), "cargo's progress on a terminal");
        let sources = [
            "bench.rs",
            "demo.rs",
            "main.rs",
            "simulate.rs",
            "test.rs",
            "util.rs",
        ];
        for name in sources {
            let text = std::fs::read_to_string(root().join("xtask/src").join(name)).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            assert!(
                !code.contains("\"--quiet\""),
                "xtask/src/{name} passes --quiet to cargo: let util::cargo decide"
            );
        }
    }

    #[test]
    fn the_target_directory_is_the_one_cargo_names() {
        let found = target_dir().unwrap();
        // The test runs from <target>/debug/deps/<test>.
        let exe = std::env::current_exe().unwrap();
        assert!(
            exe.starts_with(&found),
            "{} is not under {}",
            exe.display(),
            found.display()
        );
        assert_eq!(profile_dir("dev").unwrap(), found.join("debug"));
        assert_eq!(profile_dir("measure").unwrap(), found.join("measure"));
    }

    #[test]
    fn a_target_directory_set_by_the_user_is_followed() {
        let elsewhere = std::env::temp_dir().join(format!("xtask-target-{}", std::process::id()));
        let mut command = cargo_for(false);
        command.env("CARGO_TARGET_DIR", &elsewhere);
        assert_eq!(target_dir_of(&mut command).unwrap(), elsewhere);
        let mut command = cargo_for(false);
        command.env("CARGO_BUILD_TARGET_DIR", &elsewhere);
        assert_eq!(target_dir_of(&mut command).unwrap(), elsewhere);
    }
}
