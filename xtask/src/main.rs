//! `cargo xtask`: the project's commands. Flags are parsed here; each command lives in its own
//! module with a `run` function.

mod demo;
mod test;
mod tidy;
mod util;

use clap::{Parser, Subcommand};

/// The autoscaler's ops and developer commands.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: the monitor and controller on the local provider, telling a scaling story
    /// live (2 -> 5 -> 2 instances, a killed agent replaced) in about three minutes.
    Demo(demo::Demo),
    /// Everything that proves it works: formatting, lints and every test, installing what the
    /// tests need (Python packages into .venv).
    Test(test::Test),
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result = match flags.command {
        Command::Demo(demo) => demo.run(),
        Command::Test(test) => test.run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
