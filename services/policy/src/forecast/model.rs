//! The forecaster's model, pure and deterministic: the group's recorded demand in 5-minute slots,
//! a seasonal profile with its daily and weekly cycles (the same slot one and two weeks back
//! where the history reaches, else the same slot on the last three days), scaled by how the last
//! hour ran against that profile (the correction fading over six hours); beside it the
//! seasonal-naive baseline (the same slot a week back, else a day back).

use super::DemandSample;

/// The forecast's resolution.
pub const SLOT_MS: i64 = 5 * 60_000;
/// Slots in a day and in a week.
pub const DAY: i64 = 24 * 12;
pub const WEEK: i64 = 7 * DAY;
/// The forecast's reach: 48 hours.
pub const HORIZON: i64 = 2 * DAY;
/// How many weeks, and days, back the profile averages.
const WEEKS_BACK: i64 = 2;
const DAYS_BACK: i64 = 3;
/// The last hour, against which the level is corrected.
const LEVEL_SLOTS: i64 = 12;
/// How fast the level correction fades with the horizon (six hours).
const LEVEL_FADE_SLOTS: f64 = 72.0;

/// Which model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// The seasonal profile with the level correction (the one that acts).
    Seasonal,
    /// The same slot a week back (a day back while the history is shorter than a week).
    SeasonalNaive,
}

/// The demand in slots: slot `i` is `[(first + i) * SLOT_MS, (first + i + 1) * SLOT_MS)`, its
/// value the mean of the samples in it, `None` where none was recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    first: i64,
    values: Vec<Option<f64>>,
}

impl Series {
    /// From samples in any order (samples at or after `until_ms` are left out).
    pub fn from_samples<'a>(
        samples: impl IntoIterator<Item = &'a DemandSample>,
        until_ms: i64,
    ) -> Series {
        let mut sums: Vec<(i64, f64, u32)> = Vec::new();
        for sample in samples {
            if sample.at_ms >= until_ms || !sample.capacities.is_finite() {
                continue;
            }
            let slot = sample.at_ms.div_euclid(SLOT_MS);
            match sums.last_mut() {
                Some((last, sum, count)) if *last == slot => {
                    *sum += sample.capacities;
                    *count += 1;
                }
                _ => sums.push((slot, sample.capacities, 1)),
            }
        }
        sums.sort_by_key(|(slot, _, _)| *slot);
        let Some(first) = sums.first().map(|(slot, _, _)| *slot) else {
            return Series::default();
        };
        let last = sums.last().map_or(first, |(slot, _, _)| *slot);
        let mut values = vec![None; usize::try_from(last - first + 1).unwrap_or(0)];
        for (slot, sum, count) in sums {
            let index = usize::try_from(slot - first).unwrap_or(0);
            let mean = sum / f64::from(count);
            values[index] = Some(match values[index] {
                // The same slot twice (samples out of order): the two means, averaged.
                Some(earlier) => (earlier + mean) / 2.0,
                None => mean,
            });
        }
        Series { first, values }
    }

    /// The value of slot `slot` (absolute), if recorded.
    pub fn at(&self, slot: i64) -> Option<f64> {
        let index = usize::try_from(slot - self.first).ok()?;
        self.values.get(index).copied().flatten()
    }

    /// How much history there is, from the first slot to the last, in slots.
    pub fn span(&self) -> i64 {
        self.values.len() as i64
    }

    pub fn first_slot(&self) -> i64 {
        self.first
    }

    pub fn end_slot(&self) -> i64 {
        self.first + self.values.len() as i64
    }
}

/// The mean of the recorded values at `slot - k * period` for k = 1.., taking only slots before
/// `known_until` and at most `count` of them.
fn seasonal_mean(
    series: &Series,
    slot: i64,
    period: i64,
    count: i64,
    known_until: i64,
) -> Option<f64> {
    let mut k = ((slot - known_until) / period + 1).max(1);
    let (mut sum, mut n) = (0.0, 0);
    while n < count {
        let back = slot - k * period;
        if back < series.first_slot() {
            break;
        }
        if let Some(value) = series.at(back) {
            sum += value;
            n += 1;
        }
        k += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// The seasonal profile at `slot`, from what was known before `known_until`.
fn profile(series: &Series, slot: i64, known_until: i64) -> Option<f64> {
    let week_reached = known_until - series.first_slot() >= WEEK;
    if week_reached && let Some(weekly) = seasonal_mean(series, slot, WEEK, WEEKS_BACK, known_until)
    {
        return Some(weekly);
    }
    seasonal_mean(series, slot, DAY, DAYS_BACK, known_until)
}

fn naive(series: &Series, slot: i64, known_until: i64) -> Option<f64> {
    let week_reached = known_until - series.first_slot() >= WEEK;
    if week_reached && let Some(weekly) = seasonal_mean(series, slot, WEEK, 1, known_until) {
        return Some(weekly);
    }
    seasonal_mean(series, slot, DAY, 1, known_until)
}

/// The forecast from slot `from` (the history known before it) for `slots` slots: one value per
/// slot, demand in instance capacities. A slot no cycle reaches gets the last known level.
pub fn forecast(series: &Series, from: i64, slots: i64, model: Model) -> Vec<f64> {
    let last_known = (from - LEVEL_SLOTS * 24..from)
        .rev()
        .find_map(|slot| series.at(slot))
        .unwrap_or(0.0);
    let level = match model {
        Model::SeasonalNaive => 1.0,
        Model::Seasonal => {
            let (mut actual, mut expected) = (0.0, 0.0);
            for slot in from - LEVEL_SLOTS..from {
                if let (Some(a), Some(p)) = (series.at(slot), profile(series, slot, slot)) {
                    actual += a;
                    expected += p;
                }
            }
            if expected > 1e-9 {
                (actual / expected).clamp(0.5, 2.0)
            } else {
                1.0
            }
        }
    };
    (from..from + slots)
        .map(|slot| {
            let seasonal = match model {
                Model::Seasonal => profile(series, slot, from),
                Model::SeasonalNaive => naive(series, slot, from),
            };
            let fade = (-((slot - from) as f64) / LEVEL_FADE_SLOTS).exp();
            seasonal.map_or(last_known, |s| (s * (1.0 + (level - 1.0) * fade)).max(0.0))
        })
        .collect()
}

/// How a model's forecasts did over a past stretch: each hour forecast from its start, as the
/// live forecaster refreshes, and scored against what came.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// The absolute error over the demand, both summed (WAPE), percent.
    pub error_percent: f64,
    /// The share of the slots where the forecast was under the demand, percent.
    pub under_percent: f64,
    /// Slots scored.
    pub slots: u32,
}

/// Scores `model` on the `hours` hours before slot `until`.
pub fn backtest(series: &Series, until: i64, hours: i64, model: Model) -> Score {
    let (mut error, mut demand, mut under, mut slots) = (0.0, 0.0, 0u32, 0u32);
    for hour in 0..hours {
        let from = until - (hours - hour) * 12;
        let predicted = forecast(series, from, 12, model);
        for (offset, value) in predicted.iter().enumerate() {
            if let Some(actual) = series.at(from + offset as i64) {
                error += (value - actual).abs();
                demand += actual;
                under += u32::from(*value < actual);
                slots += 1;
            }
        }
    }
    Score {
        error_percent: if demand > 1e-9 {
            100.0 * error / demand
        } else {
            0.0
        },
        under_percent: if slots > 0 {
            100.0 * f64::from(under) / f64::from(slots)
        } else {
            0.0
        },
        slots,
    }
}
