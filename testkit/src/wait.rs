//! Waiting for a condition with a deadline, never for a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds, or panics after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking form of `eventually`, for code outside a runtime: polls every `every` until
/// `condition` holds; `Err` names what was awaited once `deadline` has passed.
pub fn wait_blocking(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), String> {
    let give_up = Instant::now() + deadline;
    while !condition() {
        if Instant::now() >= give_up {
            return Err(format!("timed out after {deadline:?} waiting until {what}"));
        }
        std::thread::sleep(every);
    }
    Ok(())
}
