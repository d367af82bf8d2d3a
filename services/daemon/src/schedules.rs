//! The group's schedules at run time: what the Operator service puts, lists and deletes beside the
//! config file's windows and changes. Each change is checked as the config is (an error naming
//! the field changes nothing), written to the group's store under the leader's epoch (so a new
//! leader has it), and only then given to the controller.

use std::sync::{Arc, Mutex};

use autoscaler_controller::config::ControllerConfig;
use autoscaler_monitor::operator::{Answer, ScheduleBook};
use autoscaler_policy::schedule::{BoundsChange, RuntimeSchedules, Schedules, WindowConfig};
use autoscaler_proto::v1;
use autoscaler_store::{Store, StoreError};
use tokio::sync::watch;
use tonic::Status;

/// The store's name for them.
pub const DOCUMENT: &str = "schedules";

/// Where they are kept: the store and the leader's epoch, or nowhere (a daemon without a store
/// keeps them until it stops).
pub struct Book {
    config: ControllerConfig,
    store: Option<(Arc<dyn Store>, u64)>,
    runtime: Mutex<RuntimeSchedules>,
    to_controller: watch::Sender<RuntimeSchedules>,
}

impl Book {
    /// The book of a term: the schedules the store keeps (those that still check against the
    /// config; the others are left out and said in the log), and the controller's end of them.
    pub async fn recall(
        config: &ControllerConfig,
        store: Option<(Arc<dyn Store>, u64)>,
    ) -> (Arc<Book>, watch::Receiver<RuntimeSchedules>) {
        let mut kept = RuntimeSchedules::default();
        if let Some((store, _)) = &store {
            match store.document(DOCUMENT).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<RuntimeSchedules>(&bytes) {
                    Ok(recalled) => kept = usable(config, recalled),
                    Err(error) => {
                        tracing::warn!(%error, "the schedules in the store are unreadable; starting without them")
                    }
                },
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the schedules put at run time; starting without them")
                }
            }
        }
        if !(kept.windows.is_empty() && kept.changes.is_empty()) {
            tracing::info!(
                windows = kept.windows.len(),
                changes = kept.changes.len(),
                "taking up the schedules put at run time from the store"
            );
        }
        let (to_controller, receiver) = watch::channel(kept.clone());
        let book = Book {
            config: config.clone(),
            store,
            runtime: Mutex::new(kept),
            to_controller,
        };
        (Arc::new(book), receiver)
    }

    fn runtime(&self) -> RuntimeSchedules {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn in_config(&self, name: &str) -> bool {
        self.config.schedule.iter().any(|w| w.name == name)
            || self.config.scheduled_change.iter().any(|c| c.name == name)
    }

    /// Keeps `next` (in the store first), then gives it to the controller.
    async fn commit(&self, next: RuntimeSchedules) -> Result<(), Status> {
        if let Some((store, epoch)) = &self.store {
            let body = serde_json::to_vec(&next).map_err(|e| Status::internal(e.to_string()))?;
            store
                .save_document(*epoch, DOCUMENT, &body)
                .await
                .map_err(|error| match error {
                    StoreError::Fenced { .. } => Status::failed_precondition(format!(
                        "this daemon no longer leads the group ({error}): ask the leader"
                    )),
                    other => Status::unavailable(format!("the schedule was not kept: {other}")),
                })?;
        }
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = next.clone();
        self.to_controller.send_replace(next);
        Ok(())
    }
}

/// The recalled schedules that still check against `config`, one by one.
fn usable(config: &ControllerConfig, recalled: RuntimeSchedules) -> RuntimeSchedules {
    let mut kept = RuntimeSchedules::default();
    let entries = recalled
        .windows
        .into_iter()
        .map(Entry::Window)
        .chain(recalled.changes.into_iter().map(Entry::Change));
    for entry in entries {
        let mut trial = kept.clone();
        let name = entry.name().to_string();
        entry.add_to(&mut trial);
        match check(config, &trial) {
            Ok(()) => kept = trial,
            Err(error) => {
                tracing::warn!(%name, %error, "a schedule in the store no longer checks; left out")
            }
        }
    }
    kept
}

/// Checks `runtime` beside the config's own, as the config is checked at start.
fn check(config: &ControllerConfig, runtime: &RuntimeSchedules) -> Result<(), String> {
    let applied = runtime.applied_to(config);
    Schedules::new(
        &applied.schedule,
        &applied.scheduled_change,
        applied.instance_limit,
    )
    .map(|_| ())
    .map_err(|error| error.to_string())
}

/// A schedule of either kind.
enum Entry {
    Window(WindowConfig),
    Change(BoundsChange),
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Window(w) => &w.name,
            Entry::Change(c) => &c.name,
        }
    }

    fn add_to(self, runtime: &mut RuntimeSchedules) {
        match self {
            Entry::Window(w) => runtime.windows.push(w),
            Entry::Change(c) => runtime.changes.push(c),
        }
    }
}

fn from_wire(entry: v1::ScheduleEntry) -> Result<Entry, Status> {
    let name = entry.name.trim().to_string();
    if name.is_empty() || name.len() > 64 {
        return Err(Status::invalid_argument(
            "entry.name must be 1-64 characters",
        ));
    }
    match entry.kind {
        Some(v1::schedule_entry::Kind::Window(w)) => Ok(Entry::Window(WindowConfig {
            name,
            cron: w.cron,
            time_zone: if w.time_zone.is_empty() {
                "UTC".to_string()
            } else {
                w.time_zone
            },
            duration_secs: w.duration_secs,
            min_instances: w.min_instances,
            max_instances: w.max_instances,
        })),
        Some(v1::schedule_entry::Kind::Change(c)) => Ok(Entry::Change(BoundsChange {
            name,
            at: c.at,
            min_instances: c.min_instances,
            max_instances: c.max_instances,
        })),
        None => Err(Status::invalid_argument(
            "entry.kind must be a window or a change",
        )),
    }
}

fn window_entry(window: &WindowConfig, source: &str) -> v1::ScheduleEntry {
    v1::ScheduleEntry {
        name: window.name.clone(),
        kind: Some(v1::schedule_entry::Kind::Window(v1::ScheduleWindow {
            cron: window.cron.clone(),
            time_zone: window.time_zone.clone(),
            duration_secs: window.duration_secs,
            min_instances: window.min_instances,
            max_instances: window.max_instances,
        })),
        source: source.to_string(),
    }
}

fn change_entry(change: &BoundsChange, source: &str) -> v1::ScheduleEntry {
    v1::ScheduleEntry {
        name: change.name.clone(),
        kind: Some(v1::schedule_entry::Kind::Change(v1::ScheduleChange {
            at: change.at.clone(),
            min_instances: change.min_instances,
            max_instances: change.max_instances,
        })),
        source: source.to_string(),
    }
}

impl ScheduleBook for Book {
    fn put(&self, entry: v1::ScheduleEntry) -> Answer<'_, bool> {
        Box::pin(async move {
            let entry = from_wire(entry)?;
            let name = entry.name().to_string();
            if self.in_config(&name) {
                return Err(Status::failed_precondition(format!(
                    "entry.name {name:?} is a schedule of the config file: change it there"
                )));
            }
            let mut next = self.runtime();
            let replaced = next.remove(&name);
            entry.add_to(&mut next);
            check(&self.config, &next)
                .map_err(|error| Status::invalid_argument(format!("entry {name:?}: {error}")))?;
            self.commit(next).await?;
            tracing::info!(%name, replaced, "schedule put at run time");
            Ok(replaced)
        })
    }

    fn list(&self) -> Vec<v1::ScheduleEntry> {
        let runtime = self.runtime();
        let config = &self.config;
        config
            .schedule
            .iter()
            .map(|w| window_entry(w, "config"))
            .chain(
                config
                    .scheduled_change
                    .iter()
                    .map(|c| change_entry(c, "config")),
            )
            .chain(runtime.windows.iter().map(|w| window_entry(w, "operator")))
            .chain(runtime.changes.iter().map(|c| change_entry(c, "operator")))
            .collect()
    }

    fn delete(&self, name: String) -> Answer<'_, ()> {
        Box::pin(async move {
            if self.in_config(&name) {
                return Err(Status::failed_precondition(format!(
                    "{name:?} is a schedule of the config file: change it there"
                )));
            }
            let mut next = self.runtime();
            if !next.remove(&name) {
                return Err(Status::not_found(format!("no schedule {name:?}")));
            }
            self.commit(next).await?;
            tracing::info!(%name, "schedule deleted at run time");
            Ok(())
        })
    }
}
