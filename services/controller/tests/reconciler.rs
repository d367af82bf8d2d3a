//! The reconciler against a scripted cloud: failures are retried with backoff and written into
//! the decision record, a failed list decides nothing and stops nothing, and the launch count
//! comes from the provider's list, never from memory, but for launches it does not list yet. A
//! launch is written down before it is asked and asked again with its token, so that neither a
//! lost answer nor a new leader launches twice. With a load balancer, instances in service are
//! registered, and drained before they are terminated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use autoscaler_controller::balancer::{Balancer, Pending, Target, TargetState, TargetStatus};
use autoscaler_controller::cloud::{
    Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState,
};
use autoscaler_controller::config::ControllerConfig;
use autoscaler_controller::fleet::FleetView;
use autoscaler_controller::launches::{ControllerMemory, Journal};
use autoscaler_controller::reconciler::{Controller, NoAgents};

/// A cloud whose calls fail as scripted, then succeed. Like EC2 it keeps launch tokens (a
/// launch asked again returns the instance it made) and may list its launches late.
#[derive(Default)]
struct ScriptedCloud {
    instances: Mutex<Vec<CloudInstance>>,
    list_failures: Mutex<VecDeque<CloudErrorKind>>,
    launch_failures: Mutex<VecDeque<CloudErrorKind>>,
    launches: Mutex<u32>,
    /// While set, what is launched is not listed (until `show_all`).
    lagging: std::sync::atomic::AtomicBool,
    unlisted: Mutex<Vec<String>>,
    /// Launches that take effect and whose answer is then lost (a timeout).
    lost_answers: Mutex<u32>,
    /// While set, a launch takes effect and its answer never comes.
    hanging: std::sync::atomic::AtomicBool,
}

impl ScriptedCloud {
    fn lag(&self, lagging: bool) {
        self.lagging
            .store(lagging, std::sync::atomic::Ordering::SeqCst);
    }

    fn show_all(&self) {
        self.unlisted.lock().unwrap().clear();
    }

    fn made(&self) -> u32 {
        *self.launches.lock().unwrap()
    }
}

impl Cloud for ScriptedCloud {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        if let Some(kind) = self.list_failures.lock().unwrap().pop_front() {
            return Err(CloudError::new(kind, "scripted list failure"));
        }
        let unlisted = self.unlisted.lock().unwrap().clone();
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .filter(|i| !unlisted.contains(&i.instance_id))
            .cloned()
            .collect())
    }

    async fn launch(&self, tokens: &[String]) -> Result<Vec<String>, CloudError> {
        if let Some(kind) = self.launch_failures.lock().unwrap().pop_front() {
            return Err(CloudError::new(kind, "scripted launch failure"));
        }
        let mut ids = Vec::new();
        for token in tokens {
            let made = self
                .instances
                .lock()
                .unwrap()
                .iter()
                .find(|i| i.launch_token.as_ref() == Some(token))
                .map(|i| i.instance_id.clone());
            if let Some(instance_id) = made {
                ids.push(instance_id);
                continue;
            }
            let mut launches = self.launches.lock().unwrap();
            *launches += 1;
            let instance_id = format!("i-{launches}");
            self.instances.lock().unwrap().push(CloudInstance {
                instance_id: instance_id.clone(),
                state: InstanceState::Pending,
                launched_at: SystemTime::now(),
                zone: "test".into(),
                state_reason: None,
                app_address: None,
                launch_token: Some(token.clone()),
                version: None,
            });
            if self.lagging.load(std::sync::atomic::Ordering::SeqCst) {
                self.unlisted.lock().unwrap().push(instance_id.clone());
            }
            ids.push(instance_id);
        }
        if self.hanging.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut lost = self.lost_answers.lock().unwrap();
        if *lost > 0 {
            *lost -= 1;
            return Err(CloudError::new(
                CloudErrorKind::Timeout,
                "scripted: the answer was lost",
            ));
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
        // No agent answers in these tests: nobody to notify or forget.
        Arc::new(NoAgents),
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
        outcome.contains("listing instances failed (attempt 1, throttled"),
        "{outcome}"
    );
    assert!(
        outcome.contains("launching failed (attempt 1, insufficient-capacity"),
        "{outcome}"
    );
    assert!(
        outcome.contains("launching failed (attempt 2, unavailable"),
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
            .starts_with("list failed: timeout"),
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
        ["launch failed: other: scripted launch failure"]
    );
    assert_eq!(cloud.launch_failures.lock().unwrap().len(), 1, "tried once");

    // A refused launch backs off as a failed instance does: the next evaluation launches
    // nothing and says why, and the status tells.
    let record = controller.evaluate_once().await;
    assert!(record.launched.is_empty(), "{record:#?}");
    assert_eq!(
        cloud.launch_failures.lock().unwrap().len(),
        1,
        "not tried again"
    );
    let decision = record.decision.unwrap();
    assert!(
        decision
            .rules
            .iter()
            .any(|r| r.rule.as_str() == "launch-backoff"
                && r.detail.contains("scripted launch failure")),
        "{decision:#?}"
    );
    let backoff = controller
        .status()
        .launch_backoff()
        .expect("launches are failing");
    assert_eq!(backoff.consecutive_failures, 1);
    assert!(backoff.retry_in > Duration::from_secs(5), "{backoff:?}");
    assert_eq!(controller.status().counters().launch_failures, 1);
}

/// A journal that keeps the last memory it was given, or refuses while `refusing`.
#[derive(Default)]
struct KeptMemory {
    last: Mutex<Option<ControllerMemory>>,
    demand: Mutex<Vec<autoscaler_policy::forecast::DemandSample>>,
    refusing: std::sync::atomic::AtomicBool,
}

impl KeptMemory {
    fn last(&self) -> Option<ControllerMemory> {
        self.last.lock().unwrap().clone()
    }
}

impl Journal for KeptMemory {
    fn save<'a>(
        &'a self,
        memory: &'a ControllerMemory,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("scripted: the store is unavailable".to_string());
            }
            *self.last.lock().unwrap() = Some(memory.clone());
            Ok(())
        })
    }

    fn record_demand<'a>(
        &'a self,
        samples: &'a [autoscaler_policy::forecast::DemandSample],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("scripted: the store is unavailable".to_string());
            }
            self.demand.lock().unwrap().extend_from_slice(samples);
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_launch_not_yet_listed_counts_as_pending_and_is_not_made_twice() {
    let cloud = Arc::new(ScriptedCloud::default());
    // EC2's DescribeInstances may lag RunInstances: the launches are not listed for a while.
    cloud.lag(true);
    let mut controller = controller(cloud.clone());
    let record = controller.evaluate_once().await;
    assert_eq!(record.launched, ["i-1", "i-2"], "{record:#?}");
    for _ in 0..3 {
        let record = controller.evaluate_once().await;
        assert!(record.launched.is_empty(), "{record:#?}");
        assert_eq!(record.decision.unwrap().current, 2, "they count as pending");
    }
    assert_eq!(controller.pending_launches().len(), 2);
    assert_eq!(
        controller.status().instances().len(),
        2,
        "the status shows them"
    );
    assert_eq!(cloud.made(), 2);
    // Once listed they are the provider's again.
    cloud.show_all();
    let record = controller.evaluate_once().await;
    assert!(record.launched.is_empty(), "{record:#?}");
    assert!(controller.pending_launches().is_empty());
    assert_eq!(cloud.made(), 2);
}

#[tokio::test]
async fn a_launch_whose_answer_is_lost_is_asked_again_with_the_same_token() {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud.lag(true);
    // The launch takes effect, then its answer is lost; the retry asks again.
    *cloud.lost_answers.lock().unwrap() = 1;
    let mut controller = controller(cloud.clone());
    let record = controller.evaluate_once().await;
    let outcome = record.outcome.join("\n");
    assert!(
        outcome.contains("launching failed (attempt 1, timeout"),
        "{outcome}"
    );
    assert_eq!(record.launched, ["i-1", "i-2"], "{outcome}");
    assert_eq!(cloud.made(), 2, "asked again, nothing launched twice");
}

#[tokio::test]
async fn a_successor_counts_the_launches_its_predecessor_made_and_did_not_yet_see_listed() {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud.lag(true);
    let journal = Arc::new(KeptMemory::default());
    let mut leader = controller(cloud.clone()).with_memory(None, journal.clone());
    let record = leader.evaluate_once().await;
    assert_eq!(record.launched, ["i-1", "i-2"], "{record:#?}");
    let memory = journal.last().expect("the memory is kept");
    let ids: Vec<Option<&str>> = memory
        .pending_launches
        .iter()
        .map(|l| l.instance_id.as_deref())
        .collect();
    assert_eq!(ids, [Some("i-1"), Some("i-2")], "{memory:#?}");
    drop(leader);

    // The memory goes through the store as JSON.
    let stored: ControllerMemory =
        serde_json::from_slice(&serde_json::to_vec(&memory).unwrap()).unwrap();
    assert_eq!(stored, memory);
    let mut successor =
        controller(cloud.clone()).with_memory(Some(&stored), Arc::new(KeptMemory::default()));
    let record = successor.evaluate_once().await;
    assert!(record.launched.is_empty(), "{record:#?}");
    assert_eq!(record.decision.unwrap().current, 2);
    assert_eq!(cloud.made(), 2);
}

#[tokio::test]
async fn a_leader_gone_during_a_launch_leaves_it_written_down_and_the_successor_makes_nothing_twice()
 {
    let cloud = Arc::new(ScriptedCloud::default());
    cloud.lag(true);
    cloud
        .hanging
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let journal = Arc::new(KeptMemory::default());
    let mut leader = controller(cloud.clone()).with_memory(None, journal.clone());
    // The launches take effect; the leader is gone before their answer comes.
    let gone = tokio::time::timeout(Duration::from_millis(300), leader.evaluate_once()).await;
    assert!(gone.is_err(), "the launch hangs");
    drop(leader);
    cloud
        .hanging
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(cloud.made(), 2);
    let memory = journal.last().expect("written down before it was asked");
    assert_eq!(memory.pending_launches.len(), 2, "{memory:#?}");
    assert!(
        memory
            .pending_launches
            .iter()
            .all(|l| l.instance_id.is_none()),
        "{memory:#?}"
    );

    let mut successor =
        controller(cloud.clone()).with_memory(Some(&memory), Arc::new(KeptMemory::default()));
    let record = successor.evaluate_once().await;
    let outcome = record.outcome.join("\n");
    assert!(
        outcome.contains("asking again 2 launch(es) whose answer was lost"),
        "{outcome}"
    );
    assert_eq!(record.launched, ["i-1", "i-2"], "{outcome}");
    assert_eq!(cloud.made(), 2, "the same instances, none twice");

    // Where the provider lists an instance by its launch's token, the successor knows the
    // launch took effect without asking again.
    cloud.show_all();
    let record = successor.evaluate_once().await;
    assert!(record.launched.is_empty(), "{record:#?}");
    assert!(successor.pending_launches().is_empty());
}

#[tokio::test]
async fn a_launch_that_cannot_be_written_down_first_is_not_asked() {
    let cloud = Arc::new(ScriptedCloud::default());
    let journal = Arc::new(KeptMemory::default());
    journal
        .refusing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut controller = controller(cloud.clone()).with_memory(None, journal.clone());
    let record = controller.evaluate_once().await;
    assert!(record.launched.is_empty(), "{record:#?}");
    assert_eq!(cloud.made(), 0);
    let outcome = record.outcome.join("\n");
    assert!(
        outcome.contains(
            "launch not asked: it could not be written down first (scripted: the store is unavailable)"
        ),
        "{outcome}"
    );
    assert!(controller.pending_launches().is_empty());
    assert!(
        controller.status().launch_backoff().is_none(),
        "not a refused launch"
    );
    // Once the store answers again, the launch is made.
    journal
        .refusing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let record = controller.evaluate_once().await;
    assert_eq!(record.launched, ["i-1", "i-2"], "{record:#?}");
    assert_eq!(journal.last().unwrap().pending_launches.len(), 2);
}

/// A scripted cloud listing two instances launched 10 minutes ago, and a fleet view where both
/// are healthy at `load` (the sender keeps the view alive).
fn two_in_service(
    load: f64,
) -> (
    Arc<ScriptedCloud>,
    tokio::sync::watch::Sender<Arc<FleetView>>,
    tokio::sync::watch::Receiver<Arc<FleetView>>,
) {
    use autoscaler_controller::fleet::{Health, InstanceView};
    let cloud = Arc::new(ScriptedCloud::default());
    let launched_at = SystemTime::now() - Duration::from_secs(600);
    for id in ["i-a", "i-b"] {
        cloud.instances.lock().unwrap().push(CloudInstance {
            instance_id: id.into(),
            state: InstanceState::Running,
            launched_at,
            zone: "test".into(),
            state_reason: None,
            app_address: None,
            launch_token: None,
            version: None,
        });
    }
    let view = FleetView {
        taken_at: Instant::now(),
        poll_interval: Duration::from_secs(1),
        instances: ["i-a", "i-b"]
            .map(|id| {
                Arc::new(InstanceView {
                    instance_id: id.into(),
                    address: "127.0.0.1:1".into(),
                    agent_version: "test".into(),
                    health: Health::Healthy,
                    consecutive_misses: 0,
                    metrics: autoscaler_controller::fleet::Metrics {
                        load: Some(load),
                        requests_per_second: None,
                        hook: None,
                    },
                    recent_loads: [load].into(),
                    registered_at: Instant::now(),
                    last_seen: Some(Instant::now()),
                    last_error: None,
                })
            })
            .to_vec(),
    };
    let (keep, fleet) = tokio::sync::watch::channel(Arc::new(view));
    (cloud, keep, fleet)
}

#[tokio::test]
async fn a_shadow_policy_is_evaluated_and_recorded_but_never_acted_on() {
    use autoscaler_controller::config::{PolicyConfig, ShadowConfig};
    use autoscaler_controller::kinds::TargetTracking;

    let (cloud, _keep, fleet) = two_in_service(52.0);
    // Live: target 50 % -> 52 % is within the tolerance, hold. Shadow: target 30 % -> 4.
    let config = ControllerConfig {
        shadow: Some(ShadowConfig {
            policy: PolicyConfig::TargetTracking(TargetTracking {
                target: 30.0,
                tolerance: 0.1,
            }),
            warmup_secs: None,
            scale_out_cooldown_secs: None,
            scale_in_cooldown_secs: None,
            termination_policy: None,
        }),
        ..ControllerConfig::default()
    };
    config.validate().unwrap();
    let mut controller = Controller::new(
        cloud.clone(),
        config,
        fleet,
        // No agent answers in these tests: nobody to notify or forget.
        Arc::new(NoAgents),
    );
    let status = controller.status();
    let record = controller.evaluate_once().await;
    let decision = record.decision.as_ref().unwrap();
    assert_eq!((decision.current, decision.desired), (2, 2));
    let shadow = record.shadow.as_ref().expect("a shadow verdict");
    assert!(shadow.differs, "{record:#?}");
    assert_eq!(shadow.desired, 4);
    assert!(
        shadow.summary.starts_with("launch 2: 2 -> 4"),
        "{}",
        shadow.summary
    );
    assert!(record.launched.is_empty());
    // The shadow keeps its own memory: having "scaled out", it is in its own cooldown now.
    let record = controller.evaluate_once().await;
    let shadow = record.shadow.as_ref().expect("a shadow verdict");
    assert!(!shadow.differs, "{record:#?}");
    assert!(
        shadow.summary.contains("scale-out cooldown"),
        "{}",
        shadow.summary
    );
    assert_eq!(
        *cloud.launches.lock().unwrap(),
        0,
        "the shadow launched nothing"
    );
    assert_eq!(status.counters().shadow_disagreements, 1);
}

/// A load balancer that keeps its targets in memory; a deregistered target keeps the requests
/// in flight the test gives it.
#[derive(Default)]
struct FakeBalancer {
    targets: Mutex<Vec<TargetStatus>>,
    removed: Mutex<Vec<String>>,
    /// Requests in flight a target has while it drains.
    in_flight: Mutex<u32>,
}

impl Balancer for FakeBalancer {
    fn targets(&self) -> Pending<'_, Vec<TargetStatus>> {
        Box::pin(async { Ok(self.targets.lock().unwrap().clone()) })
    }

    fn register<'a>(&'a self, target: &'a Target) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut targets = self.targets.lock().unwrap();
            targets.retain(|t| t.instance_id != target.instance_id);
            targets.push(TargetStatus {
                instance_id: target.instance_id.clone(),
                state: TargetState::Healthy,
                in_flight: Some(3),
                reason: None,
            });
            Ok(())
        })
    }

    fn deregister<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let in_flight = *self.in_flight.lock().unwrap();
            for target in self.targets.lock().unwrap().iter_mut() {
                if target.instance_id == instance_id {
                    target.state = TargetState::Draining;
                    target.in_flight = Some(in_flight);
                }
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            self.targets
                .lock()
                .unwrap()
                .retain(|t| t.instance_id != instance_id);
            self.removed.lock().unwrap().push(instance_id.to_string());
            Ok(())
        })
    }
}

/// Three running instances with apps, seen healthy at `load`, behind a `FakeBalancer`; min 2,
/// no cooldowns.
type Balanced = (
    Arc<ScriptedCloud>,
    Arc<FakeBalancer>,
    tokio::sync::watch::Sender<Arc<FleetView>>,
    Controller<ScriptedCloud>,
);

fn balanced(load: f64, drain_timeout: Duration) -> Balanced {
    balanced_with(load, drain_timeout, ControllerConfig::default())
}

/// Three instances behind a fake balancer, each seen at `load`, with `config` (without
/// cooldowns).
fn balanced_with(load: f64, drain_timeout: Duration, config: ControllerConfig) -> Balanced {
    let cloud = Arc::new(ScriptedCloud::default());
    let launched_at = SystemTime::now() - Duration::from_secs(600);
    for (n, id) in ["i-a", "i-b", "i-c"].into_iter().enumerate() {
        cloud.instances.lock().unwrap().push(CloudInstance {
            instance_id: id.into(),
            state: InstanceState::Running,
            launched_at: launched_at + Duration::from_secs(n as u64),
            zone: "test".into(),
            state_reason: None,
            app_address: Some(format!("127.0.0.1:{}", 9000 + n)),
            launch_token: None,
            version: None,
        });
    }
    let (views, fleet) =
        tokio::sync::watch::channel(Arc::new(seen_at(&["i-a", "i-b", "i-c"], load)));
    let config = ControllerConfig {
        scale_in_cooldown_secs: 0,
        scale_out_cooldown_secs: 0,
        ..config
    };
    config.validate().unwrap();
    let balancer = Arc::new(FakeBalancer::default());
    let controller = Controller::new(cloud.clone(), config, fleet, Arc::new(NoAgents))
        .with_balancer(balancer.clone(), drain_timeout);
    (cloud, balancer, views, controller)
}

fn seen_at(ids: &[&str], load: f64) -> FleetView {
    use autoscaler_controller::fleet::{Health, InstanceView};
    FleetView {
        taken_at: Instant::now(),
        poll_interval: Duration::from_secs(1),
        instances: ids
            .iter()
            .map(|id| {
                Arc::new(InstanceView {
                    instance_id: id.to_string(),
                    address: "127.0.0.1:1".into(),
                    agent_version: "test".into(),
                    health: Health::Healthy,
                    consecutive_misses: 0,
                    metrics: autoscaler_controller::fleet::Metrics {
                        load: Some(load),
                        requests_per_second: None,
                        hook: None,
                    },
                    recent_loads: [load].into(),
                    registered_at: Instant::now(),
                    last_seen: Some(Instant::now()),
                    last_error: None,
                })
            })
            .collect(),
    }
}

fn listed(cloud: &ScriptedCloud) -> Vec<String> {
    cloud
        .instances
        .lock()
        .unwrap()
        .iter()
        .map(|i| i.instance_id.clone())
        .collect()
}

#[tokio::test]
async fn instances_in_service_are_registered_and_a_scale_in_drains_before_it_terminates() {
    let (cloud, balancer, views, mut controller) = balanced(50.0, Duration::from_secs(300));
    let record = controller.evaluate_once().await;
    assert_eq!(record.decision.as_ref().unwrap().desired, 3, "{record:#?}");
    let registered: Vec<&String> = record
        .outcome
        .iter()
        .filter(|o| o.starts_with("registered "))
        .collect();
    assert_eq!(registered.len(), 3, "{record:#?}");
    assert_eq!(balancer.targets.lock().unwrap().len(), 3);
    // Registered once: the next evaluation registers nothing again.
    let record = controller.evaluate_once().await;
    assert!(record.outcome.is_empty(), "{record:#?}");

    // Load falls: one instance is drained, not terminated, while it has requests in flight.
    *balancer.in_flight.lock().unwrap() = 2;
    views
        .send(Arc::new(seen_at(&["i-a", "i-b", "i-c"], 10.0)))
        .unwrap();
    let record = controller.evaluate_once().await;
    let decision = record.decision.as_ref().unwrap();
    assert_eq!((decision.current, decision.desired), (3, 2), "{record:#?}");
    let victim = decision.scale_in[0].clone();
    assert!(
        record
            .outcome
            .contains(&format!("draining {victim} before it is scaled in")),
        "{record:#?}"
    );
    assert!(record.terminated.is_empty());
    assert_eq!(listed(&cloud).len(), 3);
    assert_eq!(
        controller.status().draining(),
        std::slice::from_ref(&victim)
    );

    // While it drains, the policy sizes the other two and decides nothing more.
    let record = controller.evaluate_once().await;
    let decision = record.decision.as_ref().unwrap();
    assert_eq!((decision.current, decision.desired), (2, 2), "{record:#?}");
    assert!(record.terminated.is_empty() && decision.scale_in.is_empty());

    // Its last request done: terminated, and the balancer forgets it.
    *balancer.in_flight.lock().unwrap() = 0;
    for target in balancer.targets.lock().unwrap().iter_mut() {
        if target.instance_id == victim {
            target.in_flight = Some(0);
        }
    }
    let record = controller.evaluate_once().await;
    assert_eq!(
        record.terminated,
        std::slice::from_ref(&victim),
        "{record:#?}"
    );
    assert!(
        record
            .outcome
            .iter()
            .any(|o| o.starts_with(&format!("drained {victim} in "))),
        "{record:#?}"
    );
    assert!(!listed(&cloud).contains(&victim));
    assert!(balancer.removed.lock().unwrap().contains(&victim));
    assert!(controller.status().draining().is_empty());
}

#[tokio::test]
async fn a_drain_that_does_not_end_is_cut_at_the_timeout() {
    let (cloud, balancer, views, mut controller) = balanced(50.0, Duration::ZERO);
    controller.evaluate_once().await;
    *balancer.in_flight.lock().unwrap() = 5;
    views
        .send(Arc::new(seen_at(&["i-a", "i-b", "i-c"], 10.0)))
        .unwrap();
    let record = controller.evaluate_once().await;
    let victim = record.decision.as_ref().unwrap().scale_in[0].clone();
    let record = controller.evaluate_once().await;
    assert_eq!(
        record.terminated,
        std::slice::from_ref(&victim),
        "{record:#?}"
    );
    assert!(
        record
            .outcome
            .iter()
            .any(|o| o.starts_with(&format!("{victim} still had requests in flight after"))),
        "{record:#?}"
    );
    assert_eq!(listed(&cloud).len(), 2);
}

#[tokio::test]
async fn a_replaced_instance_whose_processes_are_gone_is_terminated_at_once_and_targets_of_gone_instances_removed()
 {
    let (cloud, balancer, _views, mut controller) = balanced(50.0, Duration::from_secs(300));
    controller.evaluate_once().await;
    cloud.instances.lock().unwrap()[0].state = InstanceState::Stopped;
    let record = controller.evaluate_once().await;
    assert_eq!(record.terminated, ["i-a"], "{record:#?}");
    assert!(
        !record.outcome.iter().any(|o| o.starts_with("draining ")),
        "nothing to drain: {record:#?}"
    );
    assert_eq!(record.launched.len(), 1, "replaced: {record:#?}");
    assert!(
        balancer
            .removed
            .lock()
            .unwrap()
            .contains(&"i-a".to_string())
    );

    // A target whose instance the provider no longer lists (terminated elsewhere) is removed.
    cloud
        .instances
        .lock()
        .unwrap()
        .retain(|i| i.instance_id != "i-b");
    controller.evaluate_once().await;
    assert!(
        balancer
            .removed
            .lock()
            .unwrap()
            .contains(&"i-b".to_string())
    );
}

#[tokio::test]
async fn with_the_load_balancer_health_check_type_an_instance_failing_its_checks_is_drained_and_replaced()
 {
    use autoscaler_controller::config::HealthCheckType;
    let config = ControllerConfig {
        health_check_type: HealthCheckType::LoadBalancer,
        ..ControllerConfig::default()
    };
    let (cloud, balancer, _views, mut controller) =
        balanced_with(50.0, Duration::from_secs(30), config);
    controller.evaluate_once().await;
    assert_eq!(balancer.targets.lock().unwrap().len(), 3, "all in service");
    // i-b's application fails the balancer's health checks; its agent still answers the monitor.
    for target in balancer.targets.lock().unwrap().iter_mut() {
        if target.instance_id == "i-b" {
            target.state = TargetState::Unhealthy;
            target.reason = Some("L7STS: HTTP status 503".to_string());
        }
    }
    let record = controller.evaluate_once().await;
    let decision = record.decision.clone().unwrap();
    let replaced: Vec<(&str, &str)> = decision
        .replace
        .iter()
        .map(|r| (r.instance_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        replaced,
        [(
            "i-b",
            "unhealthy per the load balancer: L7STS: HTTP status 503"
        )],
        "{record:#?}"
    );
    assert_eq!(record.launched.len(), 1, "its replacement: {record:#?}");
    // Drained first (nothing in flight here), then terminated.
    let record = controller.evaluate_once().await;
    assert_eq!(record.terminated, ["i-b"], "{record:#?}");
    assert!(!listed(&cloud).contains(&"i-b".to_string()));
}

#[tokio::test]
async fn when_the_load_balancer_finds_every_target_unhealthy_its_health_checks_are_not_acted_on() {
    use autoscaler_controller::config::HealthCheckType;
    let config = ControllerConfig {
        health_check_type: HealthCheckType::LoadBalancer,
        ..ControllerConfig::default()
    };
    let (cloud, balancer, _views, mut controller) =
        balanced_with(50.0, Duration::from_secs(30), config);
    controller.evaluate_once().await;
    let set = |state: TargetState, ids: &[&str]| {
        for target in balancer.targets.lock().unwrap().iter_mut() {
            if ids.contains(&target.instance_id.as_str()) {
                target.state = state;
                target.reason = Some("L4TOUT: timeout".to_string());
            }
        }
    };
    // Every target fails (a wrong health path, say): replacing them all would not help.
    set(TargetState::Unhealthy, &["i-a", "i-b", "i-c"]);
    let record = controller.evaluate_once().await;
    assert!(record.decision.unwrap().replace.is_empty(), "none replaced");
    assert!(
        record
            .outcome
            .iter()
            .any(|o| o.contains("every target unhealthy") && o.contains("failing open")),
        "said: {:?}",
        record.outcome
    );
    // Said once, not every evaluation.
    let record = controller.evaluate_once().await;
    assert!(record.outcome.is_empty(), "{:?}", record.outcome);
    assert_eq!(listed(&cloud).len(), 3);
    // One healthy again: the others' failures are the instances' own, and they are replaced.
    set(TargetState::Healthy, &["i-b"]);
    let record = controller.evaluate_once().await;
    assert!(
        record.outcome.iter().any(|o| o.contains("healthy again")),
        "{:?}",
        record.outcome
    );
    let replaced: Vec<String> = record
        .decision
        .unwrap()
        .replace
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    assert_eq!(replaced, ["i-a", "i-c"]);
}

#[tokio::test]
async fn a_forecaster_that_falls_back_says_so_once_in_the_record() {
    use autoscaler_policy::forecast::{DemandSample, PredictiveConfig, PredictiveMode};

    let (cloud, _keep, fleet) = two_in_service(50.0);
    let config = ControllerConfig {
        predictive: Some(PredictiveConfig {
            mode: PredictiveMode::ForecastAndScale,
            ..PredictiveConfig::default()
        }),
        ..ControllerConfig::default()
    };
    config.validate().unwrap();
    // A week of one daily cycle, then a day of something else entirely.
    let minute = 60_000;
    let now = autoscaler_policy::time::now_ms().div_euclid(minute) * minute;
    let history: Vec<DemandSample> = (1..8 * 1_440)
        .rev()
        .map(|ago| {
            let at_ms = now - ago * minute;
            let capacities = if ago > 1_440 {
                1.0 + ((at_ms / 3_600_000) % 24) as f64 / 12.0
            } else if (ago / 90) % 2 == 0 {
                0.2
            } else {
                4.0
            };
            DemandSample { at_ms, capacities }
        })
        .collect();
    let mut controller = Controller::new(cloud.clone(), config, fleet, Arc::new(NoAgents))
        .with_demand_history(history);
    let record = controller.evaluate_once().await;
    let said: Vec<&String> = record
        .outcome
        .iter()
        .filter(|o| o.starts_with("forecast fell back to forecast-only"))
        .collect();
    assert_eq!(said.len(), 1, "{record:#?}");
    assert!(
        said[0].contains("past max_error_percent 30 %"),
        "{}",
        said[0]
    );
    let forecast = record.decision.as_ref().unwrap().forecast.clone().unwrap();
    assert!(forecast.fallen_back && !forecast.acting, "{forecast:?}");
    // Said once, not at every evaluation.
    let record = controller.evaluate_once().await;
    assert!(
        !record.outcome.iter().any(|o| o.starts_with("forecast")),
        "{record:#?}"
    );
}
