//! The controller's settings, as read from the `[controller]` table of the daemon's TOML file,
//! and their checks. A setting out of range is refused at start with its field named.

use std::time::Duration;

use serde::Deserialize;

use crate::forecast::PredictiveConfig;
use crate::kinds::{Kind, Step, StepRule, TargetTracking};
use crate::schedule::{BoundsChange, Schedules, WindowConfig};

/// The AWS Academy cap on running instances, the default account limit.
pub const DEFAULT_INSTANCE_LIMIT: u32 = 5;

/// How the controller sizes the fleet.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Smallest fleet; at least 2.
    pub min_instances: u32,
    /// Largest fleet; at most `instance_limit`.
    pub max_instances: u32,
    /// The account's limit on instances (5 on AWS Academy).
    pub instance_limit: u32,
    /// How often the policy is evaluated, in milliseconds.
    pub evaluation_interval_ms: u64,
    /// Longest warm-up: a new instance counts in averages after its first healthy metrics or
    /// after this many seconds, whichever comes first.
    pub warmup_secs: u64,
    /// An instance that has not registered this many seconds after its launch (or after the
    /// controller started, if later) is replaced. The default, 300 s, is EC2 Auto Scaling's
    /// health check grace: a t2.micro boots and starts its agent well within it.
    pub registration_grace_secs: u64,
    /// After a failed launch (an instance that exits or is replaced before it ever reported, or
    /// a launch the provider refused), no launch for this many seconds; the pause doubles with
    /// every further failure in a row, up to `launch_backoff_max_secs`.
    pub launch_backoff_secs: u64,
    /// The longest pause between failing launches.
    pub launch_backoff_max_secs: u64,
    /// After a scale-out, no further scale-out for this many seconds.
    pub scale_out_cooldown_secs: u64,
    /// After any scaling, no scale-in for this many seconds.
    pub scale_in_cooldown_secs: u64,
    /// Which instance a scale-in removes.
    pub termination_policy: TerminationPolicy,
    /// What finds an instance unhealthy, to replace it: the monitor alone (the default), or
    /// the load balancer's health checks too, past the registration grace (EC2 Auto Scaling's
    /// ELB health check type). The second needs a `[load_balancer]`.
    pub health_check_type: HealthCheckType,
    /// How many recent decisions are kept for the status view.
    pub decision_history: usize,
    /// The creation and destruction rules.
    pub policy: PolicyConfig,
    /// A second policy evaluated on the same observations, logged where it would decide
    /// differently, never acted on.
    pub shadow: Option<ShadowConfig>,
    /// `[[controller.schedule]]`: windows that raise the floor at times given by a cron
    /// expression in a time zone (`crate::schedule`).
    pub schedule: Vec<WindowConfig>,
    /// `[[controller.scheduled_change]]`: one-off changes of the bounds from a time on.
    pub scheduled_change: Vec<BoundsChange>,
    /// `[controller.predictive]`: the forecaster (`crate::forecast`), off when absent.
    pub predictive: Option<PredictiveConfig>,
}

/// The shadow policy: its rules, and the settings where it differs from the live policy (the
/// others are the live policy's).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub policy: PolicyConfig,
    #[serde(default)]
    pub warmup_secs: Option<u64>,
    #[serde(default)]
    pub scale_out_cooldown_secs: Option<u64>,
    #[serde(default)]
    pub scale_in_cooldown_secs: Option<u64>,
    #[serde(default)]
    pub termination_policy: Option<TerminationPolicy>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            min_instances: 2,
            max_instances: DEFAULT_INSTANCE_LIMIT,
            instance_limit: DEFAULT_INSTANCE_LIMIT,
            evaluation_interval_ms: 1_000,
            warmup_secs: 60,
            registration_grace_secs: 300,
            launch_backoff_secs: 10,
            launch_backoff_max_secs: 300,
            scale_out_cooldown_secs: 60,
            scale_in_cooldown_secs: 120,
            termination_policy: TerminationPolicy::Oldest,
            health_check_type: HealthCheckType::Monitor,
            decision_history: 200,
            policy: PolicyConfig::default(),
            shadow: None,
            schedule: Vec::new(),
            scheduled_change: Vec::new(),
            predictive: None,
        }
    }
}

/// What finds an instance unhealthy (`ControllerConfig::health_check_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheckType {
    /// The monitor's polls (and the provider: an instance that is not running).
    #[default]
    Monitor,
    /// The load balancer's health checks too.
    LoadBalancer,
}

/// Which in-service instance a scale-in removes first. Warming instances are never chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationPolicy {
    Newest,
    Oldest,
    LeastLoaded,
}

/// The rule that turns loads into a desired size.
///
/// Read through [`RawPolicy`], a plain struct, rather than as an internally tagged enum: serde
/// buffers a tagged enum's fields and the TOML parser then cannot point at the bad one, while a
/// struct's fields keep their lines in error messages.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub enum PolicyConfig {
    Step(Step),
    TargetTracking(TargetTracking),
}

impl PolicyConfig {
    /// The policy from the text of a `[controller.policy]` table (an operator's change at run
    /// time); the error names the field. Its ranges are checked with the rest of the config
    /// (`ControllerConfig::validate`).
    pub fn from_toml(text: &str) -> Result<PolicyConfig, String> {
        toml::from_str(text).map_err(|error| error.message().to_string())
    }

    /// What the kind decides by itself; `policy::evaluate` applies the rest.
    pub fn kind(&self) -> &dyn Kind {
        match self {
            PolicyConfig::Step(kind) => kind,
            PolicyConfig::TargetTracking(kind) => kind,
        }
    }

    /// The loads, percent, at which the policy acts, with a name for each: what the dashboard
    /// marks on its load chart.
    pub fn load_marks(&self) -> Vec<(f64, &'static str)> {
        self.kind().load_marks()
    }
}

/// The kinds of policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Step,
    TargetTracking,
}

/// `[controller.policy]` as written: every field of every kind, checked against `kind` after.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub kind: PolicyKind,
    #[serde(default)]
    pub target: Option<f64>,
    #[serde(default)]
    pub tolerance: Option<f64>,
    #[serde(default)]
    pub scale_out: Option<StepRule>,
    #[serde(default)]
    pub scale_in: Option<StepRule>,
}

impl TryFrom<RawPolicy> for PolicyConfig {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<PolicyConfig, String> {
        let stray = |present: bool, field: &str, kind: &str| {
            if present {
                Err(format!(
                    "`policy.{field}` does not apply to kind = \"{kind}\""
                ))
            } else {
                Ok(())
            }
        };
        match raw.kind {
            PolicyKind::TargetTracking => {
                stray(raw.scale_out.is_some(), "scale_out", "target-tracking")?;
                stray(raw.scale_in.is_some(), "scale_in", "target-tracking")?;
                Ok(PolicyConfig::TargetTracking(TargetTracking {
                    target: raw
                        .target
                        .ok_or("`policy.target` is missing: kind = \"target-tracking\" needs it")?,
                    tolerance: raw.tolerance.ok_or(
                        "`policy.tolerance` is missing: kind = \"target-tracking\" needs it",
                    )?,
                }))
            }
            PolicyKind::Step => {
                stray(raw.target.is_some(), "target", "step")?;
                stray(raw.tolerance.is_some(), "tolerance", "step")?;
                Ok(PolicyConfig::Step(Step {
                    scale_out: raw
                        .scale_out
                        .ok_or("`policy.scale_out` is missing: kind = \"step\" needs it")?,
                    scale_in: raw
                        .scale_in
                        .ok_or("`policy.scale_in` is missing: kind = \"step\" needs it")?,
                }))
            }
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::TargetTracking(TargetTracking {
            target: 50.0,
            tolerance: 0.1,
        })
    }
}

/// A setting out of range, naming its field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`controller.{field}` {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

fn fail<T>(field: &'static str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field,
        problem: problem.into(),
    })
}

impl ControllerConfig {
    /// The shadow policy as a whole config: the live one with the shadow's settings over it.
    pub fn shadow_config(&self) -> Option<ControllerConfig> {
        let shadow = self.shadow.as_ref()?;
        Some(ControllerConfig {
            policy: shadow.policy.clone(),
            warmup_secs: shadow.warmup_secs.unwrap_or(self.warmup_secs),
            scale_out_cooldown_secs: shadow
                .scale_out_cooldown_secs
                .unwrap_or(self.scale_out_cooldown_secs),
            scale_in_cooldown_secs: shadow
                .scale_in_cooldown_secs
                .unwrap_or(self.scale_in_cooldown_secs),
            termination_policy: shadow.termination_policy.unwrap_or(self.termination_policy),
            shadow: None,
            ..self.clone()
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_own()?;
        if let Some(shadow) = self.shadow_config() {
            shadow.validate_own().map_err(|error| ConfigError {
                field: "shadow",
                problem: format!("has {}: {}", error.field, error.problem),
            })?;
        }
        Ok(())
    }

    fn validate_own(&self) -> Result<(), ConfigError> {
        if self.instance_limit == 0 {
            return fail("instance_limit", "is 0; it must be at least 2");
        }
        if self.min_instances < 2 {
            return fail(
                "min_instances",
                format!("is {}; it must be at least 2", self.min_instances),
            );
        }
        if self.max_instances > self.instance_limit {
            return fail(
                "max_instances",
                format!(
                    "is {}; it must be at most the account's instance limit, instance_limit = {}",
                    self.max_instances, self.instance_limit
                ),
            );
        }
        if self.min_instances > self.max_instances {
            return fail(
                "min_instances",
                format!(
                    "is {}, above max_instances = {}",
                    self.min_instances, self.max_instances
                ),
            );
        }
        if !(10..=3_600_000).contains(&self.evaluation_interval_ms) {
            return fail(
                "evaluation_interval_ms",
                format!(
                    "is {}; it must be within 10-3600000",
                    self.evaluation_interval_ms
                ),
            );
        }
        if self.decision_history == 0 || self.decision_history > 100_000 {
            return fail("decision_history", "must be within 1-100000");
        }
        for (field, secs) in [
            ("warmup_secs", self.warmup_secs),
            ("registration_grace_secs", self.registration_grace_secs),
            ("scale_out_cooldown_secs", self.scale_out_cooldown_secs),
            ("scale_in_cooldown_secs", self.scale_in_cooldown_secs),
            ("launch_backoff_secs", self.launch_backoff_secs),
            ("launch_backoff_max_secs", self.launch_backoff_max_secs),
        ] {
            if secs > 86_400 {
                return fail(
                    field,
                    format!("is {secs}; it must be at most 86400 (a day)"),
                );
            }
        }
        if self.launch_backoff_secs == 0 {
            return fail(
                "launch_backoff_secs",
                "is 0; it must be at least 1 (a failing launch is never retried at once)",
            );
        }
        if self.launch_backoff_max_secs < self.launch_backoff_secs {
            return fail(
                "launch_backoff_max_secs",
                format!(
                    "is {}, below launch_backoff_secs = {}",
                    self.launch_backoff_max_secs, self.launch_backoff_secs
                ),
            );
        }
        self.policy.kind().validate(self.max_instances)?;
        Schedules::new(&self.schedule, &self.scheduled_change, self.instance_limit)?;
        if let Some(predictive) = &self.predictive {
            predictive.validate()?;
        }
        Ok(())
    }

    /// How many days of the group's demand are kept: the forecaster's `history_days`, or its
    /// default without one.
    pub fn demand_days(&self) -> u32 {
        self.predictive
            .as_ref()
            .map_or(PredictiveConfig::default().history_days, |p| p.history_days)
    }

    pub fn evaluation_interval(&self) -> Duration {
        Duration::from_millis(self.evaluation_interval_ms)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_secs)
    }

    pub fn registration_grace(&self) -> Duration {
        Duration::from_secs(self.registration_grace_secs)
    }

    /// The pause before the next launch after `failures` failed launches in a row (at least 1).
    pub fn launch_backoff(&self, failures: u32) -> Duration {
        crate::backoff::pause_after(
            Duration::from_secs(self.launch_backoff_secs),
            Duration::from_secs(self.launch_backoff_max_secs),
            failures.max(1),
        )
    }

    pub fn scale_out_cooldown(&self) -> Duration {
        Duration::from_secs(self.scale_out_cooldown_secs)
    }

    pub fn scale_in_cooldown(&self) -> Duration {
        Duration::from_secs(self.scale_in_cooldown_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: ControllerConfig) -> &'static str {
        config.validate().unwrap_err().field
    }

    #[test]
    fn bounds_are_checked_and_named() {
        assert_eq!(ControllerConfig::default().validate(), Ok(()));
        let base = ControllerConfig::default();
        assert_eq!(
            field_of(ControllerConfig {
                min_instances: 1,
                ..base.clone()
            }),
            "min_instances"
        );
        assert_eq!(
            field_of(ControllerConfig {
                max_instances: 6,
                ..base.clone()
            }),
            "max_instances"
        );
        assert_eq!(
            field_of(ControllerConfig {
                min_instances: 5,
                max_instances: 4,
                ..base.clone()
            }),
            "min_instances"
        );
        assert_eq!(
            field_of(ControllerConfig {
                policy: PolicyConfig::TargetTracking(TargetTracking {
                    target: 0.0,
                    tolerance: 0.1
                }),
                ..base.clone()
            }),
            "policy.target"
        );
        assert_eq!(
            field_of(ControllerConfig {
                policy: PolicyConfig::Step(Step {
                    scale_out: StepRule {
                        above: Some(30.0),
                        below: None,
                        for_secs: 1,
                        step: 1
                    },
                    scale_in: StepRule {
                        above: None,
                        below: Some(40.0),
                        for_secs: 1,
                        step: 1
                    },
                }),
                ..base.clone()
            }),
            "policy.scale_in.below"
        );
        // A larger account may run a larger fleet.
        assert_eq!(
            ControllerConfig {
                max_instances: 50,
                instance_limit: 100,
                ..base
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn a_shadow_inherits_what_it_does_not_set_and_is_validated() {
        let config: ControllerConfig = toml::from_str(
            r#"
            scale_out_cooldown_secs = 30
            [policy]
            kind = "target-tracking"
            target = 50.0
            tolerance = 0.1
            [shadow]
            scale_in_cooldown_secs = 600
            [shadow.policy]
            kind = "target-tracking"
            target = 70.0
            tolerance = 0.05
            "#,
        )
        .expect("a valid config");
        assert_eq!(config.validate(), Ok(()));
        let shadow = config.shadow_config().expect("a shadow");
        assert_eq!(shadow.scale_out_cooldown_secs, 30, "inherited");
        assert_eq!(shadow.scale_in_cooldown_secs, 600, "its own");
        assert_eq!(
            shadow.policy,
            PolicyConfig::TargetTracking(TargetTracking {
                target: 70.0,
                tolerance: 0.05
            })
        );
        assert_eq!(shadow.shadow, None);

        let bad: ControllerConfig = toml::from_str(
            "[shadow.policy]\nkind = \"target-tracking\"\ntarget = 150.0\ntolerance = 0.1\n",
        )
        .expect("parses");
        let error = bad.validate().unwrap_err();
        assert_eq!(error.field, "shadow");
        assert!(
            error.to_string().contains("policy.target: is 150"),
            "{error}"
        );
        assert!(
            toml::from_str::<ControllerConfig>("[shadow]\nmin_instances = 3\n").is_err(),
            "bounds are the live policy's: a shadow cannot set them"
        );
    }
}
