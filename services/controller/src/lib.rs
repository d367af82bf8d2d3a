//! ControllerASG: reads the monitor's fleet view, decides with a pure policy and launches or
//! terminates instances through a `Cloud` provider.

pub mod balancer;
pub mod cloud;
pub mod ec2;
pub mod front;
pub mod haproxy;
pub mod launches;
pub mod local;
pub mod reconciler;
pub mod spec;
pub mod status;

pub use autoscaler_policy::{config, fleet, kinds, policy, schedule};
