//! The daemon that `autoscaler-monitor` runs: MonitorS and ControllerASG in one process. It
//! wires the monitor (which makes the fleet view) to the controller (which reads it) and adds
//! what needs both: the Status gRPC service, the dashboard and metrics, and the supervision of
//! their tasks. Neither the monitor nor the controller depends on the other; this crate depends
//! on both.

pub mod activity;
pub mod config;
pub mod daemon;
pub mod error;
pub mod http;
pub mod leader;
pub mod platform;
pub mod rollout;
pub mod schedules;
pub mod standby;
pub mod status;
pub mod tls_source;
