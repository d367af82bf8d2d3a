//! Where the group's state outlives a daemon: the lease that makes one daemon the leader (the
//! others stand by), the controller's memory a new leader starts from, and the activity history
//! (every decision record, kept for a configurable period), the group's demand once a minute
//! (the forecaster's history) and named documents (the schedules set at run time). One trait, `Store`, as the `Cloud`
//! trait has its providers: `SqliteStore` on one machine (the local provider's default, and what
//! every test can use), a DynamoDB table on AWS.
//!
//! Every write but the lease's own is conditional on the writer's lease epoch: a deposed leader
//! that comes back (frozen past its lease, cut off from the store) cannot overwrite what its
//! successor wrote.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use autoscaler_policy::forecast::DemandSample;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod sqlite;

#[cfg(feature = "dynamodb")]
pub use dynamodb::DynamoStore;
pub use sqlite::SqliteStore;

/// The lease that makes one daemon the group's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The daemon that holds it (its monitor id).
    pub holder: String,
    /// Raised every time the lease changes hands: what a leader writes carries it.
    pub epoch: u64,
    /// Where the leader's monitor listens, for the agents.
    pub address: String,
    /// When it runs out unless renewed, milliseconds since the Unix epoch (the store's view;
    /// an expired lease may be taken).
    pub expires_at_ms: i64,
}

/// One decision record of the activity history, as the daemon encoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    /// When the evaluation ran, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The lease epoch of the leader that wrote it.
    pub epoch: u64,
    /// The record's number in its leader's term. A record appended again with the same epoch
    /// and sequence replaces the first, in its place: a record that a run of quiet evaluations
    /// was folded into since it was first written.
    pub sequence: u64,
    /// The record (the protocol's `DecisionRecord`, encoded by the daemon).
    pub body: Vec<u8>,
}

/// Why a store call failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store could not be reached or answered in time: a leader steps down rather than act
    /// blind.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The writer's epoch is not the lease's any more: another daemon leads.
    #[error("fenced: epoch {writer} is not the lease's ({current})")]
    Fenced { writer: u64, current: u64 },
    /// What the store holds cannot be read.
    #[error("the store holds something unreadable: {0}")]
    Corrupt(String),
}

/// A store's answer, some time later (bounded by the implementation).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The group's lasting state. Object-safe: the daemon picks one at run time.
pub trait Store: Send + Sync + 'static {
    /// Takes the lease for `holder` for `duration` if nobody holds it or it has run out (the
    /// epoch is raised), or renews it if `holder` holds it (the epoch stays); `None` while
    /// another holds it.
    fn acquire<'a>(
        &'a self,
        holder: &'a str,
        address: &'a str,
        duration: Duration,
    ) -> Pending<'a, Option<Lease>>;

    /// Gives the lease up at once (a clean stop), if `holder` still holds it at `epoch`.
    fn release<'a>(&'a self, holder: &'a str, epoch: u64) -> Pending<'a, ()>;

    /// The lease as the store has it, run out or not.
    fn lease(&self) -> Pending<'_, Option<Lease>>;

    /// Replaces the controller's memory, if `epoch` is the lease's.
    fn save_memory<'a>(&'a self, epoch: u64, memory: &'a [u8]) -> Pending<'a, ()>;

    /// The controller's memory, as the last leader saved it.
    fn memory(&self) -> Pending<'_, Option<Vec<u8>>>;

    /// Appends records to the activity history (replacing those of the same epoch and sequence),
    /// if `epoch` is the lease's.
    fn append<'a>(&'a self, epoch: u64, records: &'a [Activity]) -> Pending<'a, ()>;

    /// Records at or after `since_ms`, oldest first, at most the newest `limit`.
    fn activity(&self, since_ms: i64, limit: usize) -> Pending<'_, Vec<Activity>>;

    /// Deletes the records older than `before_ms`; how many went.
    fn prune(&self, before_ms: i64) -> Pending<'_, u64>;

    /// Records the group's demand (one sample a minute; a sample of the same minute replaces
    /// the first), if `epoch` is the lease's.
    fn record_demand<'a>(&'a self, epoch: u64, samples: &'a [DemandSample]) -> Pending<'a, ()>;

    /// The demand recorded at or after `since_ms`, oldest first.
    fn demand(&self, since_ms: i64) -> Pending<'_, Vec<DemandSample>>;

    /// Deletes the demand recorded before `before_ms`; how many samples went.
    fn prune_demand(&self, before_ms: i64) -> Pending<'_, u64>;

    /// Replaces the named document (the schedules set at run time), if `epoch` is the lease's.
    fn save_document<'a>(&'a self, epoch: u64, name: &'a str, body: &'a [u8]) -> Pending<'a, ()>;

    /// The named document, as the last leader saved it.
    fn document<'a>(&'a self, name: &'a str) -> Pending<'a, Option<Vec<u8>>>;
}
