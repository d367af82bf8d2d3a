//! The scores of one simulated run, computed second by second: the SPEC Research Group's
//! elasticity metrics (as BUNGEE defines them), cost, time above the load SLO and how often the
//! policy scaled and reversed itself.
//!
//! Definitions, for a run of T seconds where d_t is the demand in whole instances
//! (ceil of the demand in capacity units) and s_t the supply (instances serving):
//! - accuracy_U = sum over t of max(d_t - s_t, 0) / T: instances missing, on average;
//! - accuracy_O = sum over t of max(s_t - d_t, 0) / T: instances in excess, on average;
//! - timeshare_U, timeshare_O: share of the time with s_t < d_t, with s_t > d_t (percent);
//! - jitter = (supply events - demand events) per minute, where a series' events are the sum of
//!   the absolute changes of its amount (BUNGEE's `AbstractScaleEvents`: a step of +3 instances
//!   is 3 events): below 0 the supply does not follow the demand's moves, above 0 it moves more
//!   than the demand does (oscillation).

/// Instances needed to serve `demand` at 100 %: the demand curve of the elasticity metrics.
pub fn required(demand: f64) -> u32 {
    (demand - 1e-9).ceil().max(0.0) as u32
}

/// Everything a run is scored on.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    pub duration_secs: u64,
    pub accuracy_u: f64,
    pub accuracy_o: f64,
    /// Percent of the time.
    pub timeshare_u: f64,
    /// Percent of the time.
    pub timeshare_o: f64,
    /// Adaptations per minute.
    pub jitter: f64,
    /// Instances paid for (booting, serving and terminating), in hours.
    pub instance_hours: f64,
    /// Seconds with the per-instance load above the SLO (or demand and nothing serving).
    pub slo_violation_secs: u64,
    /// Percent of the time.
    pub slo_violation_share: f64,
    /// Evaluations that launched instances.
    pub scale_outs: u32,
    /// Evaluations that terminated instances.
    pub scale_ins: u32,
    /// Scale-ins within the reversal window after a scale-out.
    pub reversals: u32,
    /// Launches the cloud model refused.
    pub launch_failures: u32,
}

/// Accumulates the scores, one second at a time.
#[derive(Clone, Debug)]
pub struct Scorer {
    slo: f64,
    reversal_window: u64,
    seconds: u64,
    under_area: u64,
    over_area: u64,
    under_secs: u64,
    over_secs: u64,
    /// Instances added or removed, summed over the run (BUNGEE's scale events).
    supply_changes: u64,
    demand_changes: u64,
    billed_secs: u64,
    slo_secs: u64,
    previous: Option<(u32, u32)>,
    last_scale_out: Option<u64>,
    scale_outs: u32,
    scale_ins: u32,
    reversals: u32,
    launch_failures: u32,
}

impl Scorer {
    /// `slo` is a load in percent; a scale-in within `reversal_window` seconds of a scale-out
    /// counts as a reversal.
    pub fn new(slo: f64, reversal_window: u64) -> Scorer {
        Scorer {
            slo,
            reversal_window,
            seconds: 0,
            under_area: 0,
            over_area: 0,
            under_secs: 0,
            over_secs: 0,
            supply_changes: 0,
            demand_changes: 0,
            billed_secs: 0,
            slo_secs: 0,
            previous: None,
            last_scale_out: None,
            scale_outs: 0,
            scale_ins: 0,
            reversals: 0,
            launch_failures: 0,
        }
    }

    /// One second with `demand` (capacities), `supply` instances serving and `billed` paid for.
    pub fn second(&mut self, demand: f64, supply: u32, billed: u32) {
        let needed = required(demand);
        self.seconds += 1;
        self.billed_secs += u64::from(billed);
        if supply < needed {
            self.under_area += u64::from(needed - supply);
            self.under_secs += 1;
        } else if supply > needed {
            self.over_area += u64::from(supply - needed);
            self.over_secs += 1;
        }
        if let Some((last_demand, last_supply)) = self.previous {
            self.demand_changes += u64::from(last_demand.abs_diff(needed));
            self.supply_changes += u64::from(last_supply.abs_diff(supply));
        }
        self.previous = Some((needed, supply));
        let overloaded = if supply == 0 {
            demand > 0.0
        } else {
            demand / f64::from(supply) * 100.0 > self.slo + 1e-9
        };
        self.slo_secs += u64::from(overloaded);
    }

    pub fn scale_out(&mut self, at: u64) {
        self.scale_outs += 1;
        self.last_scale_out = Some(at);
    }

    pub fn scale_in(&mut self, at: u64) {
        self.scale_ins += 1;
        if self
            .last_scale_out
            .is_some_and(|out| at.saturating_sub(out) <= self.reversal_window)
        {
            self.reversals += 1;
        }
    }

    pub fn launch_failed(&mut self) {
        self.launch_failures += 1;
    }

    pub fn finish(&self) -> Scores {
        let t = self.seconds.max(1) as f64;
        Scores {
            duration_secs: self.seconds,
            accuracy_u: self.under_area as f64 / t,
            accuracy_o: self.over_area as f64 / t,
            timeshare_u: 100.0 * self.under_secs as f64 / t,
            timeshare_o: 100.0 * self.over_secs as f64 / t,
            jitter: (self.supply_changes as f64 - self.demand_changes as f64) / (t / 60.0),
            instance_hours: self.billed_secs as f64 / 3_600.0,
            slo_violation_secs: self.slo_secs,
            slo_violation_share: 100.0 * self.slo_secs as f64 / t,
            scale_outs: self.scale_outs,
            scale_ins: self.scale_ins,
            reversals: self.reversals,
            launch_failures: self.launch_failures,
        }
    }
}
