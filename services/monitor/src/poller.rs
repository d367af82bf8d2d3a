//! The poll task of one instance: tells the agent which monitor watches it, then every poll
//! interval pings it (one RPC: the answer carries the metrics) under a deadline, over a
//! connection kept open between polls (`unary`); a suspect instance is probed again sooner.

use std::sync::{Arc, Weak};
use std::time::Duration;

use autoscaler_policy::fleet::{HookReport, Lifecycle, Metrics};
use autoscaler_policy::instance::{HOOK_OUTPUT_BYTES, HOOK_TIMEOUT_MAX, ending};
use autoscaler_proto::v1;

use crate::registry::{PollOutcome, Registry};
use crate::unary::{AgentConnection, CallError};

const PING: &str = "/autoscaler.v1.Agent/Ping";
const GET_METRICS: &str = "/autoscaler.v1.Agent/GetMetrics";
const ATTACH_MONITOR: &str = "/autoscaler.v1.Agent/AttachMonitor";
const DETACH_MONITOR: &str = "/autoscaler.v1.Agent/DetachMonitor";
const NOTIFY_REMOVAL: &str = "/autoscaler.v1.Agent/NotifyRemoval";
pub(crate) const SET_LOAD_TARGET: &str = "/autoscaler.v1.Agent/SetLoadTarget";

pub(crate) async fn poll_forever(
    registry: Weak<Registry>,
    instance_id: String,
    address: String,
    generation: u64,
) {
    let Some((config, agent)) = registry.upgrade().map(|registry| {
        let agent = AgentConnection::new(registry.connector().clone(), &address);
        (registry.config().clone(), agent)
    }) else {
        return;
    };
    let mut agent = match agent {
        Ok(agent) => agent,
        Err(reason) => {
            if let Some(registry) = registry.upgrade() {
                registry.record(&instance_id, generation, PollOutcome::Missed { reason });
            }
            return;
        }
    };

    let attach = v1::AttachMonitorRequest {
        monitor_id: config.monitor_id.clone(),
        poll_interval_ms: config.poll_interval.as_millis() as u64,
    };
    let deadline = tokio::time::Instant::now() + config.poll_timeout;
    match agent
        .call::<_, v1::AttachMonitorResponse>(ATTACH_MONITOR, &attach, deadline)
        .await
    {
        Ok(_) => {}
        Err(CallError::TimedOut) => tracing::warn!(%instance_id, "AttachMonitor timed out"),
        Err(error) => {
            tracing::warn!(%instance_id, code = ?error.code(), %error, "agent refused AttachMonitor")
        }
    }

    let mut next = tokio::time::Instant::now();
    let mut sequence = 0u64;
    loop {
        agent.idle_until(next).await;
        sequence += 1;
        let started = tokio::time::Instant::now();
        let outcome = poll_once(&mut agent, &instance_id, sequence, config.poll_timeout).await;
        let missed = matches!(outcome, PollOutcome::Missed { .. });
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.observe_poll(started.elapsed());
        let early = registry.record(&instance_id, generation, outcome);
        next = next_poll(
            next,
            tokio::time::Instant::now(),
            config.poll_interval,
            missed && early,
        );
    }
}

/// When to poll next, from when this poll was due (not when the task woke up for it, so late
/// wake-ups do not add up and the rate stays at one per interval). After an answer, one interval
/// after it was due. After a miss (unless too many instances miss at once: see
/// `registry::early_probes_allowed`), the instance is suspect: probe again half an interval
/// after, or at once if the miss took longer (a timeout), so a dead agent reaches
/// `unhealthy_after` misses in about `interval + (n - 1) * max(interval / 2, timeout)` instead
/// of `n` intervals.
fn next_poll(
    due: tokio::time::Instant,
    now: tokio::time::Instant,
    interval: Duration,
    probe_early: bool,
) -> tokio::time::Instant {
    if probe_early {
        (due + interval / 2).max(now)
    } else {
        (due + interval).max(now)
    }
}

/// One poll: one Ping (a heartbeat that carries the current metrics) within `timeout`; an agent
/// too old to put metrics in its answer is asked for them with GetMetrics, in the same time.
pub(crate) async fn poll_once(
    agent: &mut AgentConnection,
    instance_id: &str,
    sequence: u64,
    timeout: Duration,
) -> PollOutcome {
    let missed = |reason: String| PollOutcome::Missed { reason };
    let no_answer = |error: CallError, what: &str| match error {
        CallError::TimedOut => missed(format!("no answer within {timeout:?}")),
        error => missed(format!("{what}{error}")),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let ping: v1::PingResponse = match agent
        .call(PING, &v1::PingRequest { sequence }, deadline)
        .await
    {
        Ok(ping) => ping,
        Err(error) => return no_answer(error, ""),
    };
    if ping.instance_id != instance_id {
        return missed(format!(
            "the agent at this address answers as {:?}, not {instance_id:?}",
            ping.instance_id
        ));
    }
    if ping.sequence != sequence {
        return missed(format!(
            "ping answered sequence {} to {sequence}",
            ping.sequence
        ));
    }
    let metrics = match ping.metrics {
        Some(metrics) => metrics,
        // An agent older than Ping's metrics field: ask for them as monitors once did, within
        // what is left of the same deadline.
        None => match agent
            .call::<_, v1::GetMetricsResponse>(GET_METRICS, &v1::GetMetricsRequest {}, deadline)
            .await
        {
            Ok(answer) => match answer.metrics {
                Some(metrics) => metrics,
                None => return missed("GetMetrics answered without metrics".to_string()),
            },
            Err(error) => return no_answer(error, "GetMetrics: "),
        },
    };
    let load = metrics.load_percent;
    if !metrics.load_unknown && !(0.0..=100.0).contains(&load) {
        return missed(format!("load {load} is outside 0-100"));
    }
    let load = (!metrics.load_unknown).then_some(load);
    let requests_per_second = metrics
        .requests_per_second
        .filter(|rate| rate.is_finite() && *rate >= 0.0);
    let hook = ping.lifecycle.map(|lifecycle| {
        Arc::new(HookReport {
            state: match lifecycle.state() {
                v1::LifecycleState::InService => Lifecycle::InService,
                v1::LifecycleState::PendingWait => Lifecycle::PendingWait,
                v1::LifecycleState::Abandoned => Lifecycle::Abandoned,
                v1::LifecycleState::TerminatingWait => Lifecycle::TerminatingWait,
                v1::LifecycleState::TerminatingProceed => Lifecycle::TerminatingProceed,
            },
            // Kept as long as an agent of this version sends them, whatever one sends.
            summary: ending(&lifecycle.summary, 512).to_string(),
            output_tail: ending(&lifecycle.output_tail, HOOK_OUTPUT_BYTES).to_string(),
        })
    });
    PollOutcome::Answered(Metrics {
        load,
        requests_per_second,
        hook,
    })
}

/// Tells the agent of `instance_id` that its instance is being removed (it then registers no
/// more, and starts its termination hook if it has one); best effort, bounded by `timeout`.
/// Returns how long the agent's termination hook may run, when it runs one. Nothing happens
/// for an instance not registered.
pub(crate) async fn notify_removal(
    registry: &Registry,
    instance_id: &str,
    reason: &str,
    timeout: Duration,
) -> Option<Duration> {
    let address = registry.address_of(instance_id)?;
    let mut agent = AgentConnection::new(registry.connector().clone(), &address).ok()?;
    let request = v1::NotifyRemovalRequest {
        reason: reason.to_string(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    match agent
        .call::<_, v1::NotifyRemovalResponse>(NOTIFY_REMOVAL, &request, deadline)
        .await
    {
        Ok(answer) => {
            tracing::debug!(%instance_id, "agent told of its removal");
            // Bounded as EC2 bounds a hook's timeout, whatever an agent answers.
            let hook =
                Duration::from_millis(answer.termination_hook_timeout_ms).min(HOOK_TIMEOUT_MAX);
            (!hook.is_zero()).then_some(hook)
        }
        Err(CallError::TimedOut) => {
            tracing::warn!(%instance_id, "NotifyRemoval timed out");
            None
        }
        Err(error) => {
            tracing::warn!(%instance_id, code = ?error.code(), %error, "NotifyRemoval refused");
            None
        }
    }
}

/// Tells every agent that this monitor stops watching it; bounded by `timeout` in all.
pub(crate) async fn detach_all(registry: &Arc<Registry>, timeout: Duration) {
    let config = registry.config().clone();
    let farewells = registry
        .addresses()
        .into_iter()
        .map(|(instance_id, address)| {
            let connector = registry.connector().clone();
            let monitor_id = config.monitor_id.clone();
            async move {
                let Ok(mut agent) = AgentConnection::new(connector, &address) else {
                    return;
                };
                let deadline = tokio::time::Instant::now() + timeout;
                if let Err(error) = agent
                    .call::<_, v1::DetachMonitorResponse>(
                        DETACH_MONITOR,
                        &v1::DetachMonitorRequest { monitor_id },
                        deadline,
                    )
                    .await
                {
                    tracing::debug!(%instance_id, code = ?error.code(), "DetachMonitor failed");
                }
            }
        });
    let all: Vec<_> = farewells.collect();
    let _ = tokio::time::timeout(timeout, join_all(all)).await;
}

async fn join_all<F: std::future::Future<Output = ()> + Send + 'static>(futures: Vec<F>) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for handle in handles {
        let _ = handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspect_instance_is_probed_again_sooner() {
        let interval = Duration::from_secs(1);
        let start = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        // An answer keeps the schedule.
        assert_eq!(
            next_poll(start, start + ms(3), interval, false),
            start + interval
        );
        // A fast miss (connection refused): half an interval after the poll began.
        assert_eq!(
            next_poll(start, start + ms(3), interval, true),
            start + ms(500)
        );
        // A miss by timeout: at once.
        assert_eq!(
            next_poll(start, start + ms(500), interval, true),
            start + ms(500)
        );
        // A poll that overran the interval never schedules in the past.
        assert_eq!(
            next_poll(start, start + ms(1200), interval, false),
            start + ms(1200)
        );
    }
}
