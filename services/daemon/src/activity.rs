//! What the leader writes to the store while it leads: every new decision record (the activity
//! history, which outlives restarts and failovers), pruned past its retention, and the policy's
//! memory whenever it changes, so that a successor starts where it stopped. Every write carries
//! the leader's epoch: once another daemon leads, the store refuses them.

use std::sync::Arc;
use std::time::Duration;

use autoscaler_controller::policy::PolicyMemory;
use autoscaler_controller::reconciler::ControllerStatus;
use autoscaler_store::{Activity, Store, StoreError, now_ms};
use prost::Message;
use tokio::sync::watch;

/// The leader's term, as its records name it.
#[derive(Clone)]
pub struct Term {
    pub store: Arc<dyn Store>,
    pub epoch: u64,
    /// The leading daemon (its monitor id).
    pub leader: String,
    /// How long the activity history is kept.
    pub retention: Duration,
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
/// How often the history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The policy's memory as the store keeps it (JSON).
pub fn encode_memory(memory: &PolicyMemory) -> Vec<u8> {
    serde_json::to_vec(memory).expect("plain data serialises")
}

/// The memory a previous leader left, if any and readable.
pub async fn recall(store: &dyn Store) -> Option<PolicyMemory> {
    match store.memory().await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(memory) => Some(memory),
            Err(error) => {
                tracing::warn!(%error, "the policy's memory in the store is unreadable; starting afresh");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the policy's memory; starting afresh");
            None
        }
    }
}

impl Term {
    /// The records of `status` after sequence `after`, encoded for the store; the last sequence.
    fn new_records(&self, status: &ControllerStatus, after: u64) -> (Vec<Activity>, u64) {
        let mut last = after;
        let records = status
            .decisions_after(after)
            .iter()
            .map(|record| {
                last = last.max(record.sequence);
                let wire = crate::status::record_of(record, self.epoch, &self.leader);
                Activity {
                    at_ms: wire.at_unix_ms,
                    epoch: self.epoch,
                    body: wire.encode_to_vec(),
                }
            })
            .collect();
        (records, last)
    }

    /// Writes the controller's new records as they come (and its memory) until `stop` (then
    /// once more), or until the store says another daemon leads. A record is written once, when
    /// it first appears (a run of quiet evaluations folded into it later is not counted again).
    pub async fn keep(
        self,
        status: ControllerStatus,
        mut memory: watch::Receiver<PolicyMemory>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut written = 0;
        let mut records = status.new_records();
        let mut pruned = tokio::time::Instant::now() - PRUNE_EVERY;
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = records.changed() => false,
                // A write that failed is tried again, and the memory saved, this often at least.
                _ = tokio::time::sleep(RETRY_EVERY) => false,
            };
            let (records, last) = self.new_records(&status, written);
            if !records.is_empty() {
                match self.store.append(self.epoch, &records).await {
                    Ok(()) => written = last,
                    Err(error @ StoreError::Fenced { .. }) => {
                        tracing::warn!(%error, "another daemon leads: no more records written");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot write the activity history; trying again")
                    }
                }
            }
            if memory.has_changed().unwrap_or(false) {
                let bytes = encode_memory(&memory.borrow_and_update());
                if let Err(error) = self.store.save_memory(self.epoch, &bytes).await {
                    tracing::warn!(%error, "cannot save the policy's memory");
                    memory.mark_changed();
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
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
