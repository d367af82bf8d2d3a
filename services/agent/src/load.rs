//! Where the agent's load comes from: a simulated load that moves gradually (pure and seeded) or
//! the host's real CPU utilisation.

use std::time::Duration;

use autoscaler_policy::random::SplitMix64;

/// Parameters of the simulated load. All rates are per second of simulated time.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadModelConfig {
    /// Seed of the noise: the same seed and the same steps give the same loads.
    pub seed: u64,
    /// Load at start, 0 to 100 percent.
    pub initial: f64,
    /// The level the load moves towards before anyone sets one, 0 to 100 percent.
    pub target: f64,
    /// Largest change of the load in one second, in percentage points (the slope bound).
    pub max_slope: f64,
    /// Fraction of the distance to the target closed per second (mean reversion), 0 to 1.
    pub reversion: f64,
    /// Standard deviation of the noise over one second, in percentage points.
    pub noise: f64,
    /// How far the target wanders on its own around the level it was set to, in points.
    pub drift_amplitude: f64,
    /// Standard deviation of the target's wander over one second, in points.
    pub drift_rate: f64,
}

impl Default for LoadModelConfig {
    fn default() -> Self {
        LoadModelConfig {
            seed: 1,
            initial: 30.0,
            target: 40.0,
            max_slope: 3.0,
            reversion: 0.15,
            noise: 0.8,
            drift_amplitude: 10.0,
            drift_rate: 0.5,
        }
    }
}

/// A parameter of the load model that is out of its range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("load model: `{field}` is {value}, it must be {expected}")]
pub struct LoadConfigError {
    pub field: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

impl LoadModelConfig {
    pub fn validate(&self) -> Result<(), LoadConfigError> {
        let percent = |field, value: f64| (field, value, is_percent(value), "within 0-100");
        let checks: [(&'static str, f64, bool, &'static str); 7] = [
            percent("initial", self.initial),
            percent("target", self.target),
            (
                "max_slope",
                self.max_slope,
                self.max_slope.is_finite() && self.max_slope > 0.0 && self.max_slope <= 100.0,
                "above 0 and at most 100 points per second",
            ),
            (
                "reversion",
                self.reversion,
                (0.0..=1.0).contains(&self.reversion),
                "within 0-1",
            ),
            percent("noise", self.noise),
            percent("drift_amplitude", self.drift_amplitude),
            percent("drift_rate", self.drift_rate),
        ];
        match checks.into_iter().find(|(_, _, ok, _)| !ok) {
            Some((field, value, _, expected)) => Err(LoadConfigError {
                field,
                value,
                expected,
            }),
            None => Ok(()),
        }
    }
}

/// True for a finite value within 0-100.
pub fn is_percent(value: f64) -> bool {
    (0.0..=100.0).contains(&value)
}

/// A load that drifts, reverts towards its target with noise, and never moves faster than
/// `max_slope` points per second nor leaves 0-100. Pure: time passes only through [`step`].
///
/// [`step`]: LoadModel::step
#[derive(Clone, Debug)]
pub struct LoadModel {
    config: LoadModelConfig,
    rng: SplitMix64,
    value: f64,
    base_target: f64,
    drift: f64,
    hold: bool,
}

impl LoadModel {
    /// A model from a validated config.
    pub fn new(config: LoadModelConfig) -> Result<LoadModel, LoadConfigError> {
        config.validate()?;
        Ok(LoadModel {
            rng: SplitMix64(config.seed),
            value: config.initial,
            base_target: config.target,
            drift: 0.0,
            hold: false,
            config,
        })
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    /// The level the load currently moves towards: the set target plus its wander.
    pub fn effective_target(&self) -> f64 {
        (self.base_target + self.drift).clamp(0.0, 100.0)
    }

    /// Sets the level the load moves towards. With `hold` the target stops wandering.
    /// Returns false, changing nothing, when the target is not within 0-100.
    pub fn set_target(&mut self, target: f64, hold: bool) -> bool {
        if !is_percent(target) {
            return false;
        }
        self.base_target = target;
        self.hold = hold;
        if hold {
            self.drift = 0.0;
        }
        true
    }

    /// Advances the model by `elapsed` and returns the new load.
    pub fn step(&mut self, elapsed: Duration) -> f64 {
        let dt = elapsed.as_secs_f64();
        if dt <= 0.0 {
            return self.value;
        }
        let root_dt = dt.sqrt();
        if !self.hold {
            let amplitude = self.config.drift_amplitude;
            self.drift = (self.drift + self.config.drift_rate * root_dt * self.rng.gaussian())
                .clamp(-amplitude, amplitude);
        }
        let pull = (self.config.reversion * dt).min(1.0) * (self.effective_target() - self.value);
        let noise = self.config.noise * root_dt * self.rng.gaussian();
        let bound = self.config.max_slope * dt;
        let change = (pull + noise).clamp(-bound, bound);
        self.value = (self.value + change).clamp(0.0, 100.0);
        self.value
    }
}

/// Host CPU utilisation from `/proc/stat`, as the share of non-idle time between two samples.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Utilisation since the previous call, 0 to 100; the first call reports since boot.
    pub fn sample(&mut self) -> std::io::Result<f64> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let (busy, total) = parse_cpu_line(&stat).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no cpu line in /proc/stat")
        })?;
        let (last_busy, last_total) = self.last.unwrap_or((0, 0));
        self.last = Some((busy, total));
        let total_delta = total.saturating_sub(last_total);
        if total_delta == 0 {
            return Ok(0.0);
        }
        let busy_delta = busy.saturating_sub(last_busy);
        Ok((busy_delta as f64 * 100.0 / total_delta as f64).clamp(0.0, 100.0))
    }
}

/// (busy, total) jiffies from the aggregate `cpu` line; idle and iowait count as not busy.
fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_config() -> impl Strategy<Value = LoadModelConfig> {
        (
            any::<u64>(),
            0.0..=100.0f64,
            0.0..=100.0f64,
            0.01..=20.0f64,
            0.0..=1.0f64,
            0.0..=30.0f64,
            0.0..=50.0f64,
            0.0..=10.0f64,
        )
            .prop_map(
                |(
                    seed,
                    initial,
                    target,
                    max_slope,
                    reversion,
                    noise,
                    drift_amplitude,
                    drift_rate,
                )| {
                    LoadModelConfig {
                        seed,
                        initial,
                        target,
                        max_slope,
                        reversion,
                        noise,
                        drift_amplitude,
                        drift_rate,
                    }
                },
            )
    }

    /// A step of the model: time passing, or someone setting a target (maybe out of range).
    #[derive(Clone, Debug)]
    enum Event {
        Elapse(Duration),
        SetTarget(f64, bool),
    }

    fn arbitrary_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0u64..5_000).prop_map(|ms| Event::Elapse(Duration::from_millis(ms))),
            1 => (-50.0..150.0f64, any::<bool>()).prop_map(|(t, h)| Event::SetTarget(t, h)),
        ]
    }

    proptest! {
        #[test]
        fn load_never_moves_faster_than_its_slope_nor_leaves_0_to_100(
            config in arbitrary_config(),
            events in proptest::collection::vec(arbitrary_event(), 1..400),
        ) {
            let max_slope = config.max_slope;
            let mut model = LoadModel::new(config).unwrap();
            for event in events {
                let before = model.value();
                match event {
                    Event::Elapse(elapsed) => {
                        let after = model.step(elapsed);
                        prop_assert!((0.0..=100.0).contains(&after), "load {after} left 0-100");
                        let bound = max_slope * elapsed.as_secs_f64() + 1e-9;
                        prop_assert!((after - before).abs() <= bound,
                            "moved {} in {:?}, bound {}", after - before, elapsed, bound);
                    }
                    Event::SetTarget(target, hold) => {
                        let accepted = model.set_target(target, hold);
                        prop_assert_eq!(accepted, (0.0..=100.0).contains(&target));
                        prop_assert_eq!(model.value(), before, "setting a target made a jump");
                    }
                }
            }
        }

        #[test]
        fn same_seed_same_loads(config in arbitrary_config(), steps in 1usize..200) {
            let mut first = LoadModel::new(config.clone()).unwrap();
            let mut second = LoadModel::new(config).unwrap();
            for _ in 0..steps {
                let tick = Duration::from_millis(250);
                prop_assert_eq!(first.step(tick).to_bits(), second.step(tick).to_bits());
            }
        }
    }

    #[test]
    fn load_reaches_a_held_target_gradually() {
        let mut model = LoadModel::new(LoadModelConfig {
            initial: 10.0,
            noise: 0.0,
            ..LoadModelConfig::default()
        })
        .unwrap();
        assert!(model.set_target(90.0, true));
        let tick = Duration::from_millis(250);
        // At 3 points per second the 80 points take at least 26 seconds.
        for _ in 0..100 {
            model.step(tick);
        }
        assert!(model.value() < 10.0 + 3.0 * 25.0 + 1e-9);
        for _ in 0..400 {
            model.step(tick);
        }
        assert!((model.value() - 90.0).abs() < 1.0, "{}", model.value());
    }

    #[test]
    fn the_target_wanders_within_its_amplitude_unless_held() {
        let mut model = LoadModel::new(LoadModelConfig::default()).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2_000 {
            model.step(Duration::from_secs(1));
            seen.push(model.effective_target());
        }
        assert!(seen.iter().all(|t| (30.0..=50.0).contains(t)));
        assert!(
            seen.iter().any(|t| (t - 40.0).abs() > 1.0),
            "the target never moved"
        );
        model.set_target(70.0, true);
        model.step(Duration::from_secs(5));
        assert_eq!(model.effective_target(), 70.0);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let error = LoadModel::new(LoadModelConfig {
            max_slope: 0.0,
            ..LoadModelConfig::default()
        })
        .unwrap_err();
        assert_eq!(error.field, "max_slope");
        assert!(
            LoadModel::new(LoadModelConfig {
                target: f64::NAN,
                ..LoadModelConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn cpu_line_is_parsed() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu_line(stat), Some((200, 1000)));
        assert_eq!(parse_cpu_line("intr 1 2"), None);
        let mut sampler = CpuSampler::default();
        let first = sampler.sample().unwrap();
        assert!((0.0..=100.0).contains(&first));
    }
}
