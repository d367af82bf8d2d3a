//! The controller's plans ahead: the schedules put at run time (taken beside the config's), the
//! demand the policy records (handed to the journal for the next leader, and the history a
//! leader starts its forecaster with), and what it says when its forecaster falls back or acts
//! again.

use tokio::sync::watch;

use super::Controller;
use crate::cloud::Cloud;
use crate::policy::Decision;
use crate::schedule::RuntimeSchedules;
use autoscaler_policy::forecast::DemandSample;

impl<C: Cloud> Controller<C> {
    /// Takes the schedules put at run time (the Operator service's) beside the config's, as
    /// they are now and whenever they change.
    pub fn with_runtime_schedules(
        mut self,
        mut schedules: watch::Receiver<RuntimeSchedules>,
    ) -> Controller<C> {
        let base = self.config.clone();
        self.config = schedules.borrow_and_update().applied_to(&base);
        self.runtime_schedules = Some((schedules, base));
        self
    }

    /// Gives the forecaster the demand a previous leader recorded (the store's), oldest first.
    pub fn with_demand_history(mut self, samples: Vec<DemandSample>) -> Controller<C> {
        self.state.forecaster().load_history(samples);
        self
    }

    /// Keeps the demand the policy recorded since the last time in the journal; what it could
    /// not keep is offered again next time (a day's worth at most).
    pub(super) async fn save_demand(&mut self) {
        self.demand_unsaved
            .extend(self.state.forecaster().take_unsaved());
        let Some(journal) = self.journal.clone() else {
            self.demand_unsaved.clear();
            return;
        };
        if self.demand_unsaved.is_empty() {
            return;
        }
        match journal.record_demand(&self.demand_unsaved).await {
            Ok(()) => self.demand_unsaved.clear(),
            Err(error) => {
                tracing::warn!(%error, samples = self.demand_unsaved.len(), "cannot keep the group's demand; trying again next time");
                let excess = self.demand_unsaved.len().saturating_sub(1_440);
                self.demand_unsaved.drain(..excess);
            }
        }
    }

    /// When the forecaster falls back to forecast-only by itself (its error past the bound), or
    /// acts again, says so: in the log and in the decision record.
    pub(super) fn say_forecast_changes(&mut self, decision: &Decision, outcome: &mut Vec<String>) {
        let (Some(forecast), Some(predictive)) = (&decision.forecast, &self.config.predictive)
        else {
            return;
        };
        let was = self.forecast_fallen_back.replace(forecast.fallen_back);
        let error = forecast.error_percent.unwrap_or(f64::NAN);
        let bound = predictive.max_error_percent;
        match (was, forecast.fallen_back) {
            (Some(false) | None, true) => {
                let note = format!(
                    "forecast fell back to forecast-only: its last 24 hours' error {error:.1} % is past max_error_percent {bound} %"
                );
                tracing::warn!(error_percent = error, bound, "{note}");
                outcome.push(note);
            }
            (Some(true), false) => {
                let note = format!(
                    "forecast {} again: its last 24 hours' error {error:.1} % is within max_error_percent {bound} %",
                    predictive.mode.as_str()
                );
                tracing::info!(error_percent = error, bound, "{note}");
                outcome.push(note);
            }
            _ => {}
        }
    }
}
