//! ControllerASG: reads the monitor's fleet view, decides with a pure policy and launches or
//! terminates instances through a `Cloud` provider.

pub mod fleet;
