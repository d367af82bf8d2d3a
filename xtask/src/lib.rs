//! What the `xtask` commands and the AWS workflow (`xtask-aws`) share: the workspace root and
//! running commands (`util`), and the client of the monitor's Status and Operator services.

pub mod status_client;
pub mod util;
