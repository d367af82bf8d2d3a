//! The reconciler against a scripted cloud: failures are retried with backoff and written into
//! the decision record, a failed list decides nothing and stops nothing, and the launch count
//! comes from the provider's list, never from memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use autoscaler_controller::cloud::{
    Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState,
};
use autoscaler_controller::config::ControllerConfig;
use autoscaler_controller::fleet::FleetView;
use autoscaler_controller::reconciler::Controller;
use autoscaler_proto::auth::Token;

/// A cloud whose calls fail as scripted, then succeed.
#[derive(Default)]
struct ScriptedCloud {
    instances: Mutex<Vec<CloudInstance>>,
    list_failures: Mutex<VecDeque<CloudErrorKind>>,
    launch_failures: Mutex<VecDeque<CloudErrorKind>>,
    launches: Mutex<u32>,
}

impl Cloud for ScriptedCloud {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        if let Some(kind) = self.list_failures.lock().unwrap().pop_front() {
            return Err(CloudError::new(kind, "scripted list failure"));
        }
        Ok(self.instances.lock().unwrap().clone())
    }

    async fn launch(&self, count: u32) -> Result<Vec<String>, CloudError> {
        if let Some(kind) = self.launch_failures.lock().unwrap().pop_front() {
            return Err(CloudError::new(kind, "scripted launch failure"));
        }
        let mut ids = Vec::new();
        for _ in 0..count {
            let mut launches = self.launches.lock().unwrap();
            *launches += 1;
            let instance_id = format!("i-{launches}");
            self.instances.lock().unwrap().push(CloudInstance {
                instance_id: instance_id.clone(),
                state: InstanceState::Pending,
                launched_at: SystemTime::now(),
                zone: "test".into(),
            });
            ids.push(instance_id);
        }
        Ok(ids)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        self.instances
            .lock()
            .unwrap()
            .retain(|i| !instance_ids.contains(&i.instance_id));
        Ok(())
    }
}

fn controller(cloud: Arc<ScriptedCloud>) -> Controller<ScriptedCloud> {
    let (_, fleet) = tokio::sync::watch::channel(Arc::new(FleetView::empty(
        Instant::now(),
        Duration::from_secs(1),
    )));
    Controller::new(
        cloud,
        ControllerConfig::default(),
        fleet,
        Token::new("test-token-0123456789").unwrap(),
        Arc::new(|_: &str| {}),
    )
}

#[tokio::test]
async fn throttling_and_capacity_errors_are_retried_and_recorded() {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud
        .list_failures
        .lock()
        .unwrap()
        .push_back(CloudErrorKind::Throttled);
    cloud.launch_failures.lock().unwrap().extend([
        CloudErrorKind::InsufficientCapacity,
        CloudErrorKind::Unavailable,
    ]);
    let mut controller = controller(cloud.clone());
    let record = controller.evaluate_once().await;
    assert_eq!(record.launched, ["i-1", "i-2"], "{record:#?}");
    let outcome = record.outcome.join("\n");
    assert!(
        outcome.contains("listing instances failed (attempt 1, Throttled"),
        "{outcome}"
    );
    assert!(
        outcome.contains("launching failed (attempt 1, InsufficientCapacity"),
        "{outcome}"
    );
    assert!(
        outcome.contains("launching failed (attempt 2, Unavailable"),
        "{outcome}"
    );
    assert!(outcome.contains("launched i-1, i-2"), "{outcome}");
}

#[tokio::test]
async fn a_provider_that_keeps_failing_decides_nothing_and_stops_nothing() {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud
        .list_failures
        .lock()
        .unwrap()
        .extend([CloudErrorKind::Timeout; 3]);
    let mut controller = controller(cloud.clone());
    let record = controller.evaluate_once().await;
    assert!(record.decision.is_none());
    assert!(
        record
            .outcome
            .last()
            .unwrap()
            .starts_with("list failed: Timeout"),
        "{record:#?}"
    );
    assert_eq!(*cloud.launches.lock().unwrap(), 0);
    // The next evaluation works again.
    let record = controller.evaluate_once().await;
    assert_eq!(record.launched.len(), 2);
}

#[tokio::test]
async fn the_count_comes_from_the_provider_so_nothing_is_launched_twice() {
    let cloud = Arc::new(ScriptedCloud::default());
    let mut controller = controller(cloud.clone());
    controller.evaluate_once().await;
    assert_eq!(*cloud.launches.lock().unwrap(), 2);
    // The instances are still pending and unregistered: the next evaluations launch nothing.
    for _ in 0..3 {
        let record = controller.evaluate_once().await;
        assert!(record.launched.is_empty(), "{record:#?}");
    }
    // A second controller (a restart) sees the same two and launches nothing either.
    let mut restarted = self::controller(cloud.clone());
    let record = restarted.evaluate_once().await;
    assert!(record.launched.is_empty());
    assert_eq!(*cloud.launches.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_non_retryable_error_is_not_retried() {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud
        .launch_failures
        .lock()
        .unwrap()
        .extend([CloudErrorKind::Other, CloudErrorKind::Other]);
    let mut controller = controller(cloud.clone());
    let record = controller.evaluate_once().await;
    assert!(record.launched.is_empty());
    assert_eq!(
        record.outcome,
        ["launch failed: Other: scripted launch failure"]
    );
    assert_eq!(cloud.launch_failures.lock().unwrap().len(), 1, "tried once");
}
