//! What the controller sees: the provider's instances joined with the monitor's fleet view and
//! the load balancer's targets, as the policy's `Observation`.

use std::time::{Duration, SystemTime};

use crate::balancer::{TargetState, TargetStatus};
use crate::cloud::CloudInstance;
use crate::fleet::FleetView;
use crate::policy::{Observation, ObservedInstance};

/// Whether the balancer finds every target it judges (healthy or unhealthy: not those starting,
/// draining or unused) unhealthy, and judges at least one.
pub(super) fn every_target_unhealthy(targets: &[TargetStatus]) -> bool {
    let mut judged = targets
        .iter()
        .filter(|t| matches!(t.state, TargetState::Healthy | TargetState::Unhealthy))
        .peekable();
    judged.peek().is_some() && judged.all(|t| t.state == TargetState::Unhealthy)
}

/// Joins the provider's instances (`listed`, and the launches it does not list yet) with the
/// monitor's view (and the load balancer's, when there is one and its targets could be read).
pub fn observe(
    listed: &[CloudInstance],
    unlisted: &[CloudInstance],
    view: &FleetView,
    targets: Option<&[TargetStatus]>,
    now: SystemTime,
    uptime: Duration,
) -> Observation {
    let seen = |instance: &CloudInstance, listed: bool| {
        let seen = view.get(&instance.instance_id);
        ObservedInstance {
            instance_id: instance.instance_id.clone(),
            cloud_state: instance.state,
            age: now.duration_since(instance.launched_at).unwrap_or_default(),
            health: seen.map(|i| i.health),
            load: seen.and_then(|i| i.metrics.load),
            has_reported: seen.is_some_and(|i| !i.recent_loads.is_empty()),
            state_reason: instance.state_reason.clone(),
            target_unhealthy: targets
                .and_then(|targets| {
                    targets
                        .iter()
                        .find(|t| t.instance_id == instance.instance_id)
                })
                .filter(|t| t.state == TargetState::Unhealthy)
                .map(|t| {
                    t.reason
                        .clone()
                        .unwrap_or_else(|| "its health checks fail".to_string())
                }),
            listed,
            version: instance.version.clone(),
            protected: false,
            lifecycle: seen.map_or(Default::default(), |i| i.metrics.lifecycle()),
            serving: targets.map(|targets| {
                targets.iter().any(|t| {
                    t.instance_id == instance.instance_id && t.state == TargetState::Healthy
                })
            }),
        }
    };
    Observation {
        instances: listed
            .iter()
            .map(|i| seen(i, true))
            .chain(unlisted.iter().map(|i| seen(i, false)))
            .collect(),
        controller_uptime: uptime,
        ..Observation::default()
    }
}
