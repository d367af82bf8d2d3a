//! Scheduled actions: windows that raise the group's floor (and may set its ceiling) at times a
//! cron expression gives in an IANA time zone, for a duration (GCP's scaling schedules, KEDA's
//! cron scaler), and one-off changes of the bounds at a time (EC2's scheduled actions). Pure:
//! which hold at an instant is a function of the schedules and the time, so the live controller
//! and the simulator (at the trace's clock) decide with the same code.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ControllerConfig};

/// `[[controller.schedule]]`: a recurring window.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Names it in the decision record and the status.
    pub name: String,
    /// When each window starts: five fields (minute hour day-of-month month day-of-week), in
    /// `time_zone`. A start that a daylight-saving change skips happens at the first time after
    /// the change; one that happens twice, once, at the first.
    pub cron: String,
    /// An IANA time zone name (`Europe/Paris`); UTC by default.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// How long each window holds, in seconds.
    pub duration_secs: u64,
    /// The floor while it holds; where windows overlap, the largest floor wins. The policy
    /// still scales above it.
    pub min_instances: u32,
    /// The ceiling while it holds, if it sets one (at most the account's instance limit).
    #[serde(default)]
    pub max_instances: Option<u32>,
}

/// `[[controller.scheduled_change]]`: a one-off change of the bounds from a time on.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BoundsChange {
    pub name: String,
    /// RFC 3339 with its offset, `2026-12-24T18:00:00+01:00`.
    pub at: String,
    #[serde(default)]
    pub min_instances: Option<u32>,
    #[serde(default)]
    pub max_instances: Option<u32>,
}

/// The schedules put at run time (the Operator service), beside the config file's: what the
/// group's store keeps, as JSON, for the next leader.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RuntimeSchedules {
    pub windows: Vec<WindowConfig>,
    pub changes: Vec<BoundsChange>,
}

impl RuntimeSchedules {
    /// Whether `name` is one of them.
    pub fn contains(&self, name: &str) -> bool {
        self.windows.iter().any(|w| w.name == name) || self.changes.iter().any(|c| c.name == name)
    }

    /// Takes `name` out; true when it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.windows.len() + self.changes.len();
        self.windows.retain(|w| w.name != name);
        self.changes.retain(|c| c.name != name);
        before != self.windows.len() + self.changes.len()
    }

    /// `config` with these beside its own schedules.
    pub fn applied_to(&self, config: &ControllerConfig) -> ControllerConfig {
        let mut applied = config.clone();
        applied.schedule.extend(self.windows.iter().cloned());
        applied
            .scheduled_change
            .extend(self.changes.iter().cloned());
        applied
    }
}

fn utc() -> String {
    "UTC".to_string()
}

/// A window's parsed form.
#[derive(Clone, Debug)]
struct Window {
    config: WindowConfig,
    cron: Cron,
    zone: Tz,
}

/// The bounds at one instant, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scheduled {
    pub min_instances: u32,
    pub max_instances: u32,
    /// The windows holding now (name, floor, ceiling, end in ms since the epoch).
    pub active: Vec<ActiveWindow>,
    /// The next window to start after now, if any within a year.
    pub next: Option<NextWindow>,
    /// The one-off change in force, if any.
    pub change: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActiveWindow {
    pub name: String,
    pub min_instances: u32,
    pub max_instances: Option<u32>,
    pub ends_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NextWindow {
    pub name: String,
    pub starts_at_ms: i64,
    pub min_instances: u32,
}

/// The schedules of a group, parsed: built once from the config (and again when they change).
#[derive(Clone, Debug, Default)]
pub struct Schedules {
    windows: Vec<Window>,
    /// One-off changes, oldest first, with their instant.
    changes: Vec<(i64, BoundsChange)>,
}

/// The most starts of one window looked through within its duration (a start every minute for
/// the longest duration, a week).
const MAX_STARTS_IN_A_WINDOW: usize = 7 * 24 * 60;

/// How far ahead the next window is looked for.
const HORIZON_MS: i64 = 366 * 24 * 3_600_000;

impl Schedules {
    /// Parses and checks `windows` and `changes` against the bounds a window may not pass;
    /// the error names the entry and its field.
    pub fn new(
        windows: &[WindowConfig],
        changes: &[BoundsChange],
        instance_limit: u32,
    ) -> Result<Schedules, ConfigError> {
        let mut parsed = Vec::with_capacity(windows.len());
        for (index, window) in windows.iter().enumerate() {
            let field = |name: &'static str| (index, name);
            let fail = |(index, name): (usize, &'static str), problem: String| {
                ConfigError::new("schedule", format!("[{index}].{name} {problem}"))
            };
            let cron = Cron::from_str(&window.cron).map_err(|error| {
                fail(
                    field("cron"),
                    format!("{:?} is not a cron expression: {error}", window.cron),
                )
            })?;
            let zone = Tz::from_str(&window.time_zone).map_err(|_| {
                fail(
                    field("time_zone"),
                    format!("{:?} is not an IANA time zone name", window.time_zone),
                )
            })?;
            if window.duration_secs == 0 || window.duration_secs > 7 * 86_400 {
                return Err(fail(
                    field("duration_secs"),
                    format!(
                        "is {}; it must be within 1-604800 (a week)",
                        window.duration_secs
                    ),
                ));
            }
            if window.min_instances > instance_limit {
                return Err(fail(
                    field("min_instances"),
                    format!(
                        "is {}, above instance_limit = {instance_limit}",
                        window.min_instances
                    ),
                ));
            }
            if let Some(max) = window.max_instances
                && (max > instance_limit || max < window.min_instances)
            {
                return Err(fail(
                    field("max_instances"),
                    format!(
                        "is {max}; it must be within min_instances = {} and instance_limit = {instance_limit}",
                        window.min_instances
                    ),
                ));
            }
            if window.name.trim().is_empty() {
                return Err(fail(field("name"), "is empty".to_string()));
            }
            parsed.push(Window {
                config: window.clone(),
                cron,
                zone,
            });
        }
        let mut dated = Vec::with_capacity(changes.len());
        for (index, change) in changes.iter().enumerate() {
            let fail = |name: &str, problem: String| {
                ConfigError::new("scheduled_change", format!("[{index}].{name} {problem}"))
            };
            let at = DateTime::parse_from_rfc3339(&change.at).map_err(|error| {
                fail(
                    "at",
                    format!(
                        "{:?} is not an RFC 3339 time with its offset: {error}",
                        change.at
                    ),
                )
            })?;
            for (name, value) in [
                ("min_instances", change.min_instances),
                ("max_instances", change.max_instances),
            ] {
                if value.is_some_and(|v| v > instance_limit) {
                    return Err(fail(
                        name,
                        format!("is above instance_limit = {instance_limit}"),
                    ));
                }
            }
            if change.min_instances.is_some_and(|m| m < 2) {
                return Err(fail("min_instances", "must be at least 2".to_string()));
            }
            if change.min_instances.is_none() && change.max_instances.is_none() {
                return Err(fail(
                    "min_instances",
                    "or max_instances must be set".to_string(),
                ));
            }
            dated.push((at.timestamp_millis(), change.clone()));
        }
        dated.sort_by_key(|(at, _)| *at);
        Ok(Schedules {
            windows: parsed,
            changes: dated,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.changes.is_empty()
    }

    /// The bounds at `now_ms` (milliseconds since the Unix epoch), starting from `min` and
    /// `max`, and until when they hold (the next start or end of a window, or the next change).
    pub fn at(&self, min: u32, max: u32, now_ms: i64) -> (Scheduled, i64) {
        let (mut min, mut max) = (min, max);
        let mut change = None;
        let mut until = i64::MAX;
        for (at, bounds) in &self.changes {
            if *at > now_ms {
                until = until.min(*at);
                break;
            }
            min = bounds.min_instances.unwrap_or(min);
            max = bounds.max_instances.unwrap_or(max);
            change = Some(bounds.name.clone());
        }
        let mut active = Vec::new();
        let mut next: Option<NextWindow> = None;
        for window in &self.windows {
            let duration_ms = i64::try_from(window.config.duration_secs).unwrap_or(0) * 1_000;
            // The window holds when one of its starts lies in (now - duration, now].
            if let Some(first) = start_after(window, now_ms - duration_ms)
                && first <= now_ms
            {
                // It may start again while it holds: it ends a duration after its latest start.
                let mut latest = first;
                for _ in 0..MAX_STARTS_IN_A_WINDOW {
                    match start_after(window, latest) {
                        Some(start) if start <= now_ms => latest = start,
                        _ => break,
                    }
                }
                until = until.min(latest + duration_ms);
                active.push(ActiveWindow {
                    name: window.config.name.clone(),
                    min_instances: window.config.min_instances,
                    max_instances: window.config.max_instances,
                    ends_at_ms: latest + duration_ms,
                });
            }
            if let Some(start) = start_after(window, now_ms) {
                until = until.min(start);
                if start - now_ms <= HORIZON_MS
                    && next.as_ref().is_none_or(|n| start < n.starts_at_ms)
                {
                    next = Some(NextWindow {
                        name: window.config.name.clone(),
                        starts_at_ms: start,
                        min_instances: window.config.min_instances,
                    });
                }
            }
        }
        if let Some(floor) = active.iter().map(|w| w.min_instances).max() {
            min = min.max(floor);
        }
        if let Some(ceiling) = active.iter().filter_map(|w| w.max_instances).max() {
            max = ceiling;
        }
        let scheduled = Scheduled {
            min_instances: min,
            max_instances: max.max(min),
            active,
            next,
            change,
        };
        (scheduled, until)
    }
}

/// The schedules of a config as the policy last read them, and their bounds until they change:
/// the simulator evaluates every second, and the bounds change only where a window starts or
/// ends. A cache, so it takes no part in comparing policy states.
#[derive(Clone, Debug, Default)]
pub struct ScheduleCache {
    source: (Vec<WindowConfig>, Vec<BoundsChange>, u32, u32),
    schedules: Option<Schedules>,
    /// The bounds, from and until when (ms since the epoch).
    bounds: Option<(i64, i64, Scheduled)>,
}

impl PartialEq for ScheduleCache {
    fn eq(&self, _other: &ScheduleCache) -> bool {
        true
    }
}

impl ScheduleCache {
    /// The bounds `config`'s schedules set at `now_ms`; `None` when it has none (or they do not
    /// parse, which `ControllerConfig::validate` refuses before any evaluation).
    pub fn at(&mut self, config: &ControllerConfig, now_ms: i64) -> Option<Scheduled> {
        if config.schedule.is_empty() && config.scheduled_change.is_empty() {
            return None;
        }
        let source = (
            config.schedule.clone(),
            config.scheduled_change.clone(),
            config.min_instances,
            config.max_instances,
        );
        if self.schedules.is_none() || self.source != source {
            self.schedules = Schedules::new(&source.0, &source.1, config.instance_limit).ok();
            self.source = source;
            self.bounds = None;
        }
        if let Some((from, until, scheduled)) = &self.bounds
            && (*from..*until).contains(&now_ms)
        {
            return Some(scheduled.clone());
        }
        let schedules = self.schedules.as_ref()?;
        let (scheduled, until) = schedules.at(config.min_instances, config.max_instances, now_ms);
        self.bounds = Some((now_ms, until, scheduled.clone()));
        Some(scheduled)
    }
}

impl Scheduled {
    /// One line for the decision record: what holds the bounds where they are.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .active
            .iter()
            .map(|w| {
                format!(
                    "window {} (floor {}{}) until {}",
                    w.name,
                    w.min_instances,
                    w.max_instances
                        .map_or(String::new(), |max| format!(", ceiling {max}")),
                    rfc3339(w.ends_at_ms)
                )
            })
            .collect();
        if let Some(change) = &self.change {
            parts.push(format!("scheduled change {change}"));
        }
        format!(
            "[{}, {}] by {}",
            self.min_instances,
            self.max_instances,
            parts.join(", ")
        )
    }
}

/// `2026-12-07T08:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The first start of `window` strictly after `after_ms`.
fn start_after(window: &Window, after_ms: i64) -> Option<i64> {
    let after = Utc
        .timestamp_millis_opt(after_ms)
        .single()?
        .with_timezone(&window.zone);
    window
        .cron
        .find_next_occurrence(&after, false)
        .ok()
        .map(|start| start.timestamp_millis())
}
