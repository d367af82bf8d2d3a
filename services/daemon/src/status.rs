//! The `autoscaler.v1.Status` gRPC service: the provider's instances joined with the monitor's
//! view, the controller's recent decisions, and the activity history the store keeps.

use std::sync::Arc;
use std::time::SystemTime;

use autoscaler_policy::time::unix_ms;

use autoscaler_controller::balancer::TargetState;
use autoscaler_controller::cloud::InstanceState;
use autoscaler_controller::status::{ControllerStatus, DecisionRecord};
use autoscaler_policy::Health;
use autoscaler_policy::fleet::{InstanceView, Metrics};
use autoscaler_policy::forecast::ForecastView;
use autoscaler_policy::schedule::Scheduled;
use autoscaler_proto::v1;
use autoscaler_proto::v1::status_server::Status;
use tonic::{Request, Response};

use autoscaler_monitor::registry::Registry;

#[derive(Clone, Debug)]
pub struct StatusService {
    pub group: String,
    pub min_instances: u32,
    pub max_instances: u32,
    pub registry: Arc<Registry>,
    /// `None` when the monitor runs without a controller.
    pub controller: Option<ControllerStatus>,
    /// The leader's term, when the daemon keeps its state in a store.
    pub term: Option<crate::activity::Term>,
}

/// A decision record on the wire, naming the term (`epoch`, `leader`) that made it.
pub fn record_of(record: &DecisionRecord, epoch: u64, leader: &str) -> v1::DecisionRecord {
    let decision = record.decision.as_ref();
    v1::DecisionRecord {
        epoch,
        leader: leader.to_string(),
        sequence: record.sequence,
        at_unix_ms: unix_ms(record.at),
        summary: record.summary(),
        current: decision.map_or(0, |d| d.current),
        recommendation: decision.map_or(0, |d| d.recommendation),
        desired: decision.map_or(0, |d| d.desired),
        rules: decision
            .map(|d| {
                d.rules
                    .iter()
                    .map(|r| r.rule.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        outcome: record.outcome.clone(),
        launched: record.launched.clone(),
        terminated: record.terminated.clone(),
        replaced: decision
            .map(|d| {
                d.replace
                    .iter()
                    .map(|r| format!("{}: {}", r.instance_id, r.reason))
                    .collect()
            })
            .unwrap_or_default(),
        repeated: record.repeated,
        average_load_percent: decision.and_then(|d| d.observed.average_load),
        shadow_disagreement: record
            .shadow
            .as_ref()
            .filter(|v| v.differs)
            .map(|v| v.summary.clone())
            .unwrap_or_default(),
        in_service: decision.map_or(0, |d| d.observed.in_service),
        warming: decision.map_or(0, |d| d.observed.warming),
        without_metric: decision.map_or(0, |d| d.observed.without_metrics),
        unhealthy: decision.map_or(0, |d| d.observed.unhealthy),
        missing: decision
            .map(|d| d.missing.iter().map(|m| m.describe()).collect())
            .unwrap_or_default(),
    }
}

/// What the monitor knows of an instance, on the wire: the one place its view (health, the
/// agent's metrics, their recent loads) becomes an `InstanceStatus`; the provider's side is
/// laid over it.
fn as_seen(seen: &InstanceView) -> v1::InstanceStatus {
    let Metrics {
        load,
        requests_per_second,
        hook,
    } = &seen.metrics;
    v1::InstanceStatus {
        lifecycle_state: seen.metrics.lifecycle().as_str().to_string(),
        hook_summary: hook.as_ref().map(|h| h.summary.clone()).unwrap_or_default(),
        hook_output_tail: hook
            .as_ref()
            .map(|h| h.output_tail.clone())
            .unwrap_or_default(),
        instance_id: seen.instance_id.clone(),
        health: wire_health(seen.health).into(),
        load_percent: *load,
        requests_per_second: *requests_per_second,
        recent_loads: seen.recent_loads.iter().copied().collect(),
        address: seen.address.clone(),
        consecutive_misses: seen.consecutive_misses,
        last_error: seen.last_error.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// What the schedules set, on the wire.
fn wire_schedule(scheduled: Scheduled) -> v1::Schedule {
    v1::Schedule {
        min_instances: scheduled.min_instances,
        max_instances: scheduled.max_instances,
        active: scheduled
            .active
            .into_iter()
            .map(|w| v1::ScheduledWindow {
                name: w.name,
                min_instances: w.min_instances,
                max_instances: w.max_instances,
                starts_at_ms: 0,
                ends_at_ms: w.ends_at_ms,
            })
            .collect(),
        next: scheduled.next.map(|w| v1::ScheduledWindow {
            name: w.name,
            min_instances: w.min_instances,
            max_instances: None,
            starts_at_ms: w.starts_at_ms,
            ends_at_ms: 0,
        }),
        change: scheduled.change.unwrap_or_default(),
    }
}

/// What the forecaster says, on the wire.
fn wire_forecast(view: ForecastView) -> v1::Forecast {
    v1::Forecast {
        mode: view.mode.as_str().to_string(),
        acting: view.acting,
        history_hours: view.history_hours,
        made_at_ms: view.made_at_ms.unwrap_or(0),
        demand: view.demand,
        lead_secs: u32::try_from(view.lead_secs).unwrap_or(u32::MAX),
        lead_samples: view.lead_samples,
        floor: view.floor,
        error_percent: view.error_percent,
        under_percent: view.under_percent,
        baseline_error_percent: view.baseline_error_percent,
        fallen_back: view.fallen_back,
        target_percent: view.target_percent,
        next: view
            .next
            .into_iter()
            .map(|(at_ms, capacities)| v1::ForecastPoint { at_ms, capacities })
            .collect(),
    }
}

/// An instance the monitor has not registered.
fn unregistered() -> v1::InstanceStatus {
    v1::InstanceStatus {
        health: v1::InstanceHealth::Unregistered.into(),
        ..Default::default()
    }
}

fn wire_state(state: InstanceState) -> v1::InstanceState {
    match state {
        InstanceState::Pending => v1::InstanceState::Pending,
        InstanceState::Running => v1::InstanceState::Running,
        InstanceState::Stopped => v1::InstanceState::Stopped,
    }
}

fn wire_health(health: Health) -> v1::InstanceHealth {
    match health {
        Health::Unknown => v1::InstanceHealth::Unknown,
        Health::Healthy => v1::InstanceHealth::Healthy,
        Health::Suspect => v1::InstanceHealth::Suspect,
        Health::Unhealthy => v1::InstanceHealth::Unhealthy,
    }
}

fn wire_target(state: TargetState) -> v1::TargetState {
    match state {
        TargetState::Initial => v1::TargetState::Initial,
        TargetState::Healthy => v1::TargetState::Healthy,
        TargetState::Unhealthy => v1::TargetState::Unhealthy,
        TargetState::Draining => v1::TargetState::Draining,
        TargetState::Unused => v1::TargetState::Unused,
    }
}

impl StatusService {
    /// The group as the provider lists it joined with the monitor's view, and the decisions
    /// with a sequence above `decisions_after`. The gRPC service and the dashboard serve this.
    pub fn report(&self, decisions_after: u64) -> v1::GetStatusResponse {
        let view = self.registry.snapshot();
        let listed = self
            .controller
            .as_ref()
            .map(ControllerStatus::instances)
            .unwrap_or_default();

        let now = SystemTime::now();
        // Read once for the report, not once an instance.
        let protected = self
            .controller
            .as_ref()
            .map(ControllerStatus::protected)
            .unwrap_or_default();
        let mut instances: Vec<v1::InstanceStatus> = listed
            .iter()
            .map(|cloud| {
                let seen = view.get(&cloud.instance_id);
                let target = self
                    .controller
                    .as_ref()
                    .and_then(|c| c.target(&cloud.instance_id));
                v1::InstanceStatus {
                    instance_id: cloud.instance_id.clone(),
                    state: wire_state(cloud.state).into(),
                    age_ms: now
                        .duration_since(cloud.launched_at)
                        .map_or(0, |d| d.as_millis() as u64),
                    zone: cloud.zone.clone(),
                    state_reason: cloud.state_reason.clone().unwrap_or_default(),
                    target_state: target
                        .as_ref()
                        .map_or(v1::TargetState::Unspecified, |t| wire_target(t.state))
                        .into(),
                    requests_in_flight: target.as_ref().and_then(|t| t.in_flight),
                    target_reason: target
                        .as_ref()
                        .and_then(|t| t.reason.clone())
                        .unwrap_or_default(),
                    app_address: cloud.app_address.clone().unwrap_or_default(),
                    version: cloud.version.clone().unwrap_or_default(),
                    protected_from_scale_in: protected.contains(&cloud.instance_id),
                    ..seen.map_or_else(unregistered, as_seen)
                }
            })
            .collect();
        for seen in &view.instances {
            if !listed.iter().any(|c| c.instance_id == seen.instance_id) {
                instances.push(v1::InstanceStatus {
                    instance_id: seen.instance_id.clone(),
                    state: v1::InstanceState::Unlisted.into(),
                    ..as_seen(seen)
                });
            }
        }
        // The bounds an operator set at run time, over the config's.
        let bounds = self
            .controller
            .as_ref()
            .and_then(ControllerStatus::bounds)
            .unwrap_or((self.min_instances, self.max_instances));
        v1::GetStatusResponse {
            group: self.group.clone(),
            monitor_id: self.registry.config().monitor_id.clone(),
            min_instances: bounds.0,
            max_instances: bounds.1,
            desired_instances: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::desired)
                .unwrap_or(0),
            instances,
            decisions: self.decisions(decisions_after),
            launch_failures: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::launch_backoff)
                .map(|backoff| v1::LaunchFailures {
                    consecutive: backoff.consecutive_failures,
                    next_attempt_in_ms: backoff.retry_in.as_millis() as u64,
                    last_reason: backoff.last_reason,
                }),
            schedule: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::scheduled)
                .map(wire_schedule),
            forecast: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::forecast)
                .map(wire_forecast),
            refresh: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::refresh)
                .map(|r| crate::rollout::wire_refresh(&r)),
            operator_policy_toml: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::operator_policy)
                .unwrap_or_default(),
            launch_version: self
                .controller
                .as_ref()
                .and_then(ControllerStatus::launch_version)
                .unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl Status for StatusService {
    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, tonic::Status> {
        autoscaler_proto::tls::require_caller(&request, autoscaler_proto::tls::Role::Operator)?;
        Ok(Response::new(
            self.report(request.into_inner().decisions_after),
        ))
    }

    async fn get_activity(
        &self,
        request: Request<v1::GetActivityRequest>,
    ) -> Result<Response<v1::GetActivityResponse>, tonic::Status> {
        autoscaler_proto::tls::require_caller(&request, autoscaler_proto::tls::Role::Operator)?;
        let request = request.into_inner();
        let records = self
            .activity(request.since_unix_ms, activity_limit(request.limit))
            .await
            .map_err(tonic::Status::failed_precondition)?;
        Ok(Response::new(v1::GetActivityResponse { records }))
    }
}

impl StatusService {
    /// The activity history since `since_ms`, oldest first, at most the newest `limit`.
    pub async fn activity(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<v1::DecisionRecord>, String> {
        let Some(term) = &self.term else {
            return Err("this daemon keeps no activity history (it has no store)".to_string());
        };
        let stored = read_activity(&*term.store, since_ms, limit).await?;
        Ok(newest(
            stored,
            &self.decisions(0),
            term.epoch,
            since_ms,
            limit,
        ))
    }

    /// The controller's decisions with a sequence above `after`, on the wire, naming this term.
    fn decisions(&self, after: u64) -> Vec<v1::DecisionRecord> {
        let (epoch, leader) = self
            .term
            .as_ref()
            .map_or((0, ""), |t| (t.epoch, t.leader.as_str()));
        self.controller
            .as_ref()
            .map(|c| c.decisions_after(after))
            .unwrap_or_default()
            .iter()
            .map(|r| record_of(r, epoch, leader))
            .collect()
    }
}

/// One history, the newest: the records as the store has them, with this term's records as the
/// controller keeps them now in their place (the store has a folded record as it was last
/// written, up to ten seconds ago) and those not yet written after them. Every view of the
/// history (GetActivity, the dashboard, `/api/status`) reads this, and agrees with GetStatus.
pub fn newest(
    mut stored: Vec<v1::DecisionRecord>,
    live: &[v1::DecisionRecord],
    epoch: u64,
    since_ms: i64,
    limit: usize,
) -> Vec<v1::DecisionRecord> {
    for record in live.iter().filter(|r| r.epoch == epoch) {
        let kept = stored
            .iter()
            .position(|s| s.epoch == epoch && s.sequence == record.sequence);
        let after_all = stored
            .last()
            .is_none_or(|last| (last.epoch, last.sequence) < (epoch, record.sequence));
        match kept {
            Some(at) => stored[at] = record.clone(),
            None if after_all && record.at_unix_ms >= since_ms => stored.push(record.clone()),
            None => {}
        }
    }
    let extra = stored.len().saturating_sub(limit);
    stored.drain(..extra);
    stored
}

/// The activity history `store` keeps since `since_ms`, oldest first, at most the newest
/// `limit` (an unreadable record is skipped, and logged).
pub async fn read_activity(
    store: &dyn autoscaler_store::Store,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<v1::DecisionRecord>, String> {
    let stored = store
        .activity(since_ms, limit)
        .await
        .map_err(|error| error.to_string())?;
    Ok(stored
        .iter()
        .filter_map(|activity| {
            use prost::Message;
            v1::DecisionRecord::decode(activity.body.as_slice())
                .inspect_err(|error| {
                    tracing::warn!(%error, at_ms = activity.at_ms, "an unreadable record in the activity history; skipped")
                })
                .ok()
        })
        .collect())
}

/// How many records GetActivity returns: `limit`, 1,000 when 0, at most 10,000.
pub fn activity_limit(limit: u32) -> usize {
    match limit {
        0 => 1_000,
        n => n.min(10_000) as usize,
    }
}

/// One second of the fleet's history, for the dashboard's charts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub at_unix_ms: i64,
    /// Instances the provider lists.
    pub observed: u32,
    pub desired: u32,
    pub healthy: u32,
    /// Each reporting instance's load, percent.
    pub loads: Vec<(String, f64)>,
}

/// The last `capacity` samples, oldest first.
#[derive(Debug)]
pub struct History {
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            samples: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Samples `report`. The history starts once the controller has decided (its desired size is
    /// 0 until then) and the provider lists an instance: the seconds of a first launch would
    /// draw the fleet at 0, below its minimum, as if a bound were broken.
    pub fn record(&self, report: &v1::GetStatusResponse) {
        let listed = report.instances.iter().filter(|i| i.listed());
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.is_empty() && (report.desired_instances == 0 || listed.clone().count() == 0) {
            return;
        }
        let sample = Sample {
            at_unix_ms: unix_ms(SystemTime::now()),
            observed: listed.clone().count() as u32,
            desired: report.desired_instances,
            healthy: listed.clone().filter(|i| i.is_healthy()).count() as u32,
            loads: report
                .instances
                .iter()
                .filter_map(|i| i.load_percent.map(|load| (i.instance_id.clone(), load)))
                .collect(),
        };
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_starts_at_the_first_decision() {
        let history = History::new(3);
        let mut report = v1::GetStatusResponse {
            min_instances: 2,
            max_instances: 5,
            ..Default::default()
        };
        history.record(&report);
        assert!(history.samples().is_empty(), "no sample before a decision");
        report.desired_instances = 2;
        history.record(&report);
        assert!(
            history.samples().is_empty(),
            "no sample before an instance is listed"
        );
        report.instances.push(v1::InstanceStatus {
            instance_id: "local-0001".into(),
            state: v1::InstanceState::Running as i32,
            ..Default::default()
        });
        for _ in 0..3 {
            history.record(&report);
        }
        report.instances.clear();
        history.record(&report);
        let samples = history.samples();
        assert_eq!(samples.len(), 3, "at most its capacity");
        assert_eq!(samples[1].observed, 1);
        assert_eq!(
            samples[2].observed, 0,
            "a fleet at 0 after its start is drawn as it is"
        );
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn record(epoch: u64, sequence: u64, at: i64, repeated: u32) -> v1::DecisionRecord {
        v1::DecisionRecord {
            epoch,
            sequence,
            at_unix_ms: at,
            repeated,
            ..v1::DecisionRecord::default()
        }
    }

    /// Outside test, finding 10: the store holds a folded record as it was last written (up
    /// to 10 s ago); the history every view serves has it as the controller keeps it now, and
    /// the records not written yet after it. Before, `/api/status` and GetStatus disagreed.
    #[test]
    fn the_history_served_is_the_newest() {
        let stored = vec![
            record(1, 7, 1_000, 0),
            record(2, 1, 2_000, 0),
            record(2, 2, 3_000, 3),
        ];
        let live = [record(2, 2, 12_000, 9), record(2, 3, 13_000, 0)];
        let served = newest(stored.clone(), &live, 2, 0, 100);
        let key = |r: &v1::DecisionRecord| (r.epoch, r.sequence, r.at_unix_ms, r.repeated);
        assert_eq!(
            served.iter().map(key).collect::<Vec<_>>(),
            [
                (1, 7, 1_000, 0),
                (2, 1, 2_000, 0),
                (2, 2, 12_000, 9),
                (2, 3, 13_000, 0)
            ]
        );
        // The newest `limit`, and a record of another term is never replaced.
        let served = newest(stored, &[record(1, 7, 9_000, 5)], 2, 0, 2);
        assert_eq!(
            served.iter().map(key).collect::<Vec<_>>(),
            [(2, 1, 2_000, 0), (2, 2, 3_000, 3)]
        );
    }
}
