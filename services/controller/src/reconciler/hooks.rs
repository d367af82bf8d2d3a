//! The controller's side of the lifecycle hooks its agents run: a removal waits in
//! Terminating:Wait while the agent's termination hook runs (after the drain, before the
//! termination), and what each hook did goes into the decision record, with its output's tail.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Controller;
use crate::cloud::{Cloud, CloudInstance};
use crate::fleet::{FleetView, Health, Lifecycle};
use crate::front::Removal;
use crate::status::DecisionRecord;

/// How long past its agent's timeout a termination hook is waited for: the agent kills it at
/// its timeout and reports the end at the next poll.
const HOOK_SLACK: Duration = Duration::from_secs(10);

/// A removal waiting on its termination hook.
#[derive(Debug)]
pub(super) struct Waiting {
    why: Removal,
    since: Instant,
    timeout: Duration,
}

/// The instances in Terminating:Wait, and the hook state last recorded for each instance.
#[derive(Debug, Default)]
pub(super) struct Hooks {
    waiting: BTreeMap<String, Waiting>,
    recorded: BTreeMap<String, Lifecycle>,
}

impl Hooks {
    /// Whether `instance_id` is leaving through its termination hook.
    pub(super) fn holds(&self, instance_id: &str) -> bool {
        self.waiting.contains_key(instance_id)
    }

    /// The removals whose termination hook is over (it ended, its agent stopped answering, or
    /// its time is up), to terminate now; those the provider no longer lists are forgotten.
    /// Notes what each hook did.
    pub(super) fn finished(
        &mut self,
        instances: &[CloudInstance],
        view: &FleetView,
        notes: &mut Vec<String>,
    ) -> Vec<(String, Removal)> {
        self.waiting
            .retain(|id, _| instances.iter().any(|i| &i.instance_id == id));
        let mut done = Vec::new();
        for (instance_id, waiting) in &self.waiting {
            let seen = view.get(instance_id);
            let ended = match seen {
                Some(seen) if seen.metrics.lifecycle() == Lifecycle::TerminatingProceed => {
                    let hook = seen.metrics.hook.as_deref();
                    Some(with_output(
                        format!(
                            "{instance_id}: {}",
                            hook.map_or("termination hook ended", |h| h.summary.as_str())
                        ),
                        hook.map_or("", |h| h.output_tail.as_str()),
                    ))
                }
                Some(seen) if seen.health != Health::Unhealthy => {
                    (waiting.since.elapsed() > waiting.timeout + HOOK_SLACK).then(|| {
                        format!(
                            "{instance_id}: its termination hook did not end within {:.0} s; \
                             terminating",
                            waiting.timeout.as_secs_f64()
                        )
                    })
                }
                _ => Some(format!(
                    "{instance_id}: its agent stopped answering in Terminating:Wait; terminating"
                )),
            };
            if let Some(note) = ended {
                notes.push(note);
                done.push((instance_id.clone(), waiting.why));
            }
        }
        for (instance_id, _) in &done {
            self.waiting.remove(instance_id);
            self.recorded
                .insert(instance_id.clone(), Lifecycle::TerminatingProceed);
        }
        done
    }

    /// Notes each change of an instance's launch hook: Pending:Wait, and how the hook ended
    /// (in service, or abandoned), with its output's tail. Forgets instances the monitor no
    /// longer knows.
    pub(super) fn record_changes(&mut self, view: &FleetView, notes: &mut Vec<String>) {
        self.recorded
            .retain(|id, _| view.get(id).is_some_and(|seen| seen.metrics.hook.is_some()));
        for seen in &view.instances {
            let Some(hook) = seen.metrics.hook.as_deref() else {
                continue;
            };
            let id = &seen.instance_id;
            if self.recorded.get(id) == Some(&hook.state) || hook.state.is_terminating() {
                continue;
            }
            self.recorded.insert(id.clone(), hook.state);
            notes.push(match hook.state {
                Lifecycle::PendingWait => format!("{id}: Pending:Wait, its launch hook runs"),
                _ => with_output(format!("{id}: {}", hook.summary), &hook.output_tail),
            });
        }
    }
}

/// `note`, and the tail of a hook's output when it wrote any (its last lines, joined).
fn with_output(note: String, output_tail: &str) -> String {
    match output_tail.trim() {
        "" => note,
        tail => format!(
            "{note}; output: {}",
            tail.lines().collect::<Vec<_>>().join(" | ")
        ),
    }
}

impl<C: Cloud> Controller<C> {
    /// Ends `removals`: each instance whose agent answers is told of its removal, and one
    /// whose agent runs a termination hook waits for it (Terminating:Wait, terminated at a
    /// later evaluation); the others are terminated now. `stopped` have no agent to tell.
    pub(super) async fn end(
        &mut self,
        removals: &[(String, Removal)],
        view: &FleetView,
        stopped: &[String],
        record: &mut DecisionRecord,
    ) {
        // Nothing is told to an agent whose instance this controller may not terminate.
        if removals.is_empty() || !self.may_act(&mut record.outcome, "ending removals") {
            return;
        }
        let mut now: Vec<(String, Removal)> = Vec::new();
        for (instance_id, why) in removals {
            let answers = !stopped.contains(instance_id)
                && view
                    .get(instance_id)
                    .is_some_and(|seen| seen.health != Health::Unhealthy);
            let hook = match answers {
                true => self.agents.notify_removal(instance_id, why.as_str()).await,
                false => None,
            };
            match hook {
                Some(timeout) => {
                    record.outcome.push(format!(
                        "{instance_id}: Terminating:Wait, its termination hook runs (up to \
                         {:.0} s)",
                        timeout.as_secs_f64()
                    ));
                    self.hooks.waiting.insert(
                        instance_id.clone(),
                        Waiting {
                            why: *why,
                            since: Instant::now(),
                            timeout,
                        },
                    );
                }
                None => now.push((instance_id.clone(), *why)),
            }
        }
        self.terminate_now(&now, record).await;
    }

    /// Terminates `removals` at once, one provider call for each reason.
    pub(super) async fn terminate_now(
        &self,
        removals: &[(String, Removal)],
        record: &mut DecisionRecord,
    ) {
        for why in [Removal::ScaleIn, Removal::Replace] {
            let ids: Vec<String> = removals
                .iter()
                .filter(|(_, w)| *w == why)
                .map(|(id, _)| id.clone())
                .collect();
            if !ids.is_empty()
                && self.may_act(
                    &mut record.outcome,
                    &format!("terminating {}", ids.join(", ")),
                )
            {
                self.terminate(&ids, why.as_str(), record).await;
            }
        }
    }
}
