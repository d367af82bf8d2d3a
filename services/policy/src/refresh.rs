//! Instance refresh, pure: replacing the group's instances with ones launched on another
//! version of its launch specification, as EC2 Auto Scaling's instance refresh does, through the
//! group's own machinery (a replacement drains and terminates an old instance; the sizing
//! launches on the refresh's version). Its preferences and defaults are EC2's: keep at least
//! `min_healthy_percentage` of the desired capacity in service, run at most
//! `max_healthy_percentage` of it (above 100 the group launches before it terminates), count a
//! new instance only once warmed up, pause at checkpoints, bake at the end, and roll back by
//! itself when new instances fail or the refresh stops making progress. `policy::evaluate` calls
//! `Refresh::step`; the state is part of the policy's memory, so a new leader resumes it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::policy::{ObservedInstance, Replacement};

/// How a refresh goes (EC2's `RefreshPreferences`, with its defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshPreferences {
    /// The share of the desired capacity kept in service throughout, percent (EC2: 90).
    pub min_healthy_percentage: u32,
    /// The most instances running at once, as a share of the desired capacity, percent (EC2:
    /// 100: terminate, then launch; 150: launch up to half again, then terminate).
    pub max_healthy_percentage: u32,
    /// How long after its launch a new instance in service counts as healthy capacity (EC2's
    /// instance warm-up); `None`: the controller's `warmup_secs`.
    pub instance_warmup_secs: Option<u64>,
    /// Leave the instances already on the refresh's version (EC2's `SkipMatching`; default
    /// false: every instance launched before the refresh is replaced).
    pub skip_matching: bool,
    /// Percentages of the instances replaced at which the refresh pauses (increasing, 1-100).
    pub checkpoints: Vec<u32>,
    /// How long a checkpoint pauses, seconds (EC2: 3600).
    pub checkpoint_delay_secs: u64,
    /// How long the refresh watches the new instances once all are in service before it ends
    /// successfully, seconds (EC2's bake time; default 0).
    pub bake_time_secs: u64,
    /// Roll back by itself when it fails (EC2's `AutoRollback`; here default true: a group that
    /// serves traffic is better back on the version that worked than stuck half-way).
    pub auto_rollback: bool,
    /// How many new-version instances may fail (die at start, never register, fail the
    /// monitor's or the balancer's health checks) before the refresh fails. One can be bad luck.
    pub failures_to_roll_back: u32,
    /// The refresh fails when no instance is replaced for this long, seconds.
    pub progress_timeout_secs: u64,
    /// Replace scale-in-protected instances too (EC2 leaves them unless told).
    pub include_protected: bool,
}

impl Default for RefreshPreferences {
    fn default() -> RefreshPreferences {
        RefreshPreferences {
            min_healthy_percentage: 90,
            max_healthy_percentage: 100,
            instance_warmup_secs: None,
            skip_matching: false,
            checkpoints: Vec::new(),
            checkpoint_delay_secs: 3600,
            bake_time_secs: 0,
            auto_rollback: true,
            failures_to_roll_back: 2,
            progress_timeout_secs: 900,
            include_protected: false,
        }
    }
}

impl RefreshPreferences {
    /// Refuses what EC2 refuses, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem: String| Err(ConfigError::new(field, problem));
        if self.min_healthy_percentage > 100 {
            return fail(
                "refresh.min_healthy_percentage",
                format!("is {}; it must be 0-100", self.min_healthy_percentage),
            );
        }
        if !(100..=200).contains(&self.max_healthy_percentage) {
            return fail(
                "refresh.max_healthy_percentage",
                format!("is {}; it must be 100-200", self.max_healthy_percentage),
            );
        }
        if self.max_healthy_percentage - self.min_healthy_percentage > 100 {
            return fail(
                "refresh.max_healthy_percentage",
                format!(
                    "is {} and min_healthy_percentage {}: they may be at most 100 apart",
                    self.max_healthy_percentage, self.min_healthy_percentage
                ),
            );
        }
        let mut last = 0;
        for &checkpoint in &self.checkpoints {
            if checkpoint <= last || checkpoint > 100 {
                return fail(
                    "refresh.checkpoints",
                    format!(
                        "{:?}: each must be 1-100 and above the one before",
                        self.checkpoints
                    ),
                );
            }
            last = checkpoint;
        }
        if self.failures_to_roll_back == 0 {
            return fail(
                "refresh.failures_to_roll_back",
                "is 0; it must be at least 1".to_string(),
            );
        }
        if self.progress_timeout_secs < 60 {
            return fail(
                "refresh.progress_timeout_secs",
                format!(
                    "is {}; it must be at least 60 (an instance takes that long to boot)",
                    self.progress_timeout_secs
                ),
            );
        }
        Ok(())
    }
}

/// Where a refresh stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshStatus {
    InProgress,
    /// Paused at a checkpoint.
    Paused,
    /// Going back to the previous version (asked, or after a failure).
    RollingBack,
    Successful,
    Cancelled,
    /// Rolled back to the previous version.
    RolledBack,
    /// Failed and could not roll back (no previous version, auto-rollback off, or the rollback
    /// failed too).
    Failed,
}

impl RefreshStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshStatus::InProgress => "in-progress",
            RefreshStatus::Paused => "paused",
            RefreshStatus::RollingBack => "rolling-back",
            RefreshStatus::Successful => "successful",
            RefreshStatus::Cancelled => "cancelled",
            RefreshStatus::RolledBack => "rolled-back",
            RefreshStatus::Failed => "failed",
        }
    }

    /// Still replacing instances (or paused between them).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RefreshStatus::InProgress | RefreshStatus::Paused | RefreshStatus::RollingBack
        )
    }
}

/// A refresh refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefreshError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("instance refresh {0} is {1}: cancel it or wait for it to end")]
    AlreadyActive(u64, &'static str),
    #[error("no instance refresh is in progress")]
    NoneActive,
    #[error("instance refresh {0} has no previous launch specification version to roll back to")]
    NoPrevious(u64),
}

/// One instance refresh, in the policy's memory. Times are ms since the Unix epoch on the
/// policy's clock (wall-clock time live, the trace's clock in a replay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refresh {
    /// The refresh's number in the group (1, 2, ...).
    pub id: u64,
    /// The launch specification version the instances are being moved to.
    pub target: String,
    /// The version the group launched before: what a rollback goes back to.
    pub previous: Option<String>,
    pub preferences: RefreshPreferences,
    pub status: RefreshStatus,
    /// Why it is where it is: the checkpoint, what failed, who cancelled.
    pub reason: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// When an instance was last replaced or came into service on the target.
    pub last_progress_ms: i64,
    /// The target-version instances warmed up and in service at the last evaluation.
    pub in_service_on_target: u32,
    /// Instances still to replace at the last evaluation.
    pub instances_left: u32,
    pub percent_complete: u32,
    /// New-version instances that failed.
    pub failed: BTreeSet<String>,
    /// Old instances this refresh replaced.
    pub replaced: u32,
    /// The checkpoints passed, and until when the current one pauses.
    pub checkpoints_passed: u32,
    pub paused_until_ms: Option<i64>,
    /// Since when every instance has been on the target (the bake time runs from there).
    pub baking_since_ms: Option<i64>,
    /// The desired capacity at the last evaluation, and the launches allowed above it then:
    /// the instances above it are the refresh's, not part of the fleet being sized.
    #[serde(default)]
    pub last_desired: u32,
    #[serde(default)]
    pub surge: u32,
}

/// What a refresh asks of one evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RefreshStep {
    /// Old instances to replace now.
    pub replace: Vec<Replacement>,
    /// Launches allowed above the desired capacity (`max_healthy_percentage` above 100).
    pub extra: u32,
}

/// An instance's part in the evaluation, as the refresh needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    InService,
    Warming,
    WithoutMetric,
    /// Replaced for its health this evaluation.
    Replaced,
}

impl Refresh {
    /// A refresh of the group to `target`, started at `now_ms`.
    pub fn start(
        id: u64,
        target: String,
        previous: Option<String>,
        preferences: RefreshPreferences,
        now_ms: i64,
    ) -> Result<Refresh, RefreshError> {
        preferences.validate()?;
        Ok(Refresh {
            id,
            target,
            previous,
            preferences,
            status: RefreshStatus::InProgress,
            reason: "started".to_string(),
            started_ms: now_ms,
            ended_ms: None,
            last_progress_ms: now_ms,
            in_service_on_target: 0,
            instances_left: 0,
            percent_complete: 0,
            failed: BTreeSet::new(),
            replaced: 0,
            checkpoints_passed: 0,
            paused_until_ms: None,
            baking_since_ms: None,
            last_desired: 0,
            surge: 0,
        })
    }

    /// Stops replacing; the instances stay as they are (EC2's CancelInstanceRefresh).
    pub fn cancel(&mut self, now_ms: i64, why: &str) -> Result<(), RefreshError> {
        if !self.status.is_active() {
            return Err(RefreshError::NoneActive);
        }
        self.end(RefreshStatus::Cancelled, now_ms, why.to_string());
        Ok(())
    }

    /// Goes back to the previous version: the instances launched on the target are replaced
    /// (EC2's RollbackInstanceRefresh).
    pub fn roll_back(&mut self, now_ms: i64, why: String) -> Result<(), RefreshError> {
        if !matches!(
            self.status,
            RefreshStatus::InProgress | RefreshStatus::Paused
        ) {
            return Err(RefreshError::NoneActive);
        }
        let Some(previous) = self.previous.clone() else {
            return Err(RefreshError::NoPrevious(self.id));
        };
        self.previous = Some(std::mem::replace(&mut self.target, previous));
        self.status = RefreshStatus::RollingBack;
        self.reason = why;
        self.last_progress_ms = now_ms;
        self.paused_until_ms = None;
        self.baking_since_ms = None;
        self.failed.clear();
        Ok(())
    }

    fn end(&mut self, status: RefreshStatus, now_ms: i64, reason: String) {
        self.status = status;
        self.reason = reason;
        self.ended_ms = Some(now_ms);
        self.paused_until_ms = None;
    }

    /// Fails the refresh: back to the previous version when it may, or stopped.
    fn fail(&mut self, now_ms: i64, why: String) {
        if self.status == RefreshStatus::RollingBack {
            self.end(
                RefreshStatus::Failed,
                now_ms,
                format!("the rollback failed too: {why}"),
            );
        } else if !self.preferences.auto_rollback {
            self.end(RefreshStatus::Failed, now_ms, why);
        } else if let Err(error) = self.roll_back(now_ms, format!("rolling back: {why}")) {
            self.end(RefreshStatus::Failed, now_ms, format!("{why}; {error}"));
        }
    }

    /// Whether `instance` is to be replaced by this refresh.
    fn is_old(&self, instance: &ObservedInstance, now_ms: i64) -> bool {
        if instance.protected && !self.preferences.include_protected {
            return false;
        }
        if instance.version.as_deref() != Some(self.target.as_str()) {
            return true;
        }
        // Without skip matching, what was launched before the refresh goes too (not when
        // rolling back: what is on the previous version stays).
        let launched_ms = now_ms - i64::try_from(instance.age.as_millis()).unwrap_or(i64::MAX);
        !self.preferences.skip_matching
            && self.status != RefreshStatus::RollingBack
            && launched_ms < self.started_ms
    }

    /// One evaluation of the refresh: the failures it sees, its progress, and the old
    /// instances to replace now so that at least `min_healthy_percentage` of `desired` stays in
    /// service and at most `max_healthy_percentage` runs. `health` are the replacements the
    /// evaluation already makes for health; `leaving`, the instances still draining.
    pub(crate) fn step(
        &mut self,
        instances: &[(&ObservedInstance, Phase)],
        health: &[Replacement],
        desired: u32,
        leaving: u32,
        default_warmup_secs: u64,
        now_ms: i64,
    ) -> RefreshStep {
        if !self.status.is_active() {
            return RefreshStep::default();
        }
        let warmup = std::time::Duration::from_secs(
            self.preferences
                .instance_warmup_secs
                .unwrap_or(default_warmup_secs),
        );
        let target = self.target.clone();
        let on_target = |i: &ObservedInstance| i.version.as_deref() == Some(target.as_str());
        // Failures of the new version.
        let launched_since = |i: &ObservedInstance| {
            now_ms - i64::try_from(i.age.as_millis()).unwrap_or(i64::MAX) >= self.started_ms
        };
        for replacement in health {
            if let Some((instance, _)) = instances
                .iter()
                .find(|(i, _)| i.instance_id == replacement.instance_id)
                && on_target(instance)
                && launched_since(instance)
                && self.failed.insert(instance.instance_id.clone())
                && self.failed.len() as u32 >= self.preferences.failures_to_roll_back
            {
                let why = format!(
                    "{} instance(s) on {} failed, the last {} ({})",
                    self.failed.len(),
                    self.target,
                    replacement.instance_id,
                    replacement.reason
                );
                // A rollback starts replacing at the next evaluation.
                self.fail(now_ms, why);
                return RefreshStep::default();
            }
        }
        // New: on the target and not to be replaced (launched since, or matching is skipped).
        let new = |i: &ObservedInstance| on_target(i) && !self.is_old(i, now_ms);
        // A new instance is capacity once in service, warmed up, and (with a balancer) passing
        // its health checks: a version that fails them is never counted, so no old instance
        // goes for it.
        let counts = |i: &ObservedInstance, phase: Phase| {
            phase == Phase::InService && i.age >= warmup && i.serving != Some(false)
        };
        let healthy_on_target = instances
            .iter()
            .filter(|(i, phase)| new(i) && counts(i, *phase))
            .count() as u32;
        let healthy = instances
            .iter()
            .filter(|(i, phase)| match new(i) {
                true => counts(i, *phase),
                false => *phase == Phase::InService,
            })
            .count() as u32;
        let pending_new = instances
            .iter()
            .filter(|(i, phase)| new(i) && *phase != Phase::Replaced && !counts(i, *phase))
            .count() as u32;
        // Replacements in flight: new instances not yet counted, and the places a launch has
        // yet to fill (held by the launch backoff, or the account's limit).
        let staying = instances
            .iter()
            .filter(|(_, p)| *p != Phase::Replaced)
            .count() as u32;
        let pending_new = pending_new + desired.saturating_sub(staying);
        let mut old: Vec<&(&ObservedInstance, Phase)> = instances
            .iter()
            .filter(|(i, phase)| *phase != Phase::Replaced && self.is_old(i, now_ms))
            .collect();
        if healthy_on_target > self.in_service_on_target {
            self.last_progress_ms = now_ms;
        }
        self.in_service_on_target = healthy_on_target;
        let left = old.len() as u32;
        self.instances_left = left;
        self.percent_complete = match healthy_on_target + left {
            0 => 100,
            all => healthy_on_target * 100 / all,
        };
        // Done: every instance on the target, warmed, the old ones gone (drained and
        // terminated); then the bake time.
        if left == 0 && pending_new == 0 && leaving == 0 {
            let since = *self.baking_since_ms.get_or_insert(now_ms);
            let bake = i64::try_from(self.preferences.bake_time_secs * 1000).unwrap_or(i64::MAX);
            if now_ms - since >= bake {
                let (status, reason) = match self.status {
                    RefreshStatus::RollingBack => (
                        RefreshStatus::RolledBack,
                        format!("rolled back to {}: {}", self.target, self.reason),
                    ),
                    _ => (
                        RefreshStatus::Successful,
                        format!("every instance is on {}", self.target),
                    ),
                };
                self.end(status, now_ms, reason);
            } else {
                self.reason = format!(
                    "baking: every instance on {}, watched for {} s more",
                    self.target,
                    (bake - (now_ms - since) + 999) / 1000
                );
            }
            return RefreshStep::default();
        }
        self.baking_since_ms = None;
        // No progress for too long.
        let timeout = i64::try_from(self.preferences.progress_timeout_secs * 1000).unwrap_or(0);
        let paused = self.paused_until_ms.is_some_and(|until| now_ms < until);
        if !paused && now_ms - self.last_progress_ms > timeout {
            self.fail(
                now_ms,
                format!(
                    "no instance came into service on {} for {} s",
                    self.target, self.preferences.progress_timeout_secs
                ),
            );
            return RefreshStep::default();
        }
        // A checkpoint.
        if self.status != RefreshStatus::RollingBack {
            if paused {
                return RefreshStep::default();
            }
            if let Some(until) = self.paused_until_ms.take() {
                self.last_progress_ms = until;
                self.status = RefreshStatus::InProgress;
                self.reason = "resumed after the checkpoint".to_string();
            }
            let passed = self.checkpoints_passed as usize;
            if let Some(&checkpoint) = self.preferences.checkpoints.get(passed)
                && self.percent_complete >= checkpoint
                && pending_new == 0
            {
                self.checkpoints_passed += 1;
                if checkpoint < 100 {
                    let delay =
                        i64::try_from(self.preferences.checkpoint_delay_secs * 1000).unwrap_or(0);
                    self.paused_until_ms = Some(now_ms + delay);
                    self.status = RefreshStatus::Paused;
                    self.reason = format!(
                        "checkpoint {checkpoint} %: paused for {} s",
                        self.preferences.checkpoint_delay_secs
                    );
                    return RefreshStep::default();
                }
            }
        }
        // How many may be replaced now.
        let percent = |p: u32| u64::from(desired) * u64::from(p);
        let floor = percent(self.preferences.min_healthy_percentage).div_ceil(100) as u32;
        let ceiling =
            ((percent(self.preferences.max_healthy_percentage) / 100) as u32).max(desired);
        let in_flight_cap = ceiling.saturating_sub(floor).max(1);
        let mut allowed = in_flight_cap.saturating_sub(pending_new);
        let mut budget = healthy.saturating_sub(floor);
        // Those out of service go first (replacing them lowers no capacity), then the oldest.
        old.sort_by_key(|(i, phase)| (*phase == Phase::InService, std::cmp::Reverse(i.age)));
        let mut taken: Vec<&ObservedInstance> = Vec::new();
        for (instance, phase) in &old {
            if allowed == 0 || !instance.listed || *phase == Phase::Warming {
                continue;
            }
            if *phase == Phase::InService {
                if budget == 0 {
                    continue;
                }
                budget -= 1;
            }
            allowed -= 1;
            taken.push(instance);
        }
        let extra = |taken: usize| (left - taken as u32).min(ceiling - desired);
        // Terminate-then-launch (no room above the desired capacity) goes one at a time
        // below the floor rather than never, as EC2 does.
        if taken.is_empty()
            && pending_new == 0
            && extra(0) == 0
            && let Some((instance, _)) = old
                .iter()
                .find(|(i, phase)| i.listed && *phase != Phase::Warming)
        {
            taken.push(instance);
        }
        if !taken.is_empty() {
            self.last_progress_ms = now_ms;
            self.replaced += taken.len() as u32;
        }
        let action = match self.status {
            RefreshStatus::RollingBack => "rollback",
            _ => "refresh",
        };
        RefreshStep {
            extra: extra(taken.len()),
            replace: taken
                .iter()
                .map(|i| Replacement {
                    instance_id: i.instance_id.clone(),
                    reason: format!(
                        "instance {action} {}: {} -> {}",
                        self.id,
                        i.version.as_deref().unwrap_or("no version"),
                        self.target
                    ),
                    failed_launch: false,
                })
                .collect(),
        }
    }

    /// One line for the terminal and the record.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "instance refresh {} to {}: {}, {} % done, {} left",
            self.id,
            self.target,
            self.status.as_str(),
            self.percent_complete,
            self.instances_left
        );
        if !self.reason.is_empty() {
            line.push_str(&format!(" ({})", self.reason));
        }
        line
    }
}
