//! Helpers shared by the commands: the workspace root and cargo's target directory, the shell
//! commands run in (xshell: each command is echoed before it runs, and a failure names it),
//! cargo as the commands run it, and the Python virtual environment the tests use.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use xshell::{Cmd, Shell, cmd};

/// A shell in the workspace root. On an interactive terminal cargo shows its own progress (a
/// cold build of the AWS SDK takes minutes); elsewhere, in CI's log, it is quiet
/// (`CARGO_TERM_QUIET`), unless the caller chose.
pub fn shell() -> anyhow::Result<Shell> {
    shell_for(std::io::stderr().is_terminal())
}

fn shell_for(terminal: bool) -> anyhow::Result<Shell> {
    let sh = Shell::new().context("cannot make a shell")?;
    sh.change_dir(root());
    if !terminal && std::env::var_os("CARGO_TERM_QUIET").is_none() {
        sh.set_var("CARGO_TERM_QUIET", "true");
    }
    Ok(sh)
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
    let sh = shell()?;
    let found = target_dir_of(cargo(&sh))?;
    Ok(FOUND.get_or_init(|| found).clone())
}

/// The `target_directory` that `cargo metadata`, run as `cargo`, names.
fn target_dir_of(cargo: Cmd<'_>) -> anyhow::Result<PathBuf> {
    let answer = cargo
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .quiet()
        .read()?;
    let metadata: serde_json::Value =
        serde_json::from_str(&answer).context("cargo metadata's answer is not JSON")?;
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

/// Builds the programs (debug) the way `cargo xtask test` does, so that the demo, the rehearsal
/// and the tests share one build (the same packages, hence the same features).
pub fn build_binaries(sh: &Shell) -> anyhow::Result<()> {
    Ok(cargo(sh).args(["build", "--workspace", "--bins"]).run()?)
}

/// The packages `cargo xtask bench` builds, without the EC2 provider: the agent, the app, the
/// monitor and the daemon, their binaries and examples (the benchmarks). `test` lints the same set.
pub const WITHOUT_EC2: [&str; 11] = [
    "--no-default-features",
    "-p",
    "autoscaler-agent",
    "-p",
    "autoscaler-app",
    "-p",
    "autoscaler-monitor",
    "-p",
    "autoscaler-daemon",
    "--bins",
    "--examples",
];

/// `cargo` as the one running us, in `sh`, without what `cargo run` told us about ourselves
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): some build scripts (ring's) rerun when those
/// change, and with them everything above them, the AWS SDK included. Without this, a build
/// started from `xtask` and the same build started from `xtask-aws` rebuilt each other's work
/// (4 minutes each, on this machine).
pub fn cargo(sh: &Shell) -> Cmd<'_> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = cmd!(sh, "{program}");
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
            command = command.env_remove(name);
        }
    }
    command
}

/// The Python of `.venv`, created and given `xtask/requirements.txt` if it lacks them.
pub fn python_venv(sh: &Shell) -> anyhow::Result<PathBuf> {
    let root = root();
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        cmd!(sh, "python3 -m venv {venv}").run().context(
            "cannot create .venv: Python 3 with the venv module is needed (Debian: apt-get install python3-venv)",
        )?;
    }
    let requirements = root.join("xtask/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        cmd!(
            sh,
            "{python} -m pip install -q --disable-pip-version-check -r {requirements}"
        )
        .run()
        .context("cannot install the test's Python packages from the package index")?;
        std::fs::write(&stamp, wanted)?;
    }
    Ok(python)
}

/// Debian's Chromium for the browser test, installed with apt-get when it is missing.
pub fn chromium(sh: &Shell) -> anyhow::Result<PathBuf> {
    debian_program(
        sh,
        "/usr/bin/chromium",
        "chromium",
        "the dashboard's browser test",
        "AUTOSCALER_CHROMIUM",
    )
}

/// Debian's HAProxy for the load balancer's tests and `demo --traffic`, installed with apt-get
/// when it is missing.
pub fn haproxy(sh: &Shell) -> anyhow::Result<PathBuf> {
    debian_program(
        sh,
        "/usr/sbin/haproxy",
        "haproxy",
        "the local load balancer",
        "AUTOSCALER_HAPROXY",
    )
}

/// `path`, a program of Debian's package `package`, installed with apt-get when it is missing;
/// `needed_by` and `variable` (where a user may name another binary) go into the messages.
pub fn debian_program(
    sh: &Shell,
    path: &str,
    package: &str,
    needed_by: &str,
    variable: &str,
) -> anyhow::Result<PathBuf> {
    let program = PathBuf::from(path);
    if program.exists() {
        return Ok(program);
    }
    eprintln!("{needed_by} needs {package}: installing Debian's {package} package");
    let installed = cmd!(sh, "apt-get update -qq").run().and_then(|()| {
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends {package}"
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
    });
    if let Err(error) = installed {
        bail!(
            "cannot install {package} ({error:#}): install Debian's {package} package \
             (apt-get install {package}) or set {variable} to a {package} binary"
        );
    }
    if !program.exists() {
        bail!("apt-get installed {package} but {path} is missing");
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_runs_without_what_cargo_run_told_us_about_ourselves() {
        let sh = shell_for(true).unwrap();
        let command: std::process::Command = cargo(&sh).arg("--version").into();
        let removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        // The test runs under cargo, which sets CARGO_PKG_NAME and CARGO_MANIFEST_DIR.
        for name in ["CARGO_PKG_NAME", "CARGO_MANIFEST_DIR"] {
            assert!(removed.iter().any(|r| r == name), "{name}: {removed:?}");
        }
        assert!(
            cargo(&sh)
                .arg("--version")
                .quiet()
                .read()
                .unwrap()
                .starts_with("cargo ")
        );
    }

    #[test]
    fn cargo_shows_its_progress_on_a_terminal_and_is_quiet_in_a_log() {
        let quiet = |sh: &Shell| sh.var("CARGO_TERM_QUIET").ok();
        // The test's own environment decides for a caller that set it.
        if std::env::var_os("CARGO_TERM_QUIET").is_none() {
            assert_eq!(
                quiet(&shell_for(false).unwrap()).as_deref(),
                Some("true"),
                "quiet when not on a terminal"
            );
            assert_eq!(
                quiet(&shell_for(true).unwrap()),
                None,
                "cargo's progress on a terminal"
            );
        }
        let sources = [
            "bench/mod.rs",
            "bench/footprint.rs",
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
                !code.contains("--quiet") && !code.contains("\"-q\""),
                "xtask/src/{name} passes --quiet to cargo: let util::shell decide"
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
        let sh = shell_for(false).unwrap();
        let by_variable = cargo(&sh).env("CARGO_TARGET_DIR", &elsewhere);
        assert_eq!(target_dir_of(by_variable).unwrap(), elsewhere);
        // `build.target-dir`, as the environment sets it (CARGO_TARGET_DIR, where the test runs
        // with one, would win over it).
        let by_config = cargo(&sh)
            .env_remove("CARGO_TARGET_DIR")
            .env("CARGO_BUILD_TARGET_DIR", &elsewhere);
        assert_eq!(target_dir_of(by_config).unwrap(), elsewhere);
    }
}
