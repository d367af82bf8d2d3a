//! What the leader writes to the store while it leads: every new decision record (the activity
//! history, which outlives restarts and failovers), pruned past its retention, and the
//! controller's memory (the policy's, and the launches not yet listed) before every launch and
//! whenever it changes, and the group's demand once a minute (pruned past its days), so that a successor starts where it stopped. Every write carries the
//! leader's epoch: once another daemon leads, the store refuses them.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use autoscaler_controller::launches::{ControllerMemory, Journal};
use autoscaler_controller::status::ControllerStatus;
use autoscaler_policy::time::now_ms;
use autoscaler_store::{Activity, DemandSample, Store, StoreError};
use prost::Message;

/// The leader's term, as its records name it.
#[derive(Clone)]
pub struct Term {
    pub store: Arc<dyn Store>,
    pub epoch: u64,
    /// The leading daemon (its monitor id).
    pub leader: String,
    /// How long the activity history is kept.
    pub retention: Duration,
    /// How many days of demand are kept (`[controller.predictive] history_days`).
    pub demand_days: u32,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("epoch", &self.epoch)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

/// How often a failed write is tried again (records are written as they come).
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often at most a record is written again only because quiet evaluations folded into it
/// (one store write per evaluation would be many, on DynamoDB).
const REFOLD_EVERY: Duration = Duration::from_secs(10);
/// How often the history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The controller's memory as the store keeps it (JSON).
pub fn encode_memory(memory: &ControllerMemory) -> Vec<u8> {
    serde_json::to_vec(memory).expect("plain data serialises")
}

/// The memory a previous leader left, if any and readable.
pub async fn recall(store: &dyn Store) -> Option<ControllerMemory> {
    match store.memory().await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(memory) => Some(memory),
            Err(error) => {
                tracing::warn!(%error, "the controller's memory in the store is unreadable; starting afresh");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the controller's memory; starting afresh");
            None
        }
    }
}

/// The controller keeps its memory in the store, in this term (fenced by its epoch).
impl Journal for Term {
    fn save<'a>(
        &'a self,
        memory: &'a ControllerMemory,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .save_memory(self.epoch, &encode_memory(memory))
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn record_demand<'a>(
        &'a self,
        samples: &'a [DemandSample],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .record_demand(self.epoch, samples)
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// The demand the store kept for the last `days` days, for the forecaster; none when it
/// cannot be read (said in the log: the forecaster then waits for 24 hours of its own).
pub async fn recall_demand(store: &dyn Store, days: u32) -> Vec<DemandSample> {
    let since = now_ms() - i64::from(days) * 86_400_000;
    match store.demand(since).await {
        Ok(samples) => samples,
        Err(error) => {
            tracing::warn!(%error, "cannot read the group's recorded demand; the forecaster starts without it");
            Vec::new()
        }
    }
}

/// The last record written: a run of quiet evaluations may still fold into it.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    sequence: u64,
    repeated: u32,
    /// When it was first written: its place in the history, which a later write keeps.
    at_ms: i64,
}

impl Term {
    /// The records of `status` not yet written as they are now: those after the last written
    /// one, and that one again if evaluations were folded into it since. Encoded for the store,
    /// with the last one as it will be written.
    fn new_records(&self, status: &ControllerStatus, written: Written) -> (Vec<Activity>, Written) {
        let mut last = written;
        let records = status
            .decisions_after(written.sequence.saturating_sub(1))
            .iter()
            .filter(|record| {
                record.sequence > written.sequence
                    || (record.sequence == written.sequence && record.repeated != written.repeated)
            })
            .map(|record| {
                let wire = crate::status::record_of(record, self.epoch, &self.leader);
                let at_ms = if record.sequence == written.sequence {
                    written.at_ms
                } else {
                    wire.at_unix_ms
                };
                last = Written {
                    sequence: record.sequence,
                    repeated: record.repeated,
                    at_ms,
                };
                Activity {
                    at_ms,
                    epoch: self.epoch,
                    sequence: record.sequence,
                    body: wire.encode_to_vec(),
                }
            })
            .collect();
        (records, last)
    }

    /// Writes the controller's new records as they come until `stop` (then once more), or until
    /// the store says another daemon leads. A record is written when it first appears, and again
    /// (in its place) when quiet evaluations fold into it, so that the history counts them.
    pub async fn keep(self, status: ControllerStatus, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut written = Written::default();
        let mut wrote = tokio::time::Instant::now();
        let mut records = status.new_records();
        let mut pruned = tokio::time::Instant::now() - PRUNE_EVERY;
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = records.changed() => false,
                // A write that failed is tried again this often at least.
                _ = tokio::time::sleep(RETRY_EVERY) => false,
            };
            let (records, last) = self.new_records(&status, written);
            let refold_only = last.sequence == written.sequence;
            if !records.is_empty() && (!refold_only || stopping || wrote.elapsed() >= REFOLD_EVERY)
            {
                match self.store.append(self.epoch, &records).await {
                    Ok(()) => {
                        written = last;
                        wrote = tokio::time::Instant::now();
                    }
                    Err(error @ StoreError::Fenced { .. }) => {
                        tracing::warn!(%error, "another daemon leads: no more records written");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot write the activity history; trying again")
                    }
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                let demand_before = now_ms() - i64::from(self.demand_days) * 86_400_000;
                if let Err(error) = self.store.prune_demand(demand_before).await {
                    tracing::warn!(%error, "cannot prune the recorded demand");
                }
                let before =
                    now_ms() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
                match self.store.prune(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        records = n,
                        "pruned the activity history past its retention"
                    ),
                    Err(error) => tracing::warn!(%error, "cannot prune the activity history"),
                }
            }
            if stopping {
                return;
            }
        }
    }
}
