//! The fleet view: what the monitor knows of every registered instance at one moment. The monitor
//! publishes it in-process (a `tokio::sync::watch` channel: the "shared memory" between MonitorS
//! and ControllerASG) and the controller reads it. It lives in the domain crate, beside `Health`,
//! so that the monitor, which makes it, does not depend on the controller, which reads it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::{Health, HookReport, Lifecycle};

/// What an agent reports in one answer, carried whole from the monitor's poller to every view
/// (the fleet view, the Status API, the dashboard): a new agent metric is a field here, its
/// decoding in the poller and its place on the wire and the page, nothing between.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Load, 0 to 100 percent; `None` while its load source has not answered once.
    pub load: Option<f64>,
    /// Requests its application served per second, when its agent reports them.
    pub requests_per_second: Option<f64>,
    /// Its lifecycle hooks, when its agent runs any.
    pub hook: Option<Arc<HookReport>>,
}

impl Metrics {
    /// Where it is in its lifecycle hooks (`InService` when its agent runs none).
    pub fn lifecycle(&self) -> Lifecycle {
        self.hook.as_ref().map_or(Lifecycle::InService, |h| h.state)
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
    /// What its agent reported at the last good poll (nothing before the first).
    pub metrics: Metrics,
    /// The most recent loads, oldest first (at most the monitor's window).
    pub recent_loads: VecDeque<f64>,
    pub registered_at: Instant,
    /// When a poll last succeeded.
    pub last_seen: Option<Instant>,
    /// Why the last poll failed, while it does.
    pub last_error: Option<String>,
}

/// Every registered instance, sorted by instance id. Each instance's view is shared with the
/// monitor's registry, which builds it once per change, so taking a view of a fleet of 10,000
/// copies 10,000 pointers, not 10,000 sets of strings.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetView {
    pub taken_at: Instant,
    pub poll_interval: Duration,
    pub instances: Vec<Arc<InstanceView>>,
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
            .map(|index| &*self.instances[index])
    }

    /// How many instances are in each state.
    pub fn count(&self, health: Health) -> usize {
        self.instances
            .iter()
            .filter(|instance| instance.health == health)
            .count()
    }
}
