//! The policy kinds: each is one file with its settings (a section of `[controller.policy]`)
//! and what it alone decides, behind the small `Kind` interface; `policy::evaluate` applies the
//! guards every kind shares (missing metrics, warm-up, cooldowns, bounds, health, the launch
//! backoff, the instance limit). Adding a kind: ARCHITECTURE.md, "How to add a policy kind".

mod step;
mod target_tracking;

use std::time::Duration;

pub use step::{Step, StepRule};
pub use target_tracking::TargetTracking;

use crate::config::ConfigError;
use crate::policy::{MissingMetric, Rule, RuleApplied};

/// Where the reported loads point, before instances without a metric are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Hold,
}

/// The loads as the recommendation counts them: the reported ones, and those without a fresh
/// metric or being replaced, counted as `evaluate` documents.
#[derive(Clone, Copy, Debug)]
pub struct Counted<'a> {
    /// Instances listed (the fleet being sized).
    pub current: u32,
    /// The sum of the counted loads, percent.
    pub sum: f64,
    /// Their average, percent.
    pub average: f64,
    pub direction: Direction,
    /// Instances without a fresh metric, and how they were counted.
    pub missing: &'a [MissingMetric],
}

impl Counted<'_> {
    pub fn unseen(&self) -> u32 {
        self.missing.len() as u32
    }

    /// `local-0003 (not registered, counted at 50%), ...`.
    pub fn missing_ids(&self) -> String {
        let listed: Vec<String> = self.missing.iter().map(MissingMetric::describe).collect();
        listed.join(", ")
    }
}

/// How long the average has been past a threshold: the memory a kind that waits (the step
/// policy's `for_secs`) keeps between evaluations. Times are the evaluation clock's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sustain {
    pub above_since: Option<Duration>,
    pub below_since: Option<Duration>,
}

impl Sustain {
    pub fn reset(&mut self) {
        *self = Sustain::default();
    }
}

/// The rules that changed (or held) the recommendation, as they are applied. A detail is
/// formatted only for a rule that is recorded: the simulator makes millions of evaluations.
#[derive(Debug, Default)]
pub struct Rules(pub Vec<RuleApplied>);

impl Rules {
    /// Records `rule` taking the size `from` -> `to` (when it changed it, or always for the
    /// rules that explain a hold) and returns `to`.
    pub fn apply(
        &mut self,
        rule: Rule,
        from: u32,
        to: u32,
        detail: impl FnOnce() -> String,
    ) -> u32 {
        if from != to || rule == Rule::Sustain || rule == Rule::MissingMetrics {
            self.0.push(RuleApplied {
                rule,
                from,
                to,
                detail: detail(),
            });
        }
        to
    }
}

/// What a policy kind decides by itself.
pub trait Kind {
    /// One line on what it does, for the simulator's table.
    fn describe(&self) -> String;
    /// The loads, percent, at which it acts, each with a name (marked on the dashboard's chart).
    fn load_marks(&self) -> Vec<(f64, &'static str)>;
    /// Its settings out of range, naming the field.
    fn validate(&self, max_instances: u32) -> Result<(), ConfigError>;
    /// Where an average of `average` percent points.
    fn direction(&self, average: f64) -> Direction;
    /// The load an instance without a fresh metric counts at when the others point to a
    /// scale-in (HPA: the target); `None`: it is not counted.
    fn scale_in_level(&self) -> Option<f64>;
    /// The load an instance being replaced counts at when the loads point nowhere.
    fn resting_level(&self) -> f64;
    /// The size it recommends for the counted loads at `now`.
    fn recommend(
        &self,
        counted: &Counted,
        sustain: &mut Sustain,
        now: Duration,
        rules: &mut Rules,
    ) -> u32;
    /// The recommendation after the kind's own hold (target tracking's tolerance).
    fn settle(&self, recommended: u32, _counted: &Counted, _rules: &mut Rules) -> u32 {
        recommended
    }
}
