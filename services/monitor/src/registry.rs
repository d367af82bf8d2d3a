//! The registry of instances: who registered, where their agents listen, how their polls went.
//! Each instance has its own poll task (see `poller`), so a hung agent delays nobody else; the
//! registry turns poll outcomes into health and publishes the fleet view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::time::Instant;

use autoscaler_policy::fleet::{FleetView, Health, InstanceView, Metrics};
use autoscaler_proto::auth::Credentials;
use autoscaler_proto::tls::{Role, TlsError};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::MonitorConfig;
use crate::poller;
use crate::unary::Connector;

/// A validated registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub instance_id: String,
    /// `host:port` of the agent.
    pub address: String,
    pub agent_version: String,
}

/// What one poll found.
#[derive(Clone, Debug, PartialEq)]
pub enum PollOutcome {
    /// The agent answered with valid metrics (a load of `None`: its load source has not
    /// answered it once).
    Answered(Metrics),
    /// No answer in time, a transport error, or an answer that made no sense.
    Missed { reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("instance {0:?} is not registered")]
pub struct NotRegistered(pub String);

#[derive(Debug)]
struct Entry {
    /// The instance as the fleet view shows it. Published views share it; a change copies it
    /// first only if a published view still holds it (`Arc::make_mut`), so taking a snapshot
    /// of 10,000 instances copies 10,000 pointers and builds nothing.
    view: Arc<InstanceView>,
    /// Which poll task is current; outcomes from older tasks are dropped.
    generation: u64,
    poller: AbortHandle,
}

/// Upper bounds of the poll latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Whether instances whose poll missed may be probed again early, with `missing` of
/// `registered` instances in that state. A few missing instances are probably dead agents, and
/// probing them sooner is what makes noticing fast. Many at once more likely mean the monitor
/// itself, or its network, is overloaded: probing them more often would add to the load that made
/// them miss, so they keep the normal interval (noticing takes one interval more).
pub(crate) fn early_probes_allowed(missing: usize, registered: usize) -> bool {
    missing <= EARLY_PROBE_FLOOR.max(registered / 10)
}

/// Up to this many missing instances are always probed early, however small the fleet.
const EARLY_PROBE_FLOOR: usize = 8;

/// The registry shared by the gRPC service, the poll tasks and the publisher.
#[derive(Debug)]
pub struct Registry {
    config: MonitorConfig,
    credentials: Credentials,
    /// What every poll connection shares (TLS settings and session cache, the token header).
    connector: Arc<Connector>,
    /// Sorted by instance id, as the fleet view lists them.
    entries: Mutex<BTreeMap<String, Entry>>,
    generations: AtomicU64,
    /// How many instances' last poll missed: raised and lowered with their
    /// `consecutive_misses` leaving and returning to 0, and when a missing instance leaves.
    missing: AtomicUsize,
    /// Bumped on every change, so the publisher republishes only when something happened.
    changes: AtomicU64,
    view: watch::Sender<Arc<FleetView>>,
    /// How long polls take (answered or not), in seconds.
    poll_latency: Histogram,
}

impl Registry {
    pub(crate) fn new(
        config: MonitorConfig,
        credentials: Credentials,
    ) -> Result<Arc<Registry>, TlsError> {
        let connector = Arc::new(Connector::new(&credentials, Role::Agent)?);
        let (view, _) = watch::channel(Arc::new(FleetView::empty(
            Instant::now(),
            config.poll_interval,
        )));
        Ok(Arc::new(Registry {
            config,
            credentials,
            connector,
            entries: Mutex::new(BTreeMap::new()),
            generations: AtomicU64::new(0),
            missing: AtomicUsize::new(0),
            changes: AtomicU64::new(0),
            view,
            poll_latency: Histogram::new(LATENCY_BUCKETS),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one poll that took `elapsed`, answered or not.
    pub(crate) fn observe_poll(&self, elapsed: Duration) {
        self.poll_latency.observe(elapsed.as_secs_f64());
    }

    /// Adds the monitor's metrics, as of now, to `metrics`: instances by health, each
    /// instance's last load as a share of 0-1, and the poll latency histogram.
    pub fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        let view = self.snapshot();
        let by_health = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for health in [
            Health::Unknown,
            Health::Healthy,
            Health::Suspect,
            Health::Unhealthy,
        ] {
            by_health
                .get_or_create(&[("health", health.as_str())])
                .set(view.count(health) as i64);
        }
        metrics.register(
            "autoscaler_instances",
            "Registered instances by health",
            by_health,
        );
        let loads = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
        for instance in &view.instances {
            if let Some(load) = instance.metrics.load {
                loads
                    .get_or_create(&[("instance_id", instance.instance_id.clone())])
                    .set(load / 100.0);
            }
        }
        metrics.register(
            "autoscaler_instance_load_ratio",
            "Last load each instance reported, as a share of its capacity (0-1)",
            loads,
        );
        metrics.register(
            "autoscaler_poll_latency_seconds",
            "Time one poll (a Ping carrying the metrics) took",
            self.poll_latency.clone(),
        );
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Adds an instance, or updates one that registers again (its history is kept), and starts
    /// polling it. Must be called inside a Tokio runtime.
    pub fn register(self: &Arc<Self>, registration: Registration) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let poller = tokio::spawn(poller::poll_forever(
            Arc::downgrade(self),
            registration.instance_id.clone(),
            registration.address.clone(),
            generation,
        ))
        .abort_handle();
        let mut entries = self.lock();
        match entries.get_mut(&registration.instance_id) {
            Some(entry) => {
                tracing::info!(instance_id = %registration.instance_id, address = %registration.address, "instance registered again");
                entry.poller.abort();
                entry.poller = poller;
                entry.generation = generation;
                let view = Arc::make_mut(&mut entry.view);
                view.address = registration.address;
                view.agent_version = registration.agent_version;
            }
            None => {
                tracing::info!(instance_id = %registration.instance_id, address = %registration.address, version = %registration.agent_version, "instance registered");
                let view = InstanceView {
                    instance_id: registration.instance_id.clone(),
                    address: registration.address,
                    agent_version: registration.agent_version,
                    health: Health::Unknown,
                    consecutive_misses: 0,
                    metrics: Metrics::default(),
                    recent_loads: VecDeque::with_capacity(self.config.load_window),
                    registered_at: Instant::now(),
                    last_seen: None,
                    last_error: None,
                };
                entries.insert(
                    registration.instance_id,
                    Entry {
                        view: Arc::new(view),
                        generation,
                        poller,
                    },
                );
            }
        }
        drop(entries);
        self.changed();
    }

    /// Removes an instance and stops polling it.
    pub fn deregister(&self, instance_id: &str) -> Result<(), NotRegistered> {
        let entry = self
            .lock()
            .remove(instance_id)
            .ok_or_else(|| NotRegistered(instance_id.to_string()))?;
        if entry.view.consecutive_misses > 0 {
            self.missing.fetch_sub(1, Ordering::Relaxed);
        }
        entry.poller.abort();
        tracing::info!(%instance_id, "instance deregistered");
        self.changed();
        Ok(())
    }

    /// Applies one poll's outcome, unless it comes from a poll task that has been replaced.
    /// Returns whether an instance whose poll missed may be probed again early (see
    /// `early_probes_allowed`).
    pub(crate) fn record(&self, instance_id: &str, generation: u64, outcome: PollOutcome) -> bool {
        let mut entries = self.lock();
        let registered = entries.len();
        let Some(entry) = entries.get_mut(instance_id) else {
            return false;
        };
        if entry.generation != generation {
            return false;
        }
        let view = Arc::make_mut(&mut entry.view);
        let before = view.health;
        let was_missing = view.consecutive_misses > 0;
        match outcome {
            PollOutcome::Answered(metrics) => {
                let load = metrics.load;
                view.metrics = metrics;
                view.health = Health::Healthy;
                view.consecutive_misses = 0;
                view.last_seen = Some(Instant::now());
                view.last_error = None;
                if let Some(load) = load {
                    if view.recent_loads.len() >= self.config.load_window {
                        view.recent_loads.pop_front();
                    }
                    view.recent_loads.push_back(load);
                }
            }
            PollOutcome::Missed { reason } => {
                view.consecutive_misses = view.consecutive_misses.saturating_add(1);
                view.health = if view.consecutive_misses >= self.config.unhealthy_after {
                    Health::Unhealthy
                } else {
                    Health::Suspect
                };
                view.last_error = Some(reason);
            }
        }
        if view.health != before {
            tracing::info!(
                %instance_id,
                from = %before,
                to = %view.health,
                misses = view.consecutive_misses,
                error = view.last_error.as_deref().unwrap_or(""),
                "health changed"
            );
        }
        let missing = match (was_missing, view.consecutive_misses > 0) {
            (false, true) => self.missing.fetch_add(1, Ordering::Relaxed) + 1,
            (true, false) => self.missing.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.missing.load(Ordering::Relaxed),
        };
        drop(entries);
        self.changed();
        early_probes_allowed(missing, registered)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The registry as it is now: one shared pointer per instance, already sorted by id.
    pub fn snapshot(&self) -> FleetView {
        let instances = self
            .lock()
            .values()
            .map(|entry| Arc::clone(&entry.view))
            .collect();
        FleetView {
            taken_at: Instant::now(),
            poll_interval: self.config.poll_interval,
            instances,
        }
    }

    /// A receiver of the published fleet view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetView>> {
        self.view.subscribe()
    }

    /// Republishes the fleet view whenever something changed, every `publish_interval`.
    pub(crate) async fn publish_forever(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.publish_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = u64::MAX;
        loop {
            ticker.tick().await;
            let changes = self.changes.load(Ordering::Acquire);
            if changes != published {
                published = changes;
                self.view.send_replace(Arc::new(self.snapshot()));
            }
        }
    }

    /// Every registered instance and its agent's address, to say goodbye at shutdown.
    pub(crate) fn addresses(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(id, entry)| (id.clone(), entry.view.address.clone()))
            .collect()
    }

    /// The agent address of one registered instance.
    pub(crate) fn address_of(&self, instance_id: &str) -> Option<String> {
        self.lock()
            .get(instance_id)
            .map(|entry| entry.view.address.clone())
    }

    /// Tells the agent of a registered instance that it is being removed; best effort,
    /// bounded by one second. The controller calls this before a termination. Returns how long
    /// the agent's termination hook may run, when it runs one.
    pub async fn notify_removal(
        &self,
        instance_id: &str,
        reason: &str,
    ) -> Option<std::time::Duration> {
        crate::poller::notify_removal(self, instance_id, reason, std::time::Duration::from_secs(1))
            .await
    }

    /// Stops every poll task.
    pub(crate) fn stop_polling(&self) {
        for entry in self.lock().values() {
            entry.poller.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::early_probes_allowed;

    #[test]
    fn a_few_missing_instances_are_probed_early_a_mass_of_them_is_not() {
        // A small fleet: any missing instance is probed early, even all of them.
        assert!(early_probes_allowed(1, 2));
        assert!(early_probes_allowed(5, 5));
        assert!(early_probes_allowed(8, 8));
        // A large fleet: up to a tenth of it.
        assert!(early_probes_allowed(1_000, 10_000));
        assert!(!early_probes_allowed(1_001, 10_000));
        assert!(!early_probes_allowed(4_411, 10_000));
        // Past the floor in a fleet too small for a tenth to reach it.
        assert!(!early_probes_allowed(9, 50));
    }
}
