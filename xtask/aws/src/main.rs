//! `xtask-aws`: the AWS workflow behind `cargo xtask bootstrap`, `bake-ami`, `up`, `down`,
//! `status`, `refresh`, `update` and `rehearse` (which forward here). It is a package of its own so that the AWS SDK
//! is compiled only by those who use it, not by `cargo xtask demo`, `test`'s first step or `bench`.

mod aws;
mod rehearse;

use clap::{Parser, Subcommand};
// `crate::util` and `crate::status_client`, as in `xtask` itself.
use xtask::{status_client, util};

/// The autoscaler's AWS workflow.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Rolls the group onto a new launch specification with an instance refresh (or cancels,
    /// rolls back or describes the running one).
    Refresh(aws::Refresh),
    /// Changes the group's bounds and policy, or sets its desired capacity once.
    Update(aws::Update),
    /// Sets the group's desired capacity once; the policy goes on from it.
    SetDesired(aws::SetDesired),
    /// The whole AWS workflow against a throwaway local emulator (moto server).
    Rehearse(rehearse::Rehearse),
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let future = async move {
        match flags.command {
            Command::Bootstrap(command) => command.run().await,
            Command::BakeAmi(command) => command.run().await,
            Command::Up(command) => command.run().await,
            Command::Down(command) => command.run().await,
            Command::Status(command) => command.run().await,
            Command::Refresh(command) => command.run().await,
            Command::Update(command) => command.run().await,
            Command::SetDesired(command) => command.run().await,
            Command::Rehearse(command) => command.run().await,
        }
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(future));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
