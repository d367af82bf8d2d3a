//! A load generator: HTTP GETs sent through the load balancer at a steady, adjustable rate
//! (open loop: a request is sent on time whether or not the earlier ones were answered), each
//! with a timeout, over pooled keep-alive connections. Every outcome is kept with its time, so a
//! test, the demo or a benchmark can count what was served and what failed in any window, and
//! which instance served each request (the app names itself in its answer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// When it was sent, since the traffic started.
    pub sent: Duration,
    pub latency: Duration,
    /// The HTTP status; `None` when no answer came (a connection error or the timeout).
    pub status: Option<u16>,
    /// The instance that served it (`served by <id> ...` in the app's answer).
    pub served_by: Option<String>,
    /// Why it failed, when it did without a status.
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }
}

/// Counts over a window of outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub served: u64,
    pub failed: u64,
}

/// Traffic running until `stop`.
pub struct Traffic {
    started: Instant,
    /// Requests a second, times 1000.
    rate: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: tokio::task::JoinHandle<()>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("rate", &self.rate())
            .finish_non_exhaustive()
    }
}

/// The most requests in flight at once: beyond it, a request is sent late (and counted
/// failed if it cannot be sent within its timeout).
const MAX_IN_FLIGHT: u32 = 2_000;

impl Traffic {
    /// Starts sending `rate` requests a second to `http://{target}/`.
    pub fn start(target: SocketAddr, rate: f64) -> Traffic {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let rate = Arc::new(AtomicU64::new((rate.max(0.0) * 1000.0) as u64));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT as usize));
        let started = Instant::now();
        let uri: hyper::Uri = format!("http://{target}/")
            .parse()
            .expect("an address makes a URI");
        let task = tokio::spawn({
            let rate = rate.clone();
            let outcomes = outcomes.clone();
            let in_flight = in_flight.clone();
            async move {
                let mut next = tokio::time::Instant::now();
                loop {
                    let per_second = rate.load(Ordering::Relaxed) as f64 / 1000.0;
                    if per_second <= 0.0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        next = tokio::time::Instant::now();
                        continue;
                    }
                    next += Duration::from_secs_f64(1.0 / per_second);
                    tokio::time::sleep_until(next).await;
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let client = client.clone();
                    let uri = uri.clone();
                    let outcomes = outcomes.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let sent = Instant::now();
                        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                            let response = client.get(uri).await.map_err(|e| e.to_string())?;
                            let status = response.status().as_u16();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| e.to_string())?
                                .to_bytes();
                            Ok::<_, String>((status, body))
                        })
                        .await;
                        let (status, served_by, error) = match answer {
                            Ok(Ok((status, body))) => {
                                let text = String::from_utf8_lossy(&body);
                                let served_by = text
                                    .strip_prefix("served by ")
                                    .and_then(|rest| rest.split_whitespace().next())
                                    .map(str::to_string);
                                (Some(status), served_by, None)
                            }
                            Ok(Err(error)) => (None, None, Some(error)),
                            Err(_) => (None, None, Some("timed out".to_string())),
                        };
                        let outcome = Outcome {
                            sent: sent - started,
                            latency: sent.elapsed(),
                            status,
                            served_by,
                            error,
                        };
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(outcome);
                    });
                }
            }
        });
        Traffic {
            started,
            rate,
            outcomes,
            task,
            in_flight,
        }
    }

    /// Requests a second from now on.
    pub fn set_rate(&self, rate: f64) {
        self.rate
            .store((rate.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn rate(&self) -> f64 {
        self.rate.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Since the traffic started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every outcome so far, in the order the answers came.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Served and failed among the requests sent within `from..to` (since the start).
    pub fn tally(&self, from: Duration, to: Duration) -> Tally {
        tally(&self.outcomes(), from, to)
    }

    /// Stops sending, waits for the requests in flight (each has its timeout), and returns
    /// every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.task.abort();
        let _ = self.in_flight.acquire_many(MAX_IN_FLIGHT).await;
        self.outcomes()
    }
}

/// Served and failed among `outcomes` sent within `from..to`.
pub fn tally(outcomes: &[Outcome], from: Duration, to: Duration) -> Tally {
    let mut tally = Tally::default();
    for outcome in outcomes.iter().filter(|o| o.sent >= from && o.sent < to) {
        if outcome.ok() {
            tally.served += 1;
        } else {
            tally.failed += 1;
        }
    }
    tally
}
