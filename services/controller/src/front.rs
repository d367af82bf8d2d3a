//! The controller's side of the load balancer in front of the group (`Front`): which instances
//! it registered, which are draining, and when a draining one may be terminated. As EC2 Auto
//! Scaling does with a target group: an instance is registered once it is in service (running,
//! healthy, its launch hook done, and its first load seen), and before any termination it is deregistered and given
//! until its requests in flight are done, or `drain_timeout`, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::{Balancer, Target, TargetState, TargetStatus};
use crate::cloud::{CloudInstance, InstanceState};
use crate::fleet::{FleetView, Health, Lifecycle};

/// Why an instance is being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    ScaleIn,
    Replace,
}

impl Removal {
    /// As the decision record says it: `scaled in: terminated ...`.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::ScaleIn => "scaled in",
            Removal::Replace => "replaced",
        }
    }
}

#[derive(Debug)]
struct Draining {
    since: Instant,
    why: Removal,
}

/// An instance whose draining is over, to terminate now.
#[derive(Debug, PartialEq, Eq)]
pub struct Drained {
    pub instance_id: String,
    pub why: Removal,
    /// How long it drained, and whether the timeout ended it (requests may have been cut).
    pub took: Duration,
    pub timed_out: bool,
}

/// The balancer and what the controller is doing with it.
pub struct Front {
    balancer: Arc<dyn Balancer>,
    drain_timeout: Duration,
    draining: BTreeMap<String, Draining>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("drain_timeout", &self.drain_timeout)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Front {
    pub fn new(balancer: Arc<dyn Balancer>, drain_timeout: Duration) -> Front {
        Front {
            balancer,
            drain_timeout,
            draining: BTreeMap::new(),
        }
    }

    /// The instances being drained, to leave out of the policy's view: they are leaving.
    pub fn draining(&self) -> Vec<String> {
        self.draining.keys().cloned().collect()
    }

    /// The balancer's targets, or why they cannot be read (the caller notes it).
    pub async fn targets(&self) -> Result<Vec<TargetStatus>, String> {
        self.balancer
            .targets()
            .await
            .map_err(|error| format!("cannot read the load balancer's targets: {error}"))
    }

    /// Starts draining `instance_ids` (deregistered, no new requests); returns those that need
    /// no draining, to terminate at once: the ones the balancer has no target for (they never
    /// entered service). Notes what it did in `outcome`.
    pub async fn begin(
        &mut self,
        instance_ids: &[String],
        why: Removal,
        targets: Option<&[TargetStatus]>,
        outcome: &mut Vec<String>,
    ) -> Vec<String> {
        let mut now = Vec::new();
        for instance_id in instance_ids {
            let registered = match targets {
                Some(targets) => targets.iter().any(|t| &t.instance_id == instance_id),
                // Unknown: drain, to be safe; the timeout bounds it.
                None => true,
            };
            if !registered {
                now.push(instance_id.clone());
                continue;
            }
            match self.balancer.deregister(instance_id).await {
                Ok(()) => outcome.push(format!(
                    "draining {instance_id} before it is {}",
                    why.as_str()
                )),
                Err(error) => outcome.push(format!(
                    "cannot deregister {instance_id} ({error}); it drains until the timeout"
                )),
            }
            self.draining.insert(
                instance_id.clone(),
                Draining {
                    since: Instant::now(),
                    why,
                },
            );
        }
        now
    }

    /// The draining instances that are done (no request in flight, or the timeout passed), to
    /// terminate now; those the provider no longer lists are forgotten.
    pub fn finished(
        &mut self,
        instances: &[CloudInstance],
        targets: Option<&[TargetStatus]>,
    ) -> Vec<Drained> {
        self.draining
            .retain(|id, _| instances.iter().any(|i| &i.instance_id == id));
        let done: Vec<Drained> = self
            .draining
            .iter()
            .filter_map(|(instance_id, draining)| {
                let took = draining.since.elapsed();
                let drained = targets.is_some_and(|targets| {
                    targets
                        .iter()
                        .find(|t| &t.instance_id == instance_id)
                        .is_none_or(TargetStatus::drained)
                });
                let timed_out = !drained && took >= self.drain_timeout;
                (drained || timed_out).then(|| Drained {
                    instance_id: instance_id.clone(),
                    why: draining.why,
                    took,
                    timed_out,
                })
            })
            .collect();
        for drained in &done {
            self.draining.remove(&drained.instance_id);
        }
        done
    }

    /// Forgets an instance the controller terminated (best effort: what is left is removed at
    /// a later evaluation, with the other targets of instances gone).
    pub async fn remove(&self, instance_id: &str) {
        if let Err(error) = self.balancer.remove(instance_id).await {
            tracing::debug!(%instance_id, %error, "the balancer keeps its target for now");
        }
    }

    /// Registers the instances that are in service and not yet sent requests (or that a
    /// previous controller left draining), and removes the targets of instances the provider
    /// no longer lists. Notes what it did in `outcome`.
    pub async fn reconcile(
        &self,
        instances: &[CloudInstance],
        view: &FleetView,
        targets: &[TargetStatus],
        outcome: &mut Vec<String>,
    ) {
        for instance in instances {
            if self.draining.contains_key(&instance.instance_id) {
                continue;
            }
            let Some(address) = &instance.app_address else {
                continue;
            };
            let in_service = instance.state == InstanceState::Running
                && view.get(&instance.instance_id).is_some_and(|seen| {
                    seen.health == Health::Healthy
                        && seen.metrics.load.is_some()
                        && seen.metrics.lifecycle() == Lifecycle::InService
                });
            let serving = targets.iter().any(|t| {
                t.instance_id == instance.instance_id
                    && !matches!(t.state, TargetState::Draining | TargetState::Unused)
            });
            if !in_service || serving {
                continue;
            }
            let target = Target {
                instance_id: instance.instance_id.clone(),
                address: address.clone(),
            };
            match self.balancer.register(&target).await {
                Ok(()) => outcome.push(format!(
                    "registered {} with the load balancer ({address})",
                    instance.instance_id
                )),
                Err(error) => outcome.push(format!(
                    "cannot register {} with the load balancer: {error}",
                    instance.instance_id
                )),
            }
        }
        for target in targets {
            let listed = instances
                .iter()
                .any(|i| i.instance_id == target.instance_id);
            if !listed && !self.draining.contains_key(&target.instance_id) {
                self.remove(&target.instance_id).await;
            }
        }
    }
}
