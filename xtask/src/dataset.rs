//! `cargo xtask dataset NAME`: fetches a public demand series from a package registry and writes
//! it as a simulator trace (`time,demand` CSV) under the target directory, printing its path.
//! Only `taylor` for now: Taylor's half-hourly electricity demand of England and Wales (12 weeks
//! of 2000), as the pmdarima package on PyPI ships it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use xshell::cmd;

use crate::util;

/// The wheel the series is read from (pinned: the trace is the same on every machine).
const PMDARIMA: &str = "pmdarima==2.0.4";

#[derive(Debug, Args)]
pub struct Dataset {
    /// The series: `taylor` (half-hourly electricity demand, England and Wales, 2000).
    name: String,
}

impl Dataset {
    pub fn run(self) -> anyhow::Result<()> {
        println!("{}", fetch(&self.name)?.display());
        Ok(())
    }
}

/// The trace's path, fetched and converted on first use.
pub fn fetch(name: &str) -> anyhow::Result<PathBuf> {
    if name != "taylor" {
        bail!("no dataset {name:?}: the one known is `taylor`");
    }
    let dir = util::target_dir()?.join("datasets");
    let csv = dir.join("taylor.csv");
    if csv.exists() {
        return Ok(csv);
    }
    let sh = util::shell()?;
    let python = util::python_venv(&sh)?;
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    // Any platform's wheel holds the same series; this one exists for every Python.
    cmd!(
        sh,
        "{python} -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all:
         --python-version 3.11 --implementation cp --platform manylinux2014_x86_64
         -d {wheels} {PMDARIMA}"
    )
    .run()
    .context("cannot download the pmdarima wheel from PyPI")?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pmdarima-2.0.4"))
        })
        .context("pip downloaded no pmdarima 2.0.4 wheel")?;
    let script = util::root().join("xtask/datasets/taylor.py");
    let partial = dir.join("taylor.csv.partial");
    cmd!(sh, "{python} {script} {wheel} {partial}").run()?;
    std::fs::rename(&partial, &csv)?;
    Ok(csv)
}
