//! The test kit, a dev-only crate shared by every crate's tests, the demo and the rehearsal: the
//! test group's certificates and clients, waits with deadlines, the project's binaries as
//! processes, local instance records, the AWS emulator and a fault proxy in front of it, and a
//! load generator for traffic through the load balancer. With
//! the `fleet` feature, in-process monitors and agents; with `daemon`, the whole daemon.
//!
//! Helpers panic with a message that says what was awaited or what is missing (and how to get
//! it): they are for tests, where a panic is the failure report.

pub mod fault_proxy;
pub mod group;
pub mod http;
pub mod local;
pub mod moto;
pub mod process;
pub mod traffic;
pub mod wait;

#[cfg(feature = "fleet")]
pub mod fleet;

#[cfg(feature = "daemon")]
pub mod daemon;

pub use autoscaler_proto::tls::Role;
#[cfg(feature = "fleet")]
pub use fleet::*;
pub use group::*;
pub use http::{http_get, try_http_get};
pub use local::StateDir;
pub use process::*;
pub use wait::*;
