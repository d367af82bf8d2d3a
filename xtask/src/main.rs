//! `cargo xtask`: the project's commands. Flags are parsed here; each command lives in its own
//! module with a `run` function.

mod bench;
mod dataset;
mod demo;
mod simulate;
mod test;
mod tidy;

use clap::{Parser, Subcommand};
// `crate::util` and `crate::status_client`, shared with `xtask-aws` through this package's lib.
use xtask::{status_client, util};

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
    /// tests need (Python packages into .venv; Chromium and HAProxy with apt-get).
    Test(test::Test),
    /// Creates or reuses the security group, launches the seed t2.micro from a base image and
    /// installs the agent on it over SSM Run Command.
    #[command(disable_help_flag = true)]
    Bootstrap(Forward),
    /// Creates the custom AMI from the seed and records its id in SSM.
    #[command(disable_help_flag = true)]
    BakeAmi(Forward),
    /// Starts the monitor host from the AMI and waits for the fleet's minimum.
    #[command(disable_help_flag = true)]
    Up(Forward),
    /// Stops the controller, terminates the group's instances, deletes its parameters.
    #[command(disable_help_flag = true)]
    Down(Forward),
    /// The group as the cloud sees it, beside what the monitor knows.
    #[command(disable_help_flag = true)]
    Status(Forward),
    /// Rolls the group onto a new launch specification with an instance refresh.
    #[command(disable_help_flag = true)]
    Refresh(Forward),
    /// Changes the group's bounds and policy, or sets its desired capacity once.
    #[command(disable_help_flag = true)]
    Update(Forward),
    /// Sets the group's desired capacity once; the policy goes on from it.
    #[command(disable_help_flag = true)]
    SetDesired(Forward),
    /// The whole AWS workflow against a throwaway local emulator (moto server).
    #[command(disable_help_flag = true)]
    Rehearse(Forward),
    /// Replays a demand trace through the project's policies and the AWS and Kubernetes
    /// references, and scores them (a table and an SVG chart).
    Simulate(simulate::Simulate),
    /// Fetches a public demand series (`taylor`) from a package registry as a simulator trace
    /// and prints its path.
    Dataset(dataset::Dataset),
    /// Runs the benchmarks and writes docs/BENCHMARKS.md.
    Bench(bench::Bench),
}

/// The flags of an AWS command, passed on untouched to `xtask-aws` (`--help` included).
#[derive(Debug, clap::Args)]
struct Forward {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Runs `cargo run -p xtask-aws -- <command> <args>` (the AWS SDK is compiled there, on first
/// use) and ends with its exit code.
fn forward(command: &str, forward: Forward) -> std::process::ExitCode {
    let status = util::shell().and_then(|sh| {
        let cargo = util::cargo(&sh)
            .args(["run", "--package", "xtask-aws", "--", command])
            .args(&forward.args);
        // Its exit code is passed on: xshell's `run` would only say that it failed.
        Ok(std::process::Command::from(cargo).status()?)
    });
    match status {
        Ok(status) if status.success() => std::process::ExitCode::SUCCESS,
        Ok(status) => std::process::ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(error) => {
            eprintln!("xtask: cannot run cargo for xtask-aws: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result = match flags.command {
        Command::Demo(demo) => demo.run(),
        Command::Test(test) => test.run(),
        Command::Bootstrap(args) => return forward("bootstrap", args),
        Command::BakeAmi(args) => return forward("bake-ami", args),
        Command::Up(args) => return forward("up", args),
        Command::Down(args) => return forward("down", args),
        Command::Status(args) => return forward("status", args),
        Command::Refresh(args) => return forward("refresh", args),
        Command::Update(args) => return forward("update", args),
        Command::SetDesired(args) => return forward("set-desired", args),
        Command::Rehearse(args) => return forward("rehearse", args),
        Command::Simulate(command) => command.run(),
        Command::Dataset(command) => command.run(),
        Command::Bench(command) => command.run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
