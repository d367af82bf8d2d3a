//! Target tracking: desired = ceil(sum of loads / target), unless the average is within
//! `tolerance` of the target (the Kubernetes HPA's replica calculator, EC2's target tracking).

use std::time::Duration;

use super::{Counted, Direction, Kind, Rules, Sustain};
use crate::config::ConfigError;
use crate::policy::Rule;

/// `kind = "target-tracking"`: `target` percent, `tolerance` a fraction (0.1 is 10 %).
#[derive(Clone, Debug, PartialEq)]
pub struct TargetTracking {
    pub target: f64,
    pub tolerance: f64,
}

impl Kind for TargetTracking {
    fn describe(&self) -> String {
        format!(
            "target tracking {}% +/-{:.0}%",
            self.target,
            self.tolerance * 100.0
        )
    }

    fn load_marks(&self) -> Vec<(f64, &'static str)> {
        vec![(self.target, "target")]
    }

    fn validate(&self, _max_instances: u32) -> Result<(), ConfigError> {
        let (target, tolerance) = (self.target, self.tolerance);
        if !(target > 0.0 && target <= 100.0) {
            return Err(ConfigError::new(
                "policy.target",
                format!("is {target}; it must be within 0-100, above 0"),
            ));
        }
        if !(0.0..1.0).contains(&tolerance) {
            return Err(ConfigError::new(
                "policy.tolerance",
                format!("is {tolerance}; it must be a fraction within 0-1 (0.1 is 10 %)"),
            ));
        }
        Ok(())
    }

    fn direction(&self, average: f64) -> Direction {
        if average < self.target {
            Direction::In
        } else if average > self.target {
            Direction::Out
        } else {
            Direction::Hold
        }
    }

    fn scale_in_level(&self) -> Option<f64> {
        Some(self.target)
    }

    fn resting_level(&self) -> f64 {
        self.target
    }

    fn recommend(
        &self,
        counted: &Counted,
        _sustain: &mut Sustain,
        _now: Duration,
        rules: &mut Rules,
    ) -> u32 {
        let (current, average, unseen) = (counted.current, counted.average, counted.unseen());
        let raw = (counted.sum / self.target).ceil() as u32;
        // Counting the instances without a metric must not turn the direction around (HPA).
        let reversed = match counted.direction {
            Direction::In => average > self.target || raw > current,
            Direction::Out => average < self.target || raw < current,
            Direction::Hold => false,
        };
        if unseen == 0 {
            raw
        } else if reversed {
            rules.apply(Rule::MissingMetrics, raw, current, || {
                format!(
                    "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%, which reverses the direction: holding",
                    counted.missing_ids()
                )
            })
        } else {
            rules.apply(Rule::MissingMetrics, raw, raw, || {
                format!(
                    "{unseen} without a fresh metric: {}; counted so, the average is {average:.1}%",
                    counted.missing_ids()
                )
            })
        }
    }

    fn settle(&self, recommended: u32, counted: &Counted, rules: &mut Rules) -> u32 {
        let (average, target) = (counted.average, self.target);
        if ((average / target) - 1.0).abs() <= self.tolerance {
            rules.apply(Rule::Tolerance, recommended, counted.current, || {
                format!(
                    "average {average:.1}% within {:.0}% of the target {target}%",
                    self.tolerance * 100.0
                )
            })
        } else {
            recommended
        }
    }
}
