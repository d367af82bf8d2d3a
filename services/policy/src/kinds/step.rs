//! Threshold/step scaling: an average above `scale_out.above` for `scale_out.for_secs` adds
//! `scale_out.step` instances; below `scale_in.below` for `scale_in.for_secs` removes
//! `scale_in.step` (EC2's step scaling with a CloudWatch alarm's evaluation periods).

use std::time::Duration;

use serde::Deserialize;

use super::{Counted, Direction, Kind, Rules, Sustain};
use crate::config::ConfigError;
use crate::policy::Rule;

/// `kind = "step"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub scale_out: StepRule,
    pub scale_in: StepRule,
}

/// One side of the step policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRule {
    /// Threshold for scaling out (used by `scale_out`), percent.
    #[serde(default)]
    pub above: Option<f64>,
    /// Threshold for scaling in (used by `scale_in`), percent.
    #[serde(default)]
    pub below: Option<f64>,
    /// How long the average must stay past the threshold, in seconds.
    pub for_secs: u64,
    /// Instances added or removed at once.
    pub step: u32,
}

impl Step {
    fn high(&self) -> f64 {
        self.scale_out.above.unwrap_or(100.0)
    }

    fn low(&self) -> f64 {
        self.scale_in.below.unwrap_or(0.0)
    }
}

impl Kind for Step {
    fn describe(&self) -> String {
        let (out, inn) = (&self.scale_out, &self.scale_in);
        format!(
            "step +{} above {}% for {}s, -{} below {}% for {}s",
            out.step,
            self.high(),
            out.for_secs,
            inn.step,
            self.low(),
            inn.for_secs
        )
    }

    fn load_marks(&self) -> Vec<(f64, &'static str)> {
        self.scale_out
            .above
            .map(|above| (above, "scale out"))
            .into_iter()
            .chain(self.scale_in.below.map(|below| (below, "scale in")))
            .collect()
    }

    fn validate(&self, max_instances: u32) -> Result<(), ConfigError> {
        let (scale_out, scale_in) = (&self.scale_out, &self.scale_in);
        let Some(high) = scale_out.above.filter(|_| scale_out.below.is_none()) else {
            return Err(ConfigError::new(
                "policy.scale_out",
                "needs `above` (and no `below`)",
            ));
        };
        let Some(low) = scale_in.below.filter(|_| scale_in.above.is_none()) else {
            return Err(ConfigError::new(
                "policy.scale_in",
                "needs `below` (and no `above`)",
            ));
        };
        if !(0.0..=100.0).contains(&high) {
            return Err(ConfigError::new(
                "policy.scale_out.above",
                format!("is {high}; it must be within 0-100"),
            ));
        }
        if !(0.0..=100.0).contains(&low) {
            return Err(ConfigError::new(
                "policy.scale_in.below",
                format!("is {low}; it must be within 0-100"),
            ));
        }
        if low >= high {
            return Err(ConfigError::new(
                "policy.scale_in.below",
                format!("is {low}; it must be below policy.scale_out.above = {high}"),
            ));
        }
        for (field, rule) in [
            ("policy.scale_out.step", scale_out),
            ("policy.scale_in.step", scale_in),
        ] {
            if rule.step == 0 || rule.step > max_instances {
                return Err(ConfigError::new(
                    field,
                    format!("is {}; it must be within 1-max_instances", rule.step),
                ));
            }
            if rule.for_secs > 86_400 {
                return Err(ConfigError::new(field, "for_secs must be at most 86400"));
            }
        }
        Ok(())
    }

    fn direction(&self, average: f64) -> Direction {
        if average > self.high() {
            Direction::Out
        } else if average < self.low() {
            Direction::In
        } else {
            Direction::Hold
        }
    }

    fn scale_in_level(&self) -> Option<f64> {
        self.scale_in.below
    }

    fn resting_level(&self) -> f64 {
        0.0
    }

    fn recommend(
        &self,
        counted: &Counted,
        sustain: &mut Sustain,
        now: Duration,
        rules: &mut Rules,
    ) -> u32 {
        let (current, average, unseen) = (counted.current, counted.average, counted.unseen());
        let (high, low) = (self.high(), self.low());
        if unseen > 0 {
            rules.apply(Rule::MissingMetrics, current, current, || {
                format!(
                    "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%",
                    counted.missing_ids()
                )
            });
        }
        if average > high {
            sustain.below_since = None;
            let since = *sustain.above_since.get_or_insert(now);
            let held = now.saturating_sub(since);
            if held >= Duration::from_secs(self.scale_out.for_secs) {
                current + self.scale_out.step
            } else {
                rules.apply(Rule::Sustain, current, current, || {
                    format!(
                        "above {high}% for {}s of {}s",
                        held.as_secs(),
                        self.scale_out.for_secs
                    )
                })
            }
        } else if average < low {
            sustain.above_since = None;
            let since = *sustain.below_since.get_or_insert(now);
            let held = now.saturating_sub(since);
            if held >= Duration::from_secs(self.scale_in.for_secs) {
                current.saturating_sub(self.scale_in.step)
            } else {
                rules.apply(Rule::Sustain, current, current, || {
                    format!(
                        "below {low}% for {}s of {}s",
                        held.as_secs(),
                        self.scale_in.for_secs
                    )
                })
            }
        } else {
            sustain.reset();
            current
        }
    }
}
