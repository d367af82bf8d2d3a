//! The fleet view: what the monitor knows of every registered instance at one moment. The monitor
//! publishes it in-process (a `tokio::sync::watch` channel: the "shared memory" between MonitorS
//! and ControllerASG) and the policy reads it. It lives here, with its reader, so that the policy
//! and the simulator can build views without a monitor.

use std::time::{Duration, Instant};

/// Liveness of one instance as the monitor's polls see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Registered, not polled yet.
    Unknown,
    /// The last poll answered.
    Healthy,
    /// Missed at least one poll, fewer than the unhealthy threshold.
    Suspect,
    /// Missed the threshold's number of consecutive polls.
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Suspect => "suspect",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceView {
    pub instance_id: String,
    /// Where its agent listens, `host:port`.
    pub address: String,
    pub agent_version: String,
    pub health: Health,
    pub consecutive_misses: u32,
    /// The last load reported, 0 to 100 percent; `None` before the first good poll.
    pub load: Option<f64>,
    /// The most recent loads, oldest first (at most the monitor's window).
    pub recent_loads: Vec<f64>,
    pub registered_at: Instant,
    /// When a poll last succeeded.
    pub last_seen: Option<Instant>,
    /// Why the last poll failed, while it does.
    pub last_error: Option<String>,
}

/// Every registered instance, sorted by instance id.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetView {
    pub taken_at: Instant,
    pub poll_interval: Duration,
    pub instances: Vec<InstanceView>,
}

impl FleetView {
    pub fn empty(taken_at: Instant, poll_interval: Duration) -> FleetView {
        FleetView {
            taken_at,
            poll_interval,
            instances: Vec::new(),
        }
    }

    pub fn get(&self, instance_id: &str) -> Option<&InstanceView> {
        self.instances
            .binary_search_by(|instance| instance.instance_id.as_str().cmp(instance_id))
            .ok()
            .map(|index| &self.instances[index])
    }

    /// How many instances are in each state.
    pub fn count(&self, health: Health) -> usize {
        self.instances
            .iter()
            .filter(|instance| instance.health == health)
            .count()
    }
}
