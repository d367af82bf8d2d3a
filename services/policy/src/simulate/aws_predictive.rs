//! The EC2 predictive scaling reference, as documented: an hourly forecast of the load for the
//! next 48 hours, made from up to 14 days of the group's history once 24 hours of it exist,
//! refreshed every hour; the capacity each hour needs (its forecast load at the target) is set as
//! the minimum capacity from the scheduling buffer (300 s) before the hour starts; the group's
//! target tracking policy (`AwsTarget`) scales above it: desired = max(forecast, target
//! tracking). AWS does not publish its model; this one forecasts each hour as the mean of the
//! same hour of the week over the last two weeks where the history reaches, else the same hour
//! of the day over the last three days.

use super::reference::{AwsTarget, Reference};
use crate::instance::Health;
use crate::policy::Observation;

const HOUR: u64 = 3_600;
const DAY_HOURS: u64 = 24;
const WEEK_HOURS: u64 = 7 * 24;

#[derive(Clone, Debug)]
pub struct AwsPredictive {
    pub target_tracking: AwsTarget,
    pub buffer_secs: u64,
    /// The demand (instance capacities) of each whole hour recorded, by hour since the trace's
    /// clock began: sum and samples.
    hours: Vec<(f64, u32)>,
    /// The forecast capacity by hour, from `forecast_from`.
    forecast: Vec<u32>,
    forecast_from: u64,
    made_at: Option<u64>,
}

impl AwsPredictive {
    pub fn new(target: f64, min: u32, max: u32) -> AwsPredictive {
        AwsPredictive {
            target_tracking: AwsTarget::new(target, min, max),
            buffer_secs: 300,
            hours: Vec::new(),
            forecast: Vec::new(),
            forecast_from: 0,
            made_at: None,
        }
    }

    /// Takes up history (demand per second from second 0, the warm-up's).
    pub fn preload(&mut self, demand: &[f64]) {
        for (second, value) in demand.iter().enumerate() {
            self.record(second as u64, *value);
        }
    }

    fn record(&mut self, now: u64, demand: f64) {
        let hour = (now / HOUR) as usize;
        if self.hours.len() <= hour {
            self.hours.resize(hour + 1, (0.0, 0));
        }
        self.hours[hour].0 += demand;
        self.hours[hour].1 += 1;
    }

    /// One second: the target tracking's sample, and the demand served recorded.
    pub fn sample(&mut self, observation: &Observation, now: u64) {
        self.target_tracking.sample(observation);
        let served: f64 = observation
            .instances
            .iter()
            .filter(|i| i.health == Some(Health::Healthy))
            .filter_map(|i| i.load)
            .sum();
        self.record(now, served / 100.0);
    }

    fn hour_mean(&self, hour: u64) -> Option<f64> {
        let (sum, n) = *self.hours.get(hour as usize)?;
        (n > 0).then(|| sum / f64::from(n))
    }

    fn seasonal(&self, hour: u64, known_until: u64, period: u64, count: usize) -> Option<f64> {
        let mut values = Vec::new();
        let mut k = (hour.saturating_sub(known_until) / period + 1).max(1);
        while values.len() < count && k * period <= hour {
            if let Some(v) = self.hour_mean(hour - k * period) {
                values.push(v);
            }
            k += 1;
        }
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    fn refresh(&mut self, now: u64) {
        let known_until = now / HOUR; // whole hours only
        let first = self.hours.iter().position(|(_, n)| *n > 0).unwrap_or(0) as u64;
        if known_until.saturating_sub(first) < DAY_HOURS {
            return;
        }
        let week = known_until - first >= WEEK_HOURS;
        let min = self.target_tracking.min;
        self.forecast = (known_until..known_until + 2 * DAY_HOURS)
            .map(|hour| {
                let load = week
                    .then(|| self.seasonal(hour, known_until, WEEK_HOURS, 2))
                    .flatten()
                    .or_else(|| self.seasonal(hour, known_until, DAY_HOURS, 3))
                    .unwrap_or(0.0);
                ((load * 100.0 / self.target_tracking.target - 1e-9).ceil() as u32).max(min)
            })
            .collect();
        self.forecast_from = known_until;
        self.made_at = Some(now);
    }

    /// The forecast capacity in force at `now` (the next hour's from its buffer on).
    fn forecast_capacity(&self, now: u64) -> Option<u32> {
        let hour = (now + self.buffer_secs) / HOUR;
        let index = hour.checked_sub(self.forecast_from)?;
        self.forecast.get(index as usize).copied()
    }
}

impl Reference for AwsPredictive {
    fn period(&self) -> u64 {
        60
    }

    fn desired(&mut self, observation: &Observation, now: u64) -> u32 {
        if self.made_at.is_none_or(|at| now >= at + HOUR) {
            self.refresh(now);
        }
        let reactive = self.target_tracking.desired(observation, now);
        let tt = &self.target_tracking;
        self.forecast_capacity(now)
            .map_or(reactive, |f| reactive.max(f))
            .clamp(tt.min, tt.max)
    }
}
