//! Predictive scaling, the pure part: the group's demand as the leader records it (once a
//! minute, the sum of the in-service loads in instance capacities), the forecast of the next 48
//! hours made from it (`model`), refreshed every five minutes, the capacity it needs over the next lead time
//! (the 95th percentile of this group's own recent launch-to-in-service times, with a floor), and
//! the forecaster's check of itself: its last 24 hours scored against what came, falling back to
//! forecast-only while the error is past a bound. The live controller and the simulator run it
//! through `policy::evaluate`, so the same code forecasts in both.

pub mod model;
mod predictive;

use serde::Deserialize;

pub use model::{Model, Score, Series};
pub use predictive::{ForecastView, Predictive};

use crate::config::ConfigError;

/// The group's demand at a minute: what the leader records and the store keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DemandSample {
    /// The minute's start, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The sum of the in-service instances' loads, in instance capacities (100 % = 1), averaged
    /// over the minute's evaluations.
    pub capacities: f64,
}

/// `[controller.predictive]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictiveConfig {
    /// `forecast-only` (recorded and shown, not acted on: AWS's default) or
    /// `forecast-and-scale` (the forecast raises the floor).
    pub mode: PredictiveMode,
    /// The load per instance the forecast capacity is sized for, percent; the target tracking
    /// policy's target when not given (and 70 with a step policy).
    pub target_percent: Option<f64>,
    /// The shortest lead time, seconds: the forecast looks at least this far ahead, however
    /// fast this group's recent launches came into service.
    pub min_lead_secs: u64,
    /// How long the recorded demand is kept, in days (at least 14: the weekly cycle twice).
    pub history_days: u32,
    /// Past this error (the last 24 hours' forecasts against what came, WAPE, percent) the
    /// forecaster falls back to forecast-only by itself, until the error is back under it.
    pub max_error_percent: f64,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        PredictiveConfig {
            mode: PredictiveMode::ForecastOnly,
            target_percent: None,
            min_lead_secs: 60,
            history_days: 14,
            max_error_percent: 30.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictiveMode {
    #[default]
    ForecastOnly,
    ForecastAndScale,
}

impl PredictiveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictiveMode::ForecastOnly => "forecast-only",
            PredictiveMode::ForecastAndScale => "forecast-and-scale",
        }
    }
}

/// The history the forecaster waits for before it is used, as AWS's predictive scaling does.
pub const MIN_HISTORY_MS: i64 = 24 * 3_600_000;
/// How often the forecast is made again: every 5-minute slot (its level correction then
/// follows the last hour as it goes; the check of itself runs hourly).
pub const REFRESH_MS: i64 = model::SLOT_MS;

impl PredictiveConfig {
    /// The load per instance the forecast capacity is sized for, percent.
    pub fn target_for(&self, policy: &crate::config::PolicyConfig) -> f64 {
        match (self.target_percent, policy) {
            (Some(target), _) => target,
            (None, crate::config::PolicyConfig::TargetTracking(kind)) => kind.target,
            (None, _) => 70.0,
        }
    }

    /// Checks the section; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &'static str, problem: String| ConfigError::new(field, problem);
        if let Some(target) = self.target_percent
            && !(target.is_finite() && target > 0.0 && target <= 100.0)
        {
            return Err(fail(
                "predictive.target_percent",
                format!("is {target}; it must be within (0, 100]"),
            ));
        }
        if self.min_lead_secs == 0 || self.min_lead_secs > 3_600 {
            return Err(fail(
                "predictive.min_lead_secs",
                format!("is {}; it must be within 1-3600", self.min_lead_secs),
            ));
        }
        if !(14..=400).contains(&self.history_days) {
            return Err(fail(
                "predictive.history_days",
                format!(
                    "is {}; it must be within 14-400 (the weekly cycle twice at least)",
                    self.history_days
                ),
            ));
        }
        if !(self.max_error_percent.is_finite() && self.max_error_percent > 0.0) {
            return Err(fail(
                "predictive.max_error_percent",
                format!("is {}; it must be above 0", self.max_error_percent),
            ));
        }
        Ok(())
    }
}
