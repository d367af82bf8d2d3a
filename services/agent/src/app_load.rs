//! The application's real load: the agent reads the app's counters (`GET /stats` of
//! `autoscaler-app`) every sample and turns them into a utilisation, the share of the app's slot
//! time in use over the last second, and requests per second over the same window.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use autoscaler_app::Stats;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// The window the load and the rate are averaged over.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The most of `/stats` that is read: a real answer is a few hundred bytes.
const MAX_STATS_BYTES: usize = 16 * 1024;

/// What the app's counters say over the last window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AppSample {
    /// Slot time in use, 0 to 100 percent.
    pub load: f64,
    pub requests_per_second: f64,
}

/// The app's counters over time, kept for one window.
#[derive(Debug, Default)]
pub struct AppLoad {
    seen: VecDeque<(Instant, f64, u64)>,
}

impl AppLoad {
    /// Takes the counters read at `at`; the load and the rate since the oldest reading still in
    /// the window, or `None` for the first reading (or counters that went back: the app
    /// restarted, and the window starts again).
    pub fn observe(&mut self, at: Instant, stats: &Stats) -> Option<AppSample> {
        if self.seen.back().is_some_and(|(_, busy, requests)| {
            stats.busy_seconds_total < *busy || stats.requests_total < *requests
        }) {
            self.seen.clear();
        }
        self.seen
            .push_back((at, stats.busy_seconds_total, stats.requests_total));
        // Keep the newest reading at least a window old, as the base.
        while self.seen.len() > 2 && at.duration_since(self.seen[1].0) >= WINDOW {
            self.seen.pop_front();
        }
        let (since, busy, requests) = *self.seen.front()?;
        let elapsed = at.duration_since(since).as_secs_f64();
        if elapsed <= 0.0 || stats.slots == 0 {
            return None;
        }
        let load = (stats.busy_seconds_total - busy) / (elapsed * f64::from(stats.slots)) * 100.0;
        Some(AppSample {
            load: load.clamp(0.0, 100.0),
            requests_per_second: (stats.requests_total - requests) as f64 / elapsed,
        })
    }
}

/// Why the app's counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no answer from the app at {0} within {1:?}")]
    TimedOut(SocketAddr, Duration),
    #[error("the app at {0}: {1}")]
    Http(SocketAddr, String),
    #[error("the app at {0} answered {1}")]
    Status(SocketAddr, hyper::StatusCode),
    #[error("the app's counters are not readable: {0}")]
    Body(String),
}

/// `GET /stats` from the app at `address`, within `timeout`.
pub async fn fetch(address: SocketAddr, timeout: Duration) -> Result<Stats, AppError> {
    let exchange = async {
        let http = |e: &dyn std::fmt::Display| AppError::Http(address, e.to_string());
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| http(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http(&e))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get("/stats")
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        if !response.status().is_success() {
            driver.abort();
            return Err(AppError::Status(address, response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_STATS_BYTES)
            .collect()
            .await
            .map_err(|e| AppError::Body(e.to_string()))?
            .to_bytes();
        driver.abort();
        serde_json::from_slice(&body).map_err(|e| AppError::Body(e.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| AppError::TimedOut(address, timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(busy: f64, requests: u64) -> Stats {
        Stats {
            instance_id: "local-0001".into(),
            requests_total: requests,
            refused_total: 0,
            busy_seconds_total: busy,
            slots: 4,
            in_flight: 0,
            queued: 0,
            uptime_seconds: 0.0,
        }
    }

    #[test]
    fn the_load_is_the_share_of_slot_time_used_over_the_last_second() {
        let mut load = AppLoad::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(load.observe(at(0), &stats(0.0, 0)), None);
        // 4 slots, half busy for 200 ms: 0.4 slot-seconds.
        let sample = load.observe(at(200), &stats(0.4, 10)).unwrap();
        assert!((sample.load - 50.0).abs() < 1e-9, "{sample:?}");
        assert!((sample.requests_per_second - 50.0).abs() < 1e-9);
        // A second later, all busy since the last reading: averaged over the window.
        for step in 2..=6 {
            load.observe(
                at(step * 200),
                &stats(0.4 + 0.8 * (step - 1) as f64, 10 * step),
            );
        }
        let sample = load.observe(at(1400), &stats(0.4 + 0.8 * 6.0, 70)).unwrap();
        assert!((sample.load - 100.0).abs() < 1e-9, "{sample:?}");
        // Counters that go back (a restarted app) start the window again.
        assert_eq!(load.observe(at(1600), &stats(0.0, 0)), None);
        assert!(load.observe(at(1800), &stats(0.0, 0)).unwrap().load == 0.0);
    }
}
