//! The monitor's settings and their checks.

use std::time::Duration;

/// How the monitor polls and judges agents.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// Identifies this monitor process to agents; a restart gets a new one.
    pub monitor_id: String,
    /// How often each agent is polled.
    pub poll_interval: Duration,
    /// Deadline of one poll (one Ping, which carries the metrics), connection included.
    pub poll_timeout: Duration,
    /// Consecutive missed polls after which an instance is unhealthy.
    pub unhealthy_after: u32,
    /// How many recent loads each instance keeps.
    pub load_window: usize,
    /// How often the fleet view is republished when something changed.
    pub publish_interval: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            monitor_id: new_monitor_id(),
            poll_interval: Duration::from_secs(1),
            poll_timeout: Duration::from_millis(500),
            unhealthy_after: 3,
            load_window: 60,
            publish_interval: Duration::from_millis(100),
        }
    }
}

/// A monitor setting out of range; names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("monitor config: `{field}` {problem}")]
pub struct MonitorConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl MonitorConfig {
    pub fn validate(&self) -> Result<(), MonitorConfigError> {
        let fail = |field, problem: String| Err(MonitorConfigError { field, problem });
        if self.monitor_id.is_empty() {
            return fail("monitor_id", "is empty".into());
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return fail(
                "poll_interval",
                format!("is {:?}; it must be within 10ms-1h", self.poll_interval),
            );
        }
        if self.poll_timeout.is_zero() || self.poll_timeout > self.poll_interval {
            return fail(
                "poll_timeout",
                format!(
                    "is {:?}; it must be above zero and at most poll_interval ({:?})",
                    self.poll_timeout, self.poll_interval
                ),
            );
        }
        if !(1..=1000).contains(&self.unhealthy_after) {
            return fail(
                "unhealthy_after",
                format!("is {}; it must be within 1-1000", self.unhealthy_after),
            );
        }
        if !(1..=100_000).contains(&self.load_window) {
            return fail(
                "load_window",
                format!("is {}; it must be within 1-100000", self.load_window),
            );
        }
        if self.publish_interval.is_zero() || self.publish_interval > self.poll_interval {
            return fail(
                "publish_interval",
                format!(
                    "is {:?}; it must be above zero and at most poll_interval",
                    self.publish_interval
                ),
            );
        }
        Ok(())
    }
}

/// A fresh monitor id: the process id and the start time, unique enough to tell restarts apart.
pub fn new_monitor_id() -> String {
    let started = autoscaler_policy::time::unix_ms(std::time::SystemTime::now());
    format!("monitor-{}-{started}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert_eq!(MonitorConfig::default().validate(), Ok(()));
        let cases: [(&str, MonitorConfig); 4] = [
            (
                "poll_interval",
                MonitorConfig {
                    poll_interval: Duration::ZERO,
                    ..MonitorConfig::default()
                },
            ),
            (
                "poll_timeout",
                MonitorConfig {
                    poll_timeout: Duration::from_secs(2),
                    ..MonitorConfig::default()
                },
            ),
            (
                "unhealthy_after",
                MonitorConfig {
                    unhealthy_after: 0,
                    ..MonitorConfig::default()
                },
            ),
            (
                "load_window",
                MonitorConfig {
                    load_window: 0,
                    ..MonitorConfig::default()
                },
            ),
        ];
        for (field, config) in cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }
}
