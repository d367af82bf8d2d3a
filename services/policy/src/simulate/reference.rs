//! Reference policies, written from the documented behaviour of two autoscalers users know, so
//! that a simulation shows how a choice compares with them:
//! - Kubernetes' HorizontalPodAutoscaler (its replica calculator and default behaviour): every
//!   15 s, desired = ceil(ready * average / target) unless within a 10 % tolerance; instances
//!   still booting count as 0 % when that would scale out; scale-out limited to
//!   max(100 %, 4 instances) per period; scale-in stabilised over 300 s (the highest
//!   recommendation of the window wins).
//! - AWS EC2 Auto Scaling step scaling on CloudWatch alarms: the group's average CPU over
//!   1-minute periods (detailed monitoring); above 70 % for one period adds 1 instance
//!   (2 at 85 % and above); below 30 % for three periods removes 1; a 300 s cooldown after any
//!   scaling activity. Booting instances report no metric.

use std::collections::VecDeque;

use crate::instance::Health;
use crate::policy::Observation;

/// What a reference policy recommends, before the simulator picks instances.
pub trait Reference {
    /// Seconds between evaluations.
    fn period(&self) -> u64;
    /// Desired fleet size, within the bounds, given the instances listed (booting ones
    /// included) at second `now`.
    fn desired(&mut self, observation: &Observation, now: u64) -> u32;
}

/// Loads of the serving instances, and how many instances are still booting.
fn split(observation: &Observation) -> (Vec<f64>, usize) {
    let mut loads = Vec::new();
    let mut booting = 0;
    for instance in &observation.instances {
        match (instance.health, instance.load) {
            (Some(Health::Healthy), Some(load)) => loads.push(load),
            _ => booting += 1,
        }
    }
    (loads, booting)
}

/// The Kubernetes HPA, with its defaults.
#[derive(Clone, Debug)]
pub struct Hpa {
    pub target: f64,
    pub tolerance: f64,
    pub min: u32,
    pub max: u32,
    pub stabilization_secs: u64,
    recommendations: VecDeque<(u64, u32)>,
}

impl Hpa {
    pub fn new(target: f64, min: u32, max: u32) -> Hpa {
        Hpa {
            target,
            tolerance: 0.1,
            min,
            max,
            stabilization_secs: 300,
            recommendations: VecDeque::new(),
        }
    }

    /// The replica calculator: what the metric alone asks for.
    fn recommend(&self, observation: &Observation) -> u32 {
        let current = observation.instances.len() as u32;
        let (loads, booting) = split(observation);
        if loads.is_empty() {
            return current; // no metrics: the HPA does not scale
        }
        let ready = loads.len() as f64;
        let ratio = loads.iter().sum::<f64>() / ready / self.target;
        let rebalance = booting > 0 && ratio > 1.0;
        if !rebalance {
            if (ratio - 1.0).abs() <= self.tolerance {
                return current;
            }
            return (ratio * ready).ceil() as u32;
        }
        // Booting instances count as 0 % on the way up; if that reverses the direction or falls
        // within the tolerance, hold.
        let all = ready + booting as f64;
        let new_ratio = loads.iter().sum::<f64>() / all / self.target;
        if (new_ratio - 1.0).abs() <= self.tolerance || new_ratio < 1.0 {
            return current;
        }
        ((new_ratio * all).ceil() as u32).max(current)
    }
}

impl Reference for Hpa {
    fn period(&self) -> u64 {
        15
    }

    fn desired(&mut self, observation: &Observation, now: u64) -> u32 {
        let current = observation.instances.len() as u32;
        let recommended = self.recommend(observation);
        self.recommendations.push_back((now, recommended));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now - at > self.stabilization_secs)
        {
            self.recommendations.pop_front();
        }
        let stabilized = if recommended < current {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended);
            highest.min(current)
        } else {
            recommended
        };
        let scale_up_limit = (current * 2).max(current + 4);
        stabilized.min(scale_up_limit).clamp(self.min, self.max)
    }
}

/// AWS step scaling with CloudWatch alarms.
#[derive(Clone, Debug)]
pub struct AwsStep {
    pub min: u32,
    pub max: u32,
    pub high: f64,
    pub very_high: f64,
    pub low: f64,
    pub low_periods: u32,
    pub cooldown_secs: u64,
    period_sum: f64,
    period_samples: u32,
    low_streak: u32,
    last_activity: Option<u64>,
}

impl AwsStep {
    pub fn new(min: u32, max: u32) -> AwsStep {
        AwsStep {
            min,
            max,
            high: 70.0,
            very_high: 85.0,
            low: 30.0,
            low_periods: 3,
            cooldown_secs: 300,
            period_sum: 0.0,
            period_samples: 0,
            low_streak: 0,
            last_activity: None,
        }
    }

    /// Adds one second's group average to the current CloudWatch period.
    pub fn sample(&mut self, observation: &Observation) {
        let (loads, _) = split(observation);
        if !loads.is_empty() {
            self.period_sum += loads.iter().sum::<f64>() / loads.len() as f64;
            self.period_samples += 1;
        }
    }
}

impl Reference for AwsStep {
    fn period(&self) -> u64 {
        60
    }

    fn desired(&mut self, observation: &Observation, now: u64) -> u32 {
        let current = observation.instances.len() as u32;
        let datapoint =
            (self.period_samples > 0).then(|| self.period_sum / f64::from(self.period_samples));
        self.period_sum = 0.0;
        self.period_samples = 0;
        let Some(average) = datapoint else {
            return current.clamp(self.min, self.max); // INSUFFICIENT_DATA
        };
        self.low_streak = if average < self.low {
            self.low_streak + 1
        } else {
            0
        };
        let cooling = self
            .last_activity
            .is_some_and(|at| now < at + self.cooldown_secs);
        let mut desired = current;
        if !cooling {
            if average >= self.very_high {
                desired = current + 2;
            } else if average > self.high {
                desired = current + 1;
            } else if self.low_streak >= self.low_periods {
                desired = current.saturating_sub(1);
            }
        }
        let desired = desired.clamp(self.min, self.max);
        if desired != current {
            self.last_activity = Some(now);
            self.low_streak = 0;
        }
        desired
    }
}

/// EC2 Auto Scaling target tracking as documented: the group's average over 1-minute periods,
/// instances in their warm-up (300 s) left out of it; out after 3 periods above the target, to
/// ceil(instances counted x average / target) (what the warming instances will carry counted in
/// the current capacity); in after 15 periods below 90 % of it, never while an instance warms.
#[derive(Clone, Debug)]
pub struct AwsTarget {
    pub target: f64,
    pub min: u32,
    pub max: u32,
    pub warmup_secs: u64,
    pub out_periods: u32,
    pub in_periods: u32,
    period_sum: f64,
    period_counted: f64,
    period_samples: u32,
    warming: bool,
    high_streak: u32,
    low_streak: u32,
}

impl AwsTarget {
    pub fn new(target: f64, min: u32, max: u32) -> AwsTarget {
        AwsTarget {
            target,
            min,
            max,
            warmup_secs: 300,
            out_periods: 3,
            in_periods: 15,
            period_sum: 0.0,
            period_counted: 0.0,
            period_samples: 0,
            warming: false,
            high_streak: 0,
            low_streak: 0,
        }
    }

    /// Adds one second to the current period: the loads of the instances past their warm-up
    /// (or there from the start).
    pub fn sample(&mut self, observation: &Observation) {
        let (mut sum, mut counted) = (0.0, 0u32);
        self.warming = false;
        for instance in &observation.instances {
            let warm = instance.age.as_secs() >= self.warmup_secs
                || instance.age >= observation.controller_uptime;
            match (instance.health, instance.load, warm) {
                (Some(Health::Healthy), Some(load), true) => {
                    sum += load;
                    counted += 1;
                }
                _ => self.warming = true,
            }
        }
        if counted > 0 {
            self.period_sum += sum / f64::from(counted);
            self.period_counted += f64::from(counted);
            self.period_samples += 1;
        }
    }
}

impl Reference for AwsTarget {
    fn period(&self) -> u64 {
        60
    }

    fn desired(&mut self, observation: &Observation, _now: u64) -> u32 {
        let current = observation.instances.len() as u32;
        let samples = f64::from(self.period_samples);
        let datapoint = (self.period_samples > 0).then(|| {
            (
                self.period_sum / samples,
                (self.period_counted / samples).round(),
            )
        });
        self.period_sum = 0.0;
        self.period_counted = 0.0;
        self.period_samples = 0;
        let Some((average, counted)) = datapoint else {
            return current.clamp(self.min, self.max);
        };
        self.high_streak = if average > self.target {
            self.high_streak + 1
        } else {
            0
        };
        self.low_streak = if average < 0.9 * self.target {
            self.low_streak + 1
        } else {
            0
        };
        let needed = (counted * average / self.target - 1e-9).ceil().max(0.0) as u32;
        let desired = if self.high_streak >= self.out_periods {
            needed.max(current)
        } else if self.low_streak >= self.in_periods && !self.warming {
            needed.min(current)
        } else {
            current
        };
        desired.clamp(self.min, self.max)
    }
}
