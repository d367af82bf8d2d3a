//! The forecaster's state in the policy: the demand recorded minute by minute, the launch-to-in-
//! service times of recent launches, the forecast made hourly and its check of itself, and the
//! floor it sets.

use std::collections::{HashSet, VecDeque};

use super::model::{self, Model, SLOT_MS, Score, Series};
use super::{DemandSample, MIN_HISTORY_MS, PredictiveConfig, PredictiveMode, REFRESH_MS};
use crate::policy::ObservedInstance;

/// How many recent launches the lead time is measured on.
const LEADS_KEPT: usize = 20;
/// How many hours the forecaster scores itself on.
const CHECK_HOURS: i64 = 24;
/// Fewer scorable hours than this and the check says nothing (the forecaster is trusted, as it
/// is when its 24 hours of history first come).
const CHECK_MIN_HOURS: i64 = 6;
/// How often it scores itself.
const CHECK_EVERY_MS: i64 = 3_600_000;
/// An instance that came into service later than this after its launch is not timed (it failed
/// some other way, and is replaced).
const TIMED_WITHIN: std::time::Duration = std::time::Duration::from_secs(3_600);
/// How many timed instances are remembered before those past `TIMED_WITHIN` are forgotten.
const TIMED_KEPT: usize = 64;
/// Samples kept for the store while it does not take them (a day).
const UNSAVED_KEPT: usize = 1_440;
/// The lead time while no launch of this group was timed.
const UNMEASURED_LEAD_MS: u64 = 300_000;
/// How far ahead the status shows the forecast.
const SHOWN_SLOTS: usize = 24;

/// The forecaster's memory between evaluations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictive {
    /// The minute being recorded: its start, the sum of the demands seen in it, how many.
    minute: Option<(i64, f64, u32)>,
    /// The recorded demand, oldest first, as far back as the config keeps it.
    history: VecDeque<DemandSample>,
    /// Samples recorded since the store last took them.
    unsaved: Vec<DemandSample>,
    /// Instances already timed (young ones: older ones are never timed).
    timed: HashSet<String>,
    /// Launch-to-in-service times of recent launches, milliseconds, oldest first.
    leads: VecDeque<u64>,
    made: Option<Made>,
}

/// A forecast as made.
#[derive(Clone, Debug, PartialEq)]
struct Made {
    at_ms: i64,
    /// The first slot forecast (the slot of `at_ms`).
    from_slot: i64,
    values: Vec<f64>,
    /// When the forecaster last scored itself.
    checked_at_ms: i64,
    score: Option<Score>,
    baseline: Option<Score>,
    /// Past the error bound at the last check: acting is off until it recovers.
    fallen_back: bool,
}

/// What the forecaster says at one evaluation: for the decision record, the status and the
/// dashboard.
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastView {
    /// The configured mode.
    pub mode: PredictiveMode,
    /// True when it raised (or may raise) the floor now: `forecast-and-scale`, a forecast made
    /// on 24 hours of history, and the check not failed.
    pub acting: bool,
    /// Hours of demand recorded.
    pub history_hours: f64,
    /// When the forecast was made, if one has been (ms since the Unix epoch).
    pub made_at_ms: Option<i64>,
    /// The most demand forecast over the next lead time, instance capacities.
    pub demand: f64,
    /// The lead time: the recent launches' 95th percentile, or the configured floor.
    pub lead_secs: u64,
    /// Launches the lead time was measured on.
    pub lead_samples: u32,
    /// The fleet that demand needs at the target load.
    pub floor: u32,
    /// The load per instance the floor is sized for, percent.
    pub target_percent: f64,
    /// The last check: the error (WAPE) of the last 24 hours' hourly forecasts, the share of
    /// the time under-forecast, and the seasonal-naive baseline's error over the same hours.
    pub error_percent: Option<f64>,
    pub under_percent: Option<f64>,
    pub baseline_error_percent: Option<f64>,
    /// True while the check's error is past `max_error_percent` (forecast-only by itself).
    pub fallen_back: bool,
    /// The forecast demand of the next two hours, a value each 5 minutes: (slot start in ms
    /// since the Unix epoch, capacities).
    pub next: Vec<(i64, f64)>,
}

impl Predictive {
    /// Records what one evaluation saw: the in-service demand (capacities, `None` when no
    /// instance is in service), and which instances came into service (the lead time); makes
    /// the forecast again when it is due.
    /// Without `config` (no `[controller.predictive]`) the demand and the lead times are still
    /// recorded, with the default retention, and no forecast is made.
    pub fn observe(
        &mut self,
        config: Option<&PredictiveConfig>,
        now_ms: i64,
        demand: Option<f64>,
        instances: &[ObservedInstance],
        uptime: std::time::Duration,
    ) {
        let demand = demand.filter(|d| d.is_finite());
        let minute = now_ms.div_euclid(60_000) * 60_000;
        match &mut self.minute {
            Some((at, sum, count)) if *at == minute => {
                if let Some(demand) = demand {
                    *sum += demand;
                    *count += 1;
                }
            }
            _ => {
                if let Some((at, sum, count)) = self.minute.take()
                    && count > 0
                {
                    self.push(DemandSample {
                        at_ms: at,
                        capacities: sum / f64::from(count),
                    });
                }
                self.minute = demand.map(|d| (minute, d, 1)).or(Some((minute, 0.0, 0)));
            }
        }
        let days = config.map_or(PredictiveConfig::default().history_days, |c| c.history_days);
        let keep_from = now_ms - i64::from(days) * 86_400_000;
        while self.history.front().is_some_and(|s| s.at_ms < keep_from) {
            self.history.pop_front();
        }

        // An instance launched while this controller watched (younger than its uptime) is
        // timed when it is first seen in service: its age then is its launch-to-in-service time.
        for instance in instances {
            if instance.has_reported
                && instance.age < uptime
                && instance.age <= TIMED_WITHIN
                && !self.timed.contains(&instance.instance_id)
            {
                self.timed.insert(instance.instance_id.clone());
                self.leads.push_back(instance.age.as_millis() as u64);
                if self.leads.len() > LEADS_KEPT {
                    self.leads.pop_front();
                }
            }
        }
        if self.timed.len() > TIMED_KEPT {
            let young: HashSet<&str> = instances
                .iter()
                .filter(|i| i.age <= TIMED_WITHIN)
                .map(|i| i.instance_id.as_str())
                .collect();
            self.timed.retain(|id| young.contains(id.as_str()));
        }

        let Some(config) = config else {
            return;
        };
        let due = match &self.made {
            None => true,
            Some(made) => now_ms - made.at_ms >= REFRESH_MS || now_ms < made.at_ms,
        };
        if due && self.history_ms(now_ms) >= MIN_HISTORY_MS {
            self.made = Some(self.make(config, now_ms, self.made.as_ref()));
        }
    }

    fn push(&mut self, sample: DemandSample) {
        self.history.push_back(sample);
        self.unsaved.push(sample);
        // Nobody takes them (the simulator), or the store has been failing for a day: the
        // oldest go.
        if self.unsaved.len() > 2 * UNSAVED_KEPT {
            self.unsaved.drain(..UNSAVED_KEPT);
        }
    }

    /// How much history there is at `now_ms`.
    fn history_ms(&self, now_ms: i64) -> i64 {
        self.history.front().map_or(0, |first| now_ms - first.at_ms)
    }

    /// The forecast from now; the check made again when the last is an hour old.
    fn make(&self, config: &PredictiveConfig, now_ms: i64, last: Option<&Made>) -> Made {
        let series = Series::from_samples(&self.history, now_ms);
        let from_slot = now_ms.div_euclid(SLOT_MS);
        let values = model::forecast(&series, from_slot, model::HORIZON, Model::Seasonal);
        if let Some(last) = last
            && (last.checked_at_ms..last.checked_at_ms + CHECK_EVERY_MS).contains(&now_ms)
        {
            return Made {
                at_ms: now_ms,
                from_slot,
                values,
                ..last.clone()
            };
        }
        // Scored only on hours that had 24 hours of history before them.
        let scorable = ((from_slot - series.first_slot() - model::DAY) / 12).clamp(0, CHECK_HOURS);
        let (score, baseline) = if scorable >= CHECK_MIN_HOURS {
            (
                Some(model::backtest(
                    &series,
                    from_slot,
                    scorable,
                    Model::Seasonal,
                )),
                Some(model::backtest(
                    &series,
                    from_slot,
                    scorable,
                    Model::SeasonalNaive,
                )),
            )
        } else {
            (None, None)
        };
        let fallen_back = score.is_some_and(|s| s.error_percent > config.max_error_percent);
        Made {
            at_ms: now_ms,
            from_slot,
            values,
            checked_at_ms: now_ms,
            score,
            baseline,
            fallen_back,
        }
    }

    /// The lead time, milliseconds: the 95th percentile of the recent launches' times to
    /// service, at least `min_lead_secs`; before any launch was timed, EC2's scheduling buffer
    /// (300 s) at least.
    pub fn lead_ms(&self, config: &PredictiveConfig) -> u64 {
        let floor = config.min_lead_secs * 1_000;
        if self.leads.is_empty() {
            return floor.max(UNMEASURED_LEAD_MS);
        }
        let mut sorted: Vec<u64> = self.leads.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (sorted.len() as f64 * 0.95).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].max(floor)
    }

    /// What the forecaster says now, sized for `target_percent` per instance.
    pub fn view(
        &self,
        config: &PredictiveConfig,
        target_percent: f64,
        now_ms: i64,
    ) -> ForecastView {
        let lead_ms = self.lead_ms(config);
        let made = self.made.as_ref();
        let value_at = |slot: i64| -> Option<f64> {
            let made = made?;
            let index = usize::try_from(slot - made.from_slot).ok()?;
            made.values.get(index).copied()
        };
        // The slots the lead time reaches, and the one after: a slot's value is its mean, and
        // on a rise the demand at the lead time's end is above the mean of its slot.
        let first = now_ms.div_euclid(SLOT_MS);
        let last = (now_ms + lead_ms as i64).div_euclid(SLOT_MS) + 1;
        let demand = (first..=last).filter_map(value_at).fold(0.0_f64, f64::max);
        let floor = (demand / (target_percent / 100.0) - 1e-9).ceil().max(0.0) as u32;
        let ready = made.is_some() && self.history_ms(now_ms) >= MIN_HISTORY_MS;
        let fallen_back = made.is_some_and(|m| m.fallen_back);
        ForecastView {
            mode: config.mode,
            acting: ready && !fallen_back && config.mode == PredictiveMode::ForecastAndScale,
            history_hours: self.history_ms(now_ms) as f64 / 3_600_000.0,
            made_at_ms: made.map(|m| m.at_ms),
            demand,
            lead_secs: lead_ms.div_ceil(1_000),
            lead_samples: self.leads.len() as u32,
            floor,
            target_percent,
            error_percent: made.and_then(|m| m.score).map(|s| s.error_percent),
            under_percent: made.and_then(|m| m.score).map(|s| s.under_percent),
            baseline_error_percent: made.and_then(|m| m.baseline).map(|s| s.error_percent),
            fallen_back,
            next: (first..first + SHOWN_SLOTS as i64)
                .filter_map(|slot| value_at(slot).map(|v| (slot * SLOT_MS, v)))
                .collect(),
        }
    }

    /// The samples recorded since the last call, for the store.
    pub fn take_unsaved(&mut self) -> Vec<DemandSample> {
        std::mem::take(&mut self.unsaved)
    }

    /// Takes up history another leader recorded (from the store), merged with what this one
    /// has; the forecast is made again at the next evaluation.
    pub fn load_history(&mut self, samples: impl IntoIterator<Item = DemandSample>) {
        let mut all: Vec<DemandSample> = self.history.drain(..).chain(samples).collect();
        all.sort_by_key(|s| s.at_ms);
        all.dedup_by_key(|s| s.at_ms);
        self.history = all.into();
        self.made = None;
    }

    /// The recent launch-to-in-service times (ms), for the memory a new leader takes up.
    pub fn leads(&self) -> Vec<u64> {
        self.leads.iter().copied().collect()
    }

    pub fn recall_leads(&mut self, leads: &[u64]) {
        self.leads = leads.iter().rev().take(LEADS_KEPT).rev().copied().collect();
    }

    /// The recorded demand, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &DemandSample> {
        self.history.iter()
    }
}
