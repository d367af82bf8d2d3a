//! `cargo xtask`: the project's commands. Flags are parsed here; each command lives in its own
//! module with a `run` function.

mod aws;
mod bench;
mod demo;
mod rehearse;
mod simulate;
mod status_client;
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
    /// Creates or reuses the security group, launches the seed t2.micro from a base image and
    /// installs the agent on it over SSM Run Command.
    Bootstrap(aws::Bootstrap),
    /// Creates the custom AMI from the seed and records its id in SSM.
    BakeAmi(aws::BakeAmi),
    /// Starts the monitor host from the AMI and waits for the fleet's minimum.
    Up(aws::Up),
    /// Stops the controller, terminates the group's instances, deletes its parameters.
    Down(aws::Down),
    /// The group as the cloud sees it, beside what the monitor knows.
    Status(aws::Status),
    /// The whole AWS workflow against a throwaway local emulator (moto server).
    Rehearse(rehearse::Rehearse),
    /// Replays a demand trace through the project's policies and the AWS and Kubernetes
    /// references, and scores them (a table and an SVG chart).
    Simulate(simulate::Simulate),
    /// Runs the benchmarks and writes docs/BENCHMARKS.md.
    Bench(bench::Bench),
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(future)
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result = match flags.command {
        Command::Demo(demo) => demo.run(),
        Command::Test(test) => test.run(),
        Command::Bootstrap(command) => block_on(command.run()),
        Command::BakeAmi(command) => block_on(command.run()),
        Command::Up(command) => block_on(command.run()),
        Command::Down(command) => block_on(command.run()),
        Command::Status(command) => block_on(command.run()),
        Command::Rehearse(command) => block_on(command.run()),
        Command::Simulate(command) => command.run(),
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
