//! The pure side of ControllerASG: the controller's settings, the scaling policy and the policy
//! simulator. No I/O, no clock reads and no cloud SDK, so the live controller, the tests, the
//! simulator and the benchmarks run exactly the same decision code.

pub mod config;
pub mod fleet;
pub mod instance;
pub mod policy;
pub mod simulate;

pub use instance::{Health, InstanceState};
