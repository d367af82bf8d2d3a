//! Demand traces for the simulator: built-in shapes and a user's CSV, resampled to one value per
//! second. Demand is in units of instance capacity: an instance at 100 % serves one unit.

use crate::random::SplitMix64;
use std::f64::consts::PI;

/// Longest trace accepted: 90 days at one value per second.
pub const MAX_SECONDS: usize = 90 * 86_400;

/// Largest demand accepted, in instance capacities.
pub const MAX_DEMAND: f64 = 100_000.0;

/// One demand value per second, starting at second 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub name: String,
    pub demand: Vec<f64>,
}

/// A trace that cannot be used, with where and why.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("{0}")]
    Invalid(String),
}

/// The built-in demand shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Constant, halfway between base and peak.
    Steady,
    /// A day's cycle: base at midnight, peak at noon (period 24 h).
    Diurnal,
    /// Straight from base to peak over the whole duration.
    Ramp,
    /// Base, then peak for 5 % of the duration starting at 40 %, with instant edges.
    Spike,
    /// Hourly climbs from base to peak, each ending in an instant drop.
    Sawtooth,
    /// Base until 30 % of the duration, peak two minutes later, then an exponential decay back
    /// to base (time constant 30 minutes).
    FlashCrowd,
    /// Office hours, week after week from a Monday 00:00: on weekdays base at night, a steep
    /// ramp from 07:00 to peak at 09:00, a lunch dip, down to base from 17:00 to 19:00; on
    /// weekends a fifth of the span around midday. Each day's peak varies by up to 10 %.
    OfficeWeek,
    /// A consumer service, week after week from a Monday 00:00: base at 04:00, a slow rise
    /// through the day to an evening peak from 19:00 to 22:00, back to base by 02:00; weekends
    /// rise from 09:00 and peak a quarter higher. Each day's peak varies by up to 10 %.
    ConsumerWeek,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Steady => "steady",
            Shape::Diurnal => "diurnal",
            Shape::Ramp => "ramp",
            Shape::Spike => "spike",
            Shape::Sawtooth => "sawtooth",
            Shape::FlashCrowd => "flash-crowd",
            Shape::OfficeWeek => "office-week",
            Shape::ConsumerWeek => "consumer-week",
        }
    }

    pub const ALL: [Shape; 8] = [
        Shape::Steady,
        Shape::Diurnal,
        Shape::Ramp,
        Shape::Spike,
        Shape::Sawtooth,
        Shape::FlashCrowd,
        Shape::OfficeWeek,
        Shape::ConsumerWeek,
    ];
}

/// 0 to 1 over `x` in 0 to 1, smoothly (a half cosine).
fn ease(x: f64) -> f64 {
    (1.0 - (PI * x.clamp(0.0, 1.0)).cos()) / 2.0
}

/// An office day's demand at `hour`, as a share of the span.
fn office_day(hour: f64, weekend: bool) -> f64 {
    if weekend {
        return 0.2 * ease((hour - 9.0) / 4.0) * (1.0 - ease((hour - 15.0) / 4.0));
    }
    let lunch = 0.15 * ease((hour - 12.0) / 0.5) * (1.0 - ease((hour - 13.0) / 0.5));
    ease((hour - 7.0) / 2.0) * (1.0 - ease((hour - 17.0) / 2.0)) - lunch
}

/// A consumer day's demand at `hour`, as a share of the span.
fn consumer_day(hour: f64, weekend: bool) -> f64 {
    // Past midnight, the evening's fall goes on until 02:00.
    let evening = |h: f64| 1.0 - ease((h - 22.0) / 4.0);
    let hour = if hour < 4.0 { hour + 24.0 } else { hour };
    let (rise_from, scale) = if weekend { (9.0, 1.0) } else { (6.0, 0.8) };
    let day = 0.45 * ease((hour - rise_from) / 5.0);
    let peak = 0.55 * ease((hour - 17.0) / 2.0);
    scale * (day + peak) * evening(hour)
}

/// How a built-in shape is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeParams {
    pub duration_secs: usize,
    /// Lowest demand, in instance capacities.
    pub base: f64,
    /// Highest demand, in instance capacities.
    pub peak: f64,
    /// Multiplicative noise: each second's value times (1 + noise * u), u uniform in [-1, 1].
    pub noise: f64,
    pub seed: u64,
}

impl Default for ShapeParams {
    fn default() -> Self {
        ShapeParams {
            duration_secs: 86_400,
            base: 0.6,
            peak: 2.4,
            noise: 0.0,
            seed: 1,
        }
    }
}

impl Trace {
    /// Draws a built-in shape.
    pub fn shape(shape: Shape, params: &ShapeParams) -> Result<Trace, TraceError> {
        let ShapeParams {
            duration_secs,
            base,
            peak,
            noise,
            seed,
        } = *params;
        if duration_secs == 0 || duration_secs > MAX_SECONDS {
            return Err(TraceError::Invalid(format!(
                "duration {duration_secs}s: it must be within 1s-90d"
            )));
        }
        if !(0.0..=MAX_DEMAND).contains(&base) || !(base..=MAX_DEMAND).contains(&peak) {
            return Err(TraceError::Invalid(format!(
                "base {base} and peak {peak}: they must satisfy 0 <= base <= peak <= {MAX_DEMAND}"
            )));
        }
        if !(0.0..1.0).contains(&noise) {
            return Err(TraceError::Invalid(format!(
                "noise {noise}: it must be a fraction within 0-1"
            )));
        }
        let span = peak - base;
        let length = duration_secs as f64;
        let mut random = SplitMix64(seed);
        // Each day's peak, as a share of the span (the weekly shapes).
        let mut days = SplitMix64(seed ^ 0x5eed_da75);
        let day_peaks: Vec<f64> = (0..=duration_secs / 86_400)
            .map(|_| 0.9 + 0.1 * days.next_f64())
            .collect();
        let demand = (0..duration_secs)
            .map(|second| {
                let t = second as f64;
                let level = match shape {
                    Shape::Steady => base + span / 2.0,
                    Shape::Diurnal => base + span * (1.0 - (2.0 * PI * t / 86_400.0).cos()) / 2.0,
                    Shape::Ramp => base + span * t / (length - 1.0).max(1.0),
                    Shape::Spike => {
                        if t >= 0.40 * length && t < 0.45 * length {
                            peak
                        } else {
                            base
                        }
                    }
                    Shape::Sawtooth => base + span * (t % 3_600.0) / 3_600.0,
                    Shape::FlashCrowd => {
                        let start = (0.30 * length).floor();
                        let rise = 120.0;
                        if t < start {
                            base
                        } else if t < start + rise {
                            base + span * (t - start) / rise
                        } else {
                            base + span * (-(t - start - rise) / 1_800.0).exp()
                        }
                    }
                    Shape::OfficeWeek | Shape::ConsumerWeek => {
                        let day = second / 86_400;
                        let hour = (second % 86_400) as f64 / 3_600.0;
                        let weekend = day % 7 >= 5;
                        let share = match shape {
                            Shape::OfficeWeek => office_day(hour, weekend),
                            _ => consumer_day(hour, weekend),
                        };
                        base + span * share * day_peaks[day]
                    }
                };
                if noise > 0.0 {
                    (level * (1.0 + noise * (2.0 * random.next_f64() - 1.0))).max(0.0)
                } else {
                    level
                }
            })
            .collect();
        Ok(Trace {
            name: shape.name().to_string(),
            demand,
        })
    }

    /// The trace without its first `seconds` (a warm-up that feeds the forecaster's history).
    pub fn after(&self, seconds: usize) -> &[f64] {
        &self.demand[seconds.min(self.demand.len())..]
    }

    /// Reads `time,demand` rows (seconds from the start, instance capacities). Blank lines and
    /// lines starting with `#` are skipped, as is a header on the first line (a row in which
    /// neither field is a number; a first row with a number in it is data, checked as such). Times must rise;
    /// the trace holds each value until the next row.
    pub fn from_csv(name: &str, text: &str) -> Result<Trace, TraceError> {
        let mut points: Vec<(f64, f64)> = Vec::new();
        let mut first = true;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let row = raw.trim();
            if row.is_empty() || row.starts_with('#') {
                continue;
            }
            let fail = |problem: String| TraceError::Line { line, problem };
            let fields: Vec<&str> = row.split(',').map(str::trim).collect();
            let is_first = std::mem::replace(&mut first, false);
            if fields.len() != 2 {
                return Err(fail(format!(
                    "expected 2 fields (time,demand), found {}",
                    fields.len()
                )));
            }
            let (time, demand) = (fields[0].parse::<f64>(), fields[1].parse::<f64>());
            // Only a header that holds no number is skipped: a first row with one is data.
            if is_first && time.is_err() && demand.is_err() {
                continue;
            }
            let (Ok(time), Ok(demand)) = (time, demand) else {
                return Err(fail(format!("`{row}` is not two numbers")));
            };
            if !time.is_finite() || time < 0.0 {
                return Err(fail(format!(
                    "time {time} must be a number of seconds >= 0"
                )));
            }
            if time > MAX_SECONDS as f64 {
                return Err(fail(format!("time {time} is past 90 days")));
            }
            if let Some(&(previous, _)) = points.last()
                && time <= previous
            {
                return Err(fail(format!(
                    "time {time} does not rise (the row before is at {previous})"
                )));
            }
            if !demand.is_finite() || !(0.0..=MAX_DEMAND).contains(&demand) {
                return Err(fail(format!(
                    "demand {demand} must be within 0-{MAX_DEMAND} instance capacities"
                )));
            }
            points.push((time, demand));
        }
        let Some(&(last, _)) = points.last() else {
            return Err(TraceError::Invalid("no data rows".to_string()));
        };
        let seconds = last.floor() as usize + 1;
        let mut demand = Vec::with_capacity(seconds);
        let mut next = 0;
        let mut value = points[0].1;
        for second in 0..seconds {
            while next < points.len() && points[next].0 <= second as f64 {
                value = points[next].1;
                next += 1;
            }
            demand.push(value);
        }
        Ok(Trace {
            name: name.to_string(),
            demand,
        })
    }
}

/// Parses a duration such as `90`, `90s`, `15m`, `6h` or `30d` into seconds.
pub fn parse_duration(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let value: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 15m, 6h or 30d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use s, m, h or d)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .filter(|s| (1..=MAX_SECONDS).contains(s))
        .ok_or_else(|| format!("`{text}` must be within 1s-90d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_held_per_second_and_headers_and_comments_are_skipped() {
        let trace =
            Trace::from_csv("t", "time,demand\n# a comment\n0,1\n2.5,3\n\n4,0.5\n").unwrap();
        assert_eq!(trace.demand, vec![1.0, 1.0, 1.0, 3.0, 0.5]);
    }

    #[test]
    fn bad_csv_names_the_line() {
        let cases = [
            ("0,1\n0,2\n", 2, "does not rise"),
            ("0,1\n1,-2\n", 2, "demand -2"),
            ("0,1\n1,NaN\n", 2, "demand NaN"),
            ("0,1\nx,y\n", 2, "not two numbers"),
            ("0,1,2\n", 1, "expected 2 fields"),
            ("0,1\n99999999,1\n", 2, "past 90 days"),
        ];
        for (text, line, words) in cases {
            match Trace::from_csv("t", text) {
                Err(TraceError::Line { line: at, problem }) => {
                    assert_eq!(at, line, "{text:?}");
                    assert!(problem.contains(words), "{text:?}: {problem}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(
            Trace::from_csv("t", "time,demand\n"),
            Err(TraceError::Invalid("no data rows".to_string()))
        );
    }

    #[test]
    fn shapes_stay_between_base_and_peak() {
        let params = ShapeParams {
            duration_secs: 7_200,
            ..ShapeParams::default()
        };
        for shape in Shape::ALL {
            let trace = Trace::shape(shape, &params).unwrap();
            assert_eq!(trace.demand.len(), 7_200);
            for &d in &trace.demand {
                assert!(
                    (params.base - 1e-9..=params.peak + 1e-9).contains(&d),
                    "{shape:?}: {d}"
                );
            }
        }
        let spike = Trace::shape(Shape::Spike, &params).unwrap();
        assert_eq!(spike.demand[2_879], params.base);
        assert_eq!(spike.demand[2_880], params.peak);
        assert_eq!(spike.demand[3_240], params.base);
        let ramp = Trace::shape(Shape::Ramp, &params).unwrap();
        assert_eq!(ramp.demand[0], params.base);
        assert!((ramp.demand[7_199] - params.peak).abs() < 1e-9);
    }

    #[test]
    fn durations_parse_with_units_and_are_bounded() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("6h"), Ok(21_600));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert!(parse_duration("91d").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
