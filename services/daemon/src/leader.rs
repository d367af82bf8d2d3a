//! Leader and standby: of the daemons of one group, the one that holds the store's lease leads
//! (polls, decides, acts, publishes its address); the others stand by, trying for the lease,
//! and take over when it runs out. The leader renews it every third of its duration; its
//! controller checks before every provider call that the lease is certainly still held (renewed
//! less than two thirds of a lease ago, by the monotonic clock), so a leader that was frozen or
//! cut off acts no more once its successor may act.
//!
//! A term is one holding of the lease by one process: its holder names the process (its
//! address, host and an incarnation of its own), so a daemon started again never renews its
//! predecessor's lease, and every term has an epoch of its own. A term ends when the lease is
//! lost; the process then stands by, and a new term begins when it takes the lease again (at
//! once when the lease ran out and nobody else took it).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoscaler_controller::reconciler::Fence;
use autoscaler_store::{Lease, Store, StoreError};

/// The leader's lease: how long it lasts without a renewal.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    pub duration: Duration,
}

impl LeaseTiming {
    /// How often the leader renews: a third of the lease.
    pub fn heartbeat(self) -> Duration {
        self.duration / 3
    }

    /// How often a standby tries for the lease.
    pub fn standby_poll(self) -> Duration {
        (self.duration / 6).max(Duration::from_millis(50))
    }

    /// How long after a renewal began the leader still acts: two thirds of the lease, so that
    /// it has stopped well before a standby may take over.
    pub fn trusted_for(self) -> Duration {
        self.duration * 2 / 3
    }
}

/// What the controller checks before every provider call.
#[derive(Debug)]
pub struct LeaseFence {
    timing: LeaseTiming,
    epoch: AtomicU64,
    /// When the last successful renewal began.
    renewed: Mutex<Instant>,
    /// Set when the term ended (the lease lost): nothing more is done in it.
    ended: std::sync::atomic::AtomicBool,
}

impl LeaseFence {
    pub fn new(lease: &Lease, timing: LeaseTiming, asked_at: Instant) -> Arc<LeaseFence> {
        Arc::new(LeaseFence {
            timing,
            epoch: AtomicU64::new(lease.epoch),
            renewed: Mutex::new(asked_at),
            ended: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The term ended: the controller acts no more in it, and the daemon no longer says it
    /// leads, from this moment on.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    fn renewed(&self, asked_at: Instant) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = asked_at;
    }

    /// Since the last successful renewal began.
    pub fn since_renewal(&self) -> Duration {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

impl Fence for LeaseFence {
    fn holds(&self) -> bool {
        !self.ended() && self.since_renewal() < self.timing.trusted_for()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

/// Stands by until the lease is ours; `None` if `shutdown` comes first.
pub async fn wait_to_lead(
    store: &dyn Store,
    holder: &str,
    address: &str,
    timing: LeaseTiming,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<(Lease, Instant)> {
    let mut said: Option<String> = None;
    loop {
        let asked_at = Instant::now();
        match store.acquire(holder, address, timing.duration).await {
            Ok(Some(lease)) => {
                tracing::info!(holder, epoch = lease.epoch, "took the lease: leading");
                return Some((lease, asked_at));
            }
            Ok(None) => {
                if let Ok(Some(lease)) = store.lease().await
                    && said.as_deref() != Some(lease.holder.as_str())
                {
                    tracing::info!(leader = %lease.holder, epoch = lease.epoch, address = %lease.address, "standing by");
                    said = Some(lease.holder);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot try for the lease; standing by"),
        }
        tokio::select! {
            () = &mut *shutdown => return None,
            () = tokio::time::sleep(timing.standby_poll()) => {}
        }
    }
}

/// Renews the lease every heartbeat until it cannot: returns how the term ended, in one line
/// (the lease ran out and this daemon took it again, another daemon took it, or the store was
/// out of reach for too long to be sure). The daemon stands by after each alike: at once
/// leading again when the lease is free.
pub async fn keep(
    store: Arc<dyn Store>,
    holder: String,
    address: String,
    fence: Arc<LeaseFence>,
    timing: LeaseTiming,
) -> String {
    let mut ticker = tokio::time::interval(timing.heartbeat());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let lost = loop {
        ticker.tick().await;
        let asked_at = Instant::now();
        let renewal = tokio::time::timeout(
            timing.heartbeat(),
            store.acquire(&holder, &address, timing.duration),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "no answer within a heartbeat".into(),
            ))
        });
        match renewal {
            Ok(Some(lease)) if lease.epoch == fence.epoch() => fence.renewed(asked_at),
            // The holder names this process alone: the lease ran out while it was held up (a
            // freeze, a suspend), nobody else took it, and this renewal took it again, at a new
            // epoch. That is a new term: it begins as any leader's does, from the store.
            Ok(Some(lease)) => {
                break format!(
                    "the lease ran out while this daemon was held up ({:.1} s since its last \
                     renewal) and nobody else took it: leading again, as a new term (epoch {}; \
                     this term was {})",
                    fence.since_renewal().as_secs_f64(),
                    lease.epoch,
                    fence.epoch()
                );
            }
            Ok(None) => {
                break "another daemon took the lease: standing by".to_string();
            }
            Err(error) if fence.holds() => {
                tracing::warn!(%error, "cannot renew the lease; trying again");
            }
            Err(error) => {
                break format!(
                    "could not renew the lease for {:.1} s ({error}): standing by rather than act \
                     blind",
                    fence.since_renewal().as_secs_f64()
                );
            }
        }
    };
    // Nothing more is done in this term, from this moment.
    fence.end();
    lost
}
