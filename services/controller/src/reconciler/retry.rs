//! Provider calls retried with backoff while they fail with a retryable error, each failed
//! attempt noted for the decision record.

use std::future::Future;
use std::time::Duration;

use autoscaler_policy::backoff::Backoff;

use crate::cloud::CloudError;
use crate::status::ControllerStatus;

/// Calls `call` up to `attempts` times while it fails with a retryable error, doubling the pause.
/// Every failed attempt is noted in `notes` (which ends up in the decision record).
pub async fn with_retries<T, F, Fut>(
    what: &str,
    attempts: u32,
    notes: &mut Vec<String>,
    status: &ControllerStatus,
    mut call: F,
) -> Result<T, CloudError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CloudError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut attempt = 1;
    loop {
        let result = call().await;
        if let Err(error) = &result {
            status.count_error(error);
        }
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt < attempts => {
                let pause = backoff.failed();
                tracing::warn!(%error, attempt, retry_in = ?pause, "{what} failed; retrying");
                notes.push(format!(
                    "{what} failed (attempt {attempt}, {error}); retried after {pause:?}"
                ));
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
