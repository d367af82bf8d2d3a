//! The pure side of ControllerASG: the controller's settings, the scaling policy and the policy
//! simulator. No I/O, no clock reads and no cloud SDK, so the live controller, the tests, the
//! simulator and the benchmarks run exactly the same decision code. It is also the one home of
//! the small pure helpers every program shares: backoff, a seeded generator, Unix times.

pub mod backoff;
pub mod config;
pub mod fleet;
pub mod forecast;
pub mod instance;
pub mod kinds;
pub mod policy;
pub mod random;
pub mod refresh;
pub mod schedule;
pub mod simulate;
pub mod time;

pub use instance::{Health, HookReport, InstanceState, Lifecycle};
