//! The AppInstance: a small, real HTTP service that the load balancer spreads requests over and
//! the agent measures. Each request holds one of the app's `slots` for `service_time`, of which
//! `cpu_time` is spent computing (the rest waits, as a request waits on a database); requests
//! beyond the slots queue, and beyond `max_queue` waiting ones are refused with 503. `GET
//! /healthz` answers the balancer's health checks; `GET /stats` gives the counters from which the
//! agent derives the load (the share of slot time in use) and the requests per second.
//!
//! The library takes a bound listener and a shutdown future; only `main.rs` reads flags, binds
//! the port and installs signal handlers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// What the app needs to run.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The instance it serves on, named in every answer (`served by ...`).
    pub instance_id: String,
    /// Requests served at once; the app's capacity is `slots / service_time` requests a second.
    pub slots: u32,
    /// How long a request holds its slot.
    pub service_time: Duration,
    /// How much of that is spent computing (at most `service_time`).
    pub cpu_time: Duration,
    /// Requests that may wait for a slot; one more is refused with 503.
    pub max_queue: u32,
    /// How long requests in flight get to finish at shutdown.
    pub drain_timeout: Duration,
    /// Answer the health path with 503 throughout while serving requests: a broken version,
    /// for the tests and rehearsals of a rollout.
    pub fail_health: bool,
}

impl AppConfig {
    pub fn new(instance_id: impl Into<String>) -> AppConfig {
        AppConfig {
            instance_id: instance_id.into(),
            slots: 4,
            service_time: Duration::from_millis(50),
            cpu_time: Duration::from_millis(1),
            max_queue: 256,
            drain_timeout: Duration::from_secs(10),
            fail_health: false,
        }
    }

    /// Checks the settings; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), AppError> {
        if self.instance_id.trim().is_empty() {
            return Err(AppError::Config("the instance id is empty".into()));
        }
        if self.slots == 0 || self.slots > 10_000 {
            return Err(AppError::Config(format!(
                "slots is {}; it must be 1 to 10000",
                self.slots
            )));
        }
        if self.service_time.is_zero() || self.service_time > Duration::from_secs(60) {
            return Err(AppError::Config(format!(
                "the service time is {:?}; it must be above 0 and at most 60 s",
                self.service_time
            )));
        }
        if self.cpu_time > self.service_time {
            return Err(AppError::Config(format!(
                "the CPU time ({:?}) is longer than the service time ({:?})",
                self.cpu_time, self.service_time
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error("the listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// The counters `GET /stats` answers with, as JSON. The agent reads them every sample.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub instance_id: String,
    /// Requests answered with 200 since the start.
    pub requests_total: u64,
    /// Requests refused with 503 (the queue was full, or the app was stopping).
    pub refused_total: u64,
    /// Slot time used since the start, in seconds (the integral of requests in flight).
    pub busy_seconds_total: f64,
    pub slots: u32,
    /// Requests holding a slot now.
    pub in_flight: u32,
    /// Requests waiting for a slot now.
    pub queued: u32,
    pub uptime_seconds: f64,
}

/// Requests in flight, integrated over time.
#[derive(Debug)]
struct Busy {
    in_flight: u32,
    since: Instant,
    seconds: f64,
}

impl Busy {
    fn advance(&mut self, now: Instant) {
        self.seconds += f64::from(self.in_flight) * (now - self.since).as_secs_f64();
        self.since = now;
    }
}

#[derive(Debug)]
struct App {
    config: AppConfig,
    started: Instant,
    slots: Semaphore,
    queued: AtomicU32,
    served: AtomicU64,
    refused: AtomicU64,
    busy: Mutex<Busy>,
    stopping: watch::Receiver<bool>,
}

impl App {
    fn busy(&self) -> MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> Stats {
        let now = Instant::now();
        let (busy_seconds_total, in_flight) = {
            let mut busy = self.busy();
            busy.advance(now);
            (busy.seconds, busy.in_flight)
        };
        Stats {
            instance_id: self.config.instance_id.clone(),
            requests_total: self.served.load(Ordering::Relaxed),
            refused_total: self.refused.load(Ordering::Relaxed),
            busy_seconds_total,
            slots: self.config.slots,
            in_flight,
            queued: self.queued.load(Ordering::Relaxed),
            uptime_seconds: (now - self.started).as_secs_f64(),
        }
    }

    /// One request's work: wait for a slot, compute for `cpu_time`, wait out the rest of
    /// `service_time`. `None` if it is refused.
    async fn serve(&self) -> Option<Duration> {
        let arrived = Instant::now();
        if *self.stopping.borrow() {
            return None;
        }
        // A free slot is taken at once; only a request that must wait counts against the
        // queue (two arriving together on a free slot: one serves, one waits). Every count
        // below is given back by a guard, whatever ends the request: hyper drops it when its
        // client goes away, and a count lowered only after the awaits would stay up for ever.
        let _permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) >= self.config.max_queue {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                let _waiting = Counted(|| {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                });
                self.slots.acquire().await.ok()?
            }
        };
        let started = Instant::now();
        {
            let mut busy = self.busy();
            busy.advance(started);
            busy.in_flight += 1;
        }
        let _in_flight = Counted(|| {
            let mut busy = self.busy();
            busy.advance(Instant::now());
            busy.in_flight -= 1;
        });
        let cpu_time = self.config.cpu_time;
        if !cpu_time.is_zero() {
            // Computing blocks a thread: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || compute_for(cpu_time)).await;
        }
        tokio::time::sleep_until((started + self.config.service_time).into()).await;
        Some(arrived.elapsed())
    }
}

/// Runs its closure when dropped: a count given back however the future holding it ends
/// (finished, or dropped at an await).
struct Counted<F: FnMut()>(F);

impl<F: FnMut()> Drop for Counted<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Keeps one core busy for `duration` (a hash chain the optimiser cannot drop).
fn compute_for(duration: Duration) -> u64 {
    let until = Instant::now() + duration;
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    while Instant::now() < until {
        for _ in 0..256 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
        }
    }
    std::hint::black_box(state)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn answer(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/" | "/work" => match app.serve().await {
            Some(took) => {
                app.served.fetch_add(1, Ordering::Relaxed);
                text(
                    StatusCode::OK,
                    format!(
                        "served by {} in {:.1} ms\n",
                        app.config.instance_id,
                        took.as_secs_f64() * 1e3
                    ),
                )
            }
            None => {
                app.refused.fetch_add(1, Ordering::Relaxed);
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{} is full or stopping\n", app.config.instance_id),
                )
            }
        },
        "/healthz" if *app.stopping.borrow() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into())
        }
        "/healthz" if app.config.fail_health => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "failing on purpose (--fail-health)\n".into(),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/stats" => {
            let body = serde_json::to_string(&app.stats()).expect("plain data serialises");
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves on `listener` until `shutdown` completes; then refuses new work, lets the requests
/// in flight finish (up to `drain_timeout`) and returns.
pub async fn run(
    config: AppConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    config.validate()?;
    let address = listener.local_addr().map_err(AppError::Listener)?;
    let (stop, stopping) = watch::channel(false);
    let app = Arc::new(App {
        slots: Semaphore::new(config.slots as usize),
        started: Instant::now(),
        queued: AtomicU32::new(0),
        served: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        busy: Mutex::new(Busy {
            in_flight: 0,
            since: Instant::now(),
            seconds: 0.0,
        }),
        stopping: stopping.clone(),
        config,
    });
    tracing::info!(
        instance_id = %app.config.instance_id,
        listen = %address,
        slots = app.config.slots,
        service_ms = app.config.service_time.as_millis() as u64,
        cpu_ms = app.config.cpu_time.as_millis() as u64,
        "app serving"
    );
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((socket, _)) = accepted else {
            continue;
        };
        let app = app.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            tokio::pin!(connection);
            let stop = async {
                // The guard `wait_for` returns is dropped at once: it must not live across an
                // await.
                let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap the connections that ended.
        while connections.try_join_next().is_some() {}
    }
    tracing::info!(
        in_flight = app.busy().in_flight,
        "stopping: new requests are refused, those in flight finish"
    );
    let _ = stop.send(true);
    let drained = tokio::time::timeout(app.config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still in flight at the drain timeout; leaving them");
    }
    Ok(())
}
