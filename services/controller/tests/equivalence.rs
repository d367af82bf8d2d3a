//! The decision is the policy's, whole: the live `Controller`, over a scripted cloud with a load
//! balancer in front (launches listed late, instances draining for a while, launches refused,
//! instances killed or found unhealthy, agents not registered), decides at every evaluation
//! exactly what the simulator's step decides on the same observation (`policy::evaluate`, then
//! `policy::launch_refused` when the provider refused the launch, with a memory of its own), and
//! does exactly what it decided: it launches what the decision launches, and begins the removal
//! of what it scales in or replaces, nothing else. Property-tested over thousands of random
//! evaluations.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use autoscaler_controller::balancer::{Balancer, Pending, Target, TargetState, TargetStatus};
use autoscaler_controller::cloud::{
    Cloud, CloudError, CloudErrorKind, CloudInstance, InstanceState,
};
use autoscaler_controller::config::{ControllerConfig, TerminationPolicy};
use autoscaler_controller::fleet::{FleetView, Health, InstanceView};
use autoscaler_controller::policy::{self, PolicyState};
use autoscaler_controller::reconciler::{Controller, NoAgents};
use proptest::prelude::*;

#[derive(Debug)]
struct Instance {
    id: String,
    state: InstanceState,
    launched_at: SystemTime,
    /// Evaluations left before the provider lists it.
    hidden_for: u32,
}

/// The cloud and the balancer in front of it, as the script makes them.
#[derive(Debug, Default)]
struct World {
    instances: Vec<Instance>,
    made: u32,
    /// The next launch's listing lag (evaluations), and whether it is refused.
    lag: u32,
    refuse: bool,
    /// Evaluations a deregistered target keeps requests in flight.
    drain_for: u32,
    targets: BTreeMap<String, TargetStatus>,
    /// What this evaluation did.
    launched: Vec<String>,
    terminated: Vec<String>,
    deregistered: Vec<String>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<World>>);

impl Scripted {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

const REFUSAL: &str = "scripted: no capacity";

impl Cloud for Scripted {
    async fn list(&self) -> Result<Vec<CloudInstance>, CloudError> {
        Ok(self
            .world()
            .instances
            .iter()
            .filter(|i| i.hidden_for == 0)
            .map(|i| CloudInstance {
                instance_id: i.id.clone(),
                state: i.state,
                launched_at: i.launched_at,
                zone: "test".into(),
                state_reason: None,
                app_address: Some(format!("127.0.0.1:{}", 1000 + i.id.len())),
                launch_token: None,
                version: None,
            })
            .collect())
    }

    async fn launch(&self, tokens: &[String]) -> Result<Vec<String>, CloudError> {
        let mut world = self.world();
        if world.refuse {
            return Err(CloudError::new(CloudErrorKind::Other, REFUSAL));
        }
        let mut ids = Vec::new();
        for _ in tokens {
            world.made += 1;
            let id = format!("i-{:04}", world.made);
            let hidden_for = world.lag;
            world.instances.push(Instance {
                id: id.clone(),
                state: InstanceState::Running,
                launched_at: SystemTime::now(),
                hidden_for,
            });
            world.launched.push(id.clone());
            ids.push(id);
        }
        Ok(ids)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        let mut world = self.world();
        world.instances.retain(|i| !instance_ids.contains(&i.id));
        world.terminated.extend(instance_ids.iter().cloned());
        Ok(())
    }
}

impl Balancer for Scripted {
    fn targets(&self) -> Pending<'_, Vec<TargetStatus>> {
        Box::pin(async { Ok(self.world().targets.values().cloned().collect()) })
    }

    fn register<'a>(&'a self, target: &'a Target) -> Pending<'a, ()> {
        Box::pin(async move {
            self.world().targets.insert(
                target.instance_id.clone(),
                TargetStatus {
                    instance_id: target.instance_id.clone(),
                    state: TargetState::Healthy,
                    in_flight: Some(1),
                    reason: None,
                },
            );
            Ok(())
        })
    }

    fn deregister<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut world = self.world();
            let in_flight = world.drain_for;
            if let Some(target) = world.targets.get_mut(instance_id) {
                target.state = TargetState::Draining;
                target.in_flight = Some(in_flight);
            }
            world.deregistered.push(instance_id.to_string());
            Ok(())
        })
    }

    fn remove<'a>(&'a self, instance_id: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            self.world().targets.remove(instance_id);
            Ok(())
        })
    }
}

/// What happens before one evaluation.
#[derive(Clone, Debug)]
struct Step {
    /// The load every registered, healthy instance reports.
    load: f64,
    /// Evaluations the next launches stay unlisted.
    lag: u32,
    refuse: bool,
    drain_for: u32,
    /// Instances (by position) whose process stops, that the monitor finds unhealthy, and
    /// whose agent is not registered.
    kill: Option<usize>,
    sicken: Option<usize>,
    unregister: Option<usize>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            Just(5.0),
            Just(30.0),
            Just(50.0),
            Just(80.0),
            Just(100.0),
            0.0..100.0
        ],
        prop_oneof![3 => Just(0u32), 1 => 1u32..4],
        prop::bool::weighted(0.15),
        0u32..3,
        prop::option::weighted(0.1, 0usize..8),
        prop::option::weighted(0.1, 0usize..8),
        prop::option::weighted(0.15, 0usize..8),
    )
        .prop_map(
            |(load, lag, refuse, drain_for, kill, sicken, unregister)| Step {
                load,
                lag,
                refuse,
                drain_for,
                kill,
                sicken,
                unregister,
            },
        )
}

fn config(termination_policy: TerminationPolicy, instance_limit: u32) -> ControllerConfig {
    ControllerConfig {
        min_instances: 2,
        max_instances: 5,
        instance_limit,
        // Real time hardly passes between evaluations here: no cooldown, no backoff pause and no
        // grace, so that every rule has its say in a few evaluations.
        scale_out_cooldown_secs: 0,
        scale_in_cooldown_secs: 0,
        launch_backoff_secs: 0,
        launch_backoff_max_secs: 0,
        registration_grace_secs: 0,
        termination_policy,
        ..ControllerConfig::default()
    }
}

/// The monitor's view as the script leaves it: every instance, listed or not, registered and
/// reporting `load` unless its agent is not registered; unhealthy ones so.
fn view(
    world: &World,
    load: f64,
    unregistered: &BTreeSet<String>,
    sick: &BTreeSet<String>,
) -> FleetView {
    let now = Instant::now();
    let mut instances: Vec<Arc<InstanceView>> = world
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Running && !unregistered.contains(&i.id))
        .map(|i| {
            let healthy = !sick.contains(&i.id);
            Arc::new(InstanceView {
                instance_id: i.id.clone(),
                address: "127.0.0.1:1".into(),
                agent_version: "test".into(),
                health: if healthy {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                consecutive_misses: 0,
                metrics: autoscaler_controller::fleet::Metrics {
                    load: healthy.then_some(load),
                    requests_per_second: None,
                    hook: None,
                },
                recent_loads: if healthy {
                    VecDeque::from([load])
                } else {
                    VecDeque::new()
                },
                registered_at: now,
                last_seen: Some(now),
                last_error: None,
            })
        })
        .collect();
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    FleetView {
        taken_at: now,
        poll_interval: Duration::from_secs(1),
        instances,
    }
}

async fn replay(steps: Vec<Step>, termination_policy: TerminationPolicy, instance_limit: u32) {
    let scripted = Scripted::default();
    {
        let mut world = scripted.world();
        for n in 1..=2 {
            world.made = n;
            world.instances.push(Instance {
                id: format!("i-{n:04}"),
                state: InstanceState::Running,
                launched_at: SystemTime::now(),
                hidden_for: 0,
            });
        }
    }
    let config = config(termination_policy, instance_limit);
    let (views, fleet) = tokio::sync::watch::channel(Arc::new(FleetView::empty(
        Instant::now(),
        Duration::from_secs(1),
    )));
    let mut controller = Controller::new(
        Arc::new(scripted.clone()),
        config.clone(),
        fleet,
        Arc::new(NoAgents),
    )
    .with_balancer(Arc::new(scripted.clone()), Duration::from_secs(600));
    // The simulator's side: the same pure steps, with a memory of their own.
    let mut state = PolicyState::default();
    let mut unregistered = BTreeSet::new();
    let mut sick = BTreeSet::new();
    // Instances whose removal was decided: terminated now or after their drain.
    let mut removing: BTreeSet<String> = BTreeSet::new();
    for (n, step) in steps.into_iter().enumerate() {
        {
            let mut world = scripted.world();
            world.lag = step.lag;
            world.refuse = step.refuse;
            world.drain_for = step.drain_for;
            for instance in &mut world.instances {
                instance.hidden_for = instance.hidden_for.saturating_sub(1);
            }
            for target in world.targets.values_mut() {
                if target.state == TargetState::Draining {
                    target.in_flight = target.in_flight.map(|n| n.saturating_sub(1));
                }
            }
            let count = world.instances.len();
            if let Some(i) = step.kill.filter(|&i| i < count) {
                world.instances[i].state = InstanceState::Stopped;
            }
            if let Some(i) = step.sicken.filter(|&i| i < count) {
                sick.insert(world.instances[i].id.clone());
            }
            unregistered.clear();
            if let Some(i) = step.unregister.filter(|&i| i < count) {
                unregistered.insert(world.instances[i].id.clone());
            }
            views.send_replace(Arc::new(view(&world, step.load, &unregistered, &sick)));
            world.launched.clear();
            world.terminated.clear();
            world.deregistered.clear();
        }

        let record = controller.evaluate_once().await;
        let live = record
            .decision
            .clone()
            .expect("the scripted cloud always lists");
        let (observation, now) = controller.last_observation().cloned().expect("it decided");
        let mut replayed = policy::evaluate(&observation, &config, &mut state, now);
        let world = scripted.world();
        let refused = replayed.launch > 0 && step.refuse;
        if refused {
            let reason = CloudError::new(CloudErrorKind::Other, REFUSAL).to_string();
            replayed.launch_backoff = policy::launch_refused(&config, &mut state, now, &reason);
        }
        assert_eq!(
            live,
            replayed,
            "evaluation {n}: {}",
            record.outcome.join("; ")
        );

        // It did what it decided, and nothing else.
        let launched = if refused { 0 } else { live.launch as usize };
        assert_eq!(world.launched.len(), launched, "evaluation {n}: launches");
        let decided: BTreeSet<String> = live
            .scale_in
            .iter()
            .cloned()
            .chain(live.replace.iter().map(|r| r.instance_id.clone()))
            .collect();
        for id in &decided {
            assert!(
                world.terminated.contains(id) || world.deregistered.contains(id),
                "evaluation {n}: {id} was to be removed: {}",
                record.outcome.join("; ")
            );
        }
        for id in world.deregistered.iter().chain(&world.terminated) {
            assert!(
                decided.contains(id) || removing.contains(id),
                "evaluation {n}: {id} removed without a decision: {}",
                record.outcome.join("; ")
            );
        }
        removing.extend(decided);
        // Never more instances running than the account allows, draining ones included.
        let running = world
            .instances
            .iter()
            .filter(|i| i.state != InstanceState::Stopped)
            .count() as u32;
        assert!(
            running <= config.instance_limit,
            "evaluation {n}: {running} running over the limit {}: {}",
            config.instance_limit,
            record.outcome.join("; ")
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_live_controller_decides_and_does_what_the_simulator_s_step_decides(
        steps in prop::collection::vec(step(), 60),
        termination_policy in prop_oneof![
            Just(TerminationPolicy::Newest),
            Just(TerminationPolicy::Oldest),
            Just(TerminationPolicy::LeastLoaded),
        ],
        instance_limit in 5u32..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(replay(steps, termination_policy, instance_limit));
    }
}
