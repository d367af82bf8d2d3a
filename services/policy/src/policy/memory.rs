//! The policy's memory: between evaluations (`PolicyState`: how long a threshold has been
//! passed, the last scalings, the failed launches in a row), and as it outlives a controller
//! (`PolicyMemory`, in wall-clock time, kept by the daemon's store); and the launch backoff it
//! keeps, as EC2 Auto Scaling backs off failing launches.

use std::time::Duration;

use super::{Observation, Replacement, Rule, RuleApplied};
use crate::config::ControllerConfig;
use crate::forecast::Predictive;
use crate::instance::{Health, InstanceState};
use crate::kinds::Sustain;
use crate::refresh::{Refresh, RefreshError, RefreshPreferences};
use crate::schedule::ScheduleCache;

/// The policy's memory between evaluations. Times are the evaluation clock's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyState {
    /// How long the average has been past a threshold (the step kind's `for_secs`).
    pub(crate) sustain: Sustain,
    pub(crate) last_scale_out: Option<Duration>,
    pub(crate) last_scale_in: Option<Duration>,
    pub(crate) launches: LaunchFailures,
    /// The schedules' bounds until they change (a cache, not memory).
    pub(crate) schedule: ScheduleCache,
    /// The forecaster: the demand it recorded, the launches it timed, its forecast.
    pub(crate) predictive: Predictive,
    /// The instance refresh running, or the last one.
    pub(crate) refresh: Option<Refresh>,
    /// A desired capacity an operator set, for the next evaluation.
    pub(crate) desired_override: Option<u32>,
}

/// The policy's memory as it outlives a controller (a restart, a failover to another daemon):
/// its times in milliseconds since the Unix epoch, so that another process, with another start,
/// can take them up (`PolicyState::remember`, `PolicyState::recall`). Cooldowns and the launch
/// backoff then hold across a failover.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PolicyMemory {
    pub above_since_ms: Option<i64>,
    pub below_since_ms: Option<i64>,
    pub last_scale_out_ms: Option<i64>,
    pub last_scale_in_ms: Option<i64>,
    pub launch_failures: u32,
    pub last_launch_failure_ms: Option<i64>,
    pub next_launch_ms: Option<i64>,
    pub launch_failure_reason: String,
    pub counted_failures: Vec<String>,
    /// The recent launches' times to service, ms (the forecaster's lead time).
    pub lead_times_ms: Vec<u64>,
    /// The instance refresh running, or the last one (its times are wall-clock already).
    pub refresh: Option<Refresh>,
}

impl PolicyState {
    /// The forecaster: the reconciler saves what it recorded and gives it what the store kept.
    pub fn forecaster(&mut self) -> &mut Predictive {
        &mut self.predictive
    }

    /// The memory in wall-clock time: `now` on the evaluation clock is `now_ms` on the wall.
    pub fn remember(&self, now: Duration, now_ms: i64) -> PolicyMemory {
        let wall = |at: Duration| {
            now_ms - i64::try_from(now.saturating_sub(at).as_millis()).unwrap_or(i64::MAX)
        };
        let launches = &self.launches;
        let failing = launches.consecutive > 0;
        PolicyMemory {
            above_since_ms: self.sustain.above_since.map(wall),
            below_since_ms: self.sustain.below_since.map(wall),
            last_scale_out_ms: self.last_scale_out.map(wall),
            last_scale_in_ms: self.last_scale_in.map(wall),
            launch_failures: launches.consecutive,
            last_launch_failure_ms: failing.then(|| wall(launches.last_at)),
            next_launch_ms: failing.then(|| {
                now_ms
                    + i64::try_from(launches.retry_at.saturating_sub(now).as_millis())
                        .unwrap_or(i64::MAX)
            }),
            launch_failure_reason: launches.reason.clone(),
            counted_failures: launches.counted.clone(),
            lead_times_ms: self.predictive.leads(),
            refresh: self.refresh.clone(),
        }
    }

    /// The state a controller whose evaluation clock reads `now` at `now_ms` starts from. A time
    /// before that clock's start is taken as its start: a cooldown then lasts at least as long
    /// as it should, never less.
    pub fn recall(memory: &PolicyMemory, now: Duration, now_ms: i64) -> PolicyState {
        let clock = |at_ms: i64| {
            let ago =
                Duration::from_millis(u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0));
            now.saturating_sub(ago)
        };
        let mut launches = LaunchFailures::default();
        if memory.launch_failures > 0 {
            launches.consecutive = memory.launch_failures;
            launches.last_at = memory.last_launch_failure_ms.map_or(now, clock);
            launches.retry_at = memory.next_launch_ms.map_or(now, |at| {
                now + Duration::from_millis(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0))
            });
            launches.reason = memory.launch_failure_reason.clone();
            launches.counted = memory.counted_failures.clone();
        }
        let mut predictive = Predictive::default();
        predictive.recall_leads(&memory.lead_times_ms);
        PolicyState {
            predictive,
            sustain: Sustain {
                above_since: memory.above_since_ms.map(clock),
                below_since: memory.below_since_ms.map(clock),
            },
            last_scale_out: memory.last_scale_out_ms.map(clock),
            last_scale_in: memory.last_scale_in_ms.map(clock),
            launches,
            schedule: ScheduleCache::default(),
            refresh: memory.refresh.clone(),
            desired_override: None,
        }
    }

    /// Sets the desired capacity at the next evaluation (EC2's SetDesiredCapacity): within the
    /// bounds, it starts the cooldowns, and the policy goes on from there.
    pub fn set_desired(&mut self, desired: u32) {
        self.desired_override = Some(desired);
    }

    /// The instance refresh running, or the last one.
    pub fn refresh(&self) -> Option<&Refresh> {
        self.refresh.as_ref()
    }

    /// Starts an instance refresh of the group to `target` (from `previous`, what it launched
    /// before) at `now_ms`; refused while one runs or when the preferences do not validate.
    pub fn start_refresh(
        &mut self,
        target: String,
        previous: Option<String>,
        preferences: RefreshPreferences,
        now_ms: i64,
    ) -> Result<&Refresh, RefreshError> {
        if let Some(running) = self.refresh.as_ref().filter(|r| r.status.is_active()) {
            return Err(RefreshError::AlreadyActive(
                running.id,
                running.status.as_str(),
            ));
        }
        let id = self.refresh.as_ref().map_or(1, |r| r.id + 1);
        let refresh = Refresh::start(id, target, previous, preferences, now_ms)?;
        Ok(self.refresh.insert(refresh))
    }

    /// Cancels the running refresh; the instances stay as they are.
    pub fn cancel_refresh(&mut self, now_ms: i64) -> Result<&Refresh, RefreshError> {
        let refresh = self.refresh.as_mut().ok_or(RefreshError::NoneActive)?;
        refresh.cancel(now_ms, "cancelled by an operator")?;
        Ok(refresh)
    }

    /// Rolls the running refresh back to the version the group launched before it.
    pub fn roll_back_refresh(&mut self, now_ms: i64) -> Result<&Refresh, RefreshError> {
        let refresh = self.refresh.as_mut().ok_or(RefreshError::NoneActive)?;
        refresh.roll_back(now_ms, "rollback asked by an operator".to_string())?;
        Ok(refresh)
    }
}

/// Failed launches in a row, and when the next launch may be tried.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LaunchFailures {
    consecutive: u32,
    last_at: Duration,
    retry_at: Duration,
    reason: String,
    /// Instances already counted as failed, while the provider still lists them.
    counted: Vec<String>,
}

impl PolicyState {
    /// Records a launch the provider refused (after its own retries) at `now`.
    pub fn launch_failed(&mut self, config: &ControllerConfig, now: Duration, reason: &str) {
        self.launches.fail(config, now, reason.to_string());
    }

    /// Where the launches stand at `now`, while they are failing.
    pub fn launch_backoff(&self, now: Duration) -> Option<LaunchBackoff> {
        let launches = &self.launches;
        (launches.consecutive > 0).then(|| LaunchBackoff {
            consecutive_failures: launches.consecutive,
            retry_in: launches.retry_at.saturating_sub(now),
            last_reason: launches.reason.clone(),
        })
    }
}

impl LaunchFailures {
    fn fail(&mut self, config: &ControllerConfig, now: Duration, reason: String) {
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_at = now;
        self.retry_at = now + config.launch_backoff(self.consecutive);
        self.reason = reason;
    }
}

/// Launches are failing: the controller waits before the next one, and then launches one
/// instance at a time until one reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchBackoff {
    /// Failed launches in a row since the last one that reported.
    pub consecutive_failures: u32,
    /// Until the next launch may be tried (zero: it may be tried now).
    pub retry_in: Duration,
    /// The instance that failed last and why, or the provider's refusal.
    pub last_reason: String,
}

/// Counts the failed launches this observation shows, and forgets them once a launch made
/// after the last failure has reported.
pub(crate) fn track_launches(
    observation: &Observation,
    replace: &[Replacement],
    config: &ControllerConfig,
    state: &mut PolicyState,
    now: Duration,
) {
    let launches = &mut state.launches;
    if launches.consecutive > 0 {
        let since_failure = now.saturating_sub(launches.last_at);
        let proven = observation
            .instances
            .iter()
            .any(|i| i.has_reported && i.health == Some(Health::Healthy) && i.age < since_failure);
        if proven {
            *launches = LaunchFailures::default();
        }
    }
    if !launches.counted.is_empty() {
        launches
            .counted
            .retain(|id| observation.instances.iter().any(|i| &i.instance_id == id));
    }
    let failed: Vec<&Replacement> = replace
        .iter()
        .filter(|r| r.failed_launch && !launches.counted.contains(&r.instance_id))
        .collect();
    if let Some(last) = failed.last() {
        launches
            .counted
            .extend(failed.iter().map(|r| r.instance_id.clone()));
        let reason = format!("{}: {}", last.instance_id, last.reason);
        launches.fail(config, now, reason);
    }
}

/// The launches to make of the `wanted` ones: all of them while launches succeed; while they
/// fail, none before the backoff ends, then one at a time, and none while that one has yet to
/// report.
pub(crate) fn hold_launches(
    observation: &Observation,
    wanted: u32,
    state: &PolicyState,
    now: Duration,
    rules: &mut Vec<RuleApplied>,
) -> u32 {
    let launches = &state.launches;
    if wanted == 0 || launches.consecutive == 0 {
        return wanted;
    }
    let since_failure = now.saturating_sub(launches.last_at);
    let probing = observation.instances.iter().find(|i| {
        !i.has_reported && i.age < since_failure && i.cloud_state != InstanceState::Stopped
    });
    let (launch, why) = if now < launches.retry_at {
        (
            0,
            format!(
                "next attempt in {}s",
                (launches.retry_at - now).as_secs_f64().ceil()
            ),
        )
    } else if let Some(probe) = probing {
        (0, format!("waiting for {} to report", probe.instance_id))
    } else {
        (1, "one instance at a time until one reports".to_string())
    };
    rules.push(RuleApplied {
        rule: Rule::LaunchBackoff,
        from: wanted,
        to: launch,
        detail: format!(
            "launches failing ({} in a row; last: {}): {why}",
            launches.consecutive, launches.reason
        ),
    });
    launch
}
