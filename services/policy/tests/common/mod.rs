//! What the policy's tests share: instances and fleets as the controller observes them.
#![allow(dead_code)] // each test file uses some of it

use std::time::Duration;

use autoscaler_policy::instance::{Health, InstanceState};
use autoscaler_policy::policy::{Observation, ObservedInstance};

/// How old the instances of `fleet` are, and how long the controller has run.
pub const AGE: Duration = Duration::from_secs(600);
pub const UPTIME: Duration = Duration::from_secs(3_600);

/// An instance in service at `load`, launched `age` ago.
pub fn serving(id: &str, age: Duration, load: f64) -> ObservedInstance {
    ObservedInstance {
        instance_id: id.to_string(),
        cloud_state: InstanceState::Running,
        age,
        health: Some(Health::Healthy),
        load: Some(load),
        has_reported: true,
        state_reason: None,
        target_unhealthy: None,
        listed: true,
        version: None,
        protected: false,
        serving: None,
        lifecycle: autoscaler_policy::Lifecycle::InService,
    }
}

/// An instance launched `age` ago that has not reported yet.
pub fn booting(id: &str, age: Duration) -> ObservedInstance {
    ObservedInstance {
        cloud_state: InstanceState::Pending,
        health: None,
        load: None,
        has_reported: false,
        ..serving(id, age, 0.0)
    }
}

/// Instances `i-0`, `i-1`, ... in service at `loads`, `AGE` old, seen by a controller up for
/// `UPTIME`.
pub fn fleet(loads: &[f64]) -> Observation {
    Observation {
        instances: loads
            .iter()
            .enumerate()
            .map(|(i, &load)| serving(&format!("i-{i}"), AGE, load))
            .collect(),
        controller_uptime: UPTIME,
        ..Observation::default()
    }
}
