//! The monitor's HTTP side: the dashboard (one page, its script and styles inside the binary, no
//! CDN), its JSON API (the Status payload and the last minutes of history), Prometheus metrics,
//! and a liveness probe. Read-only: nothing here changes the fleet.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use autoscaler_policy::fleet::Health;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::status::{History, StatusService};

const PAGE: &str = include_str!("dashboard.html");

/// What the HTTP handlers read.
#[derive(Debug)]
pub struct Dashboard {
    pub status: StatusService,
    pub history: Arc<History>,
}

/// The JSON the page renders: the status report and the history.
fn payload(dashboard: &Dashboard) -> serde_json::Value {
    serde_json::json!({
        "status": dashboard.status.report(0),
        "history": dashboard.history.samples(),
    })
}

async fn page(State(dashboard): State<Arc<Dashboard>>) -> Html<String> {
    // The first render needs no request: the data rides along in the page.
    let data = payload(&dashboard).to_string().replace("</", "<\\/");
    Html(PAGE.replace("/*INITIAL_DATA*/null", &data))
}

async fn api(State(dashboard): State<Arc<Dashboard>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(payload(&dashboard)),
    )
}

async fn metrics(State(dashboard): State<Arc<Dashboard>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&dashboard),
    )
}

/// The metrics in Prometheus' text format.
pub fn render_metrics(dashboard: &Dashboard) -> String {
    let report = dashboard.status.report(u64::MAX);
    let registry = &dashboard.status.registry;
    let view = registry.snapshot();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "autoscaler_desired_instances",
        "Fleet size the controller last decided on.",
        f64::from(report.desired_instances),
    );
    gauge(
        "autoscaler_observed_instances",
        "Instances the provider lists.",
        report
            .instances
            .iter()
            .filter(|i| i.state != "unlisted")
            .count() as f64,
    );
    gauge(
        "autoscaler_min_instances",
        "Lower bound of the fleet.",
        f64::from(report.min_instances),
    );
    gauge(
        "autoscaler_max_instances",
        "Upper bound of the fleet.",
        f64::from(report.max_instances),
    );
    let _ = writeln!(
        out,
        "# HELP autoscaler_instances Registered instances by health.\n# TYPE autoscaler_instances gauge"
    );
    for health in [
        Health::Unknown,
        Health::Healthy,
        Health::Suspect,
        Health::Unhealthy,
    ] {
        let _ = writeln!(
            out,
            "autoscaler_instances{{health=\"{health}\"}} {}",
            view.count(health)
        );
    }
    let _ = writeln!(
        out,
        "# HELP autoscaler_instance_load_percent Last load each instance reported.\n# TYPE autoscaler_instance_load_percent gauge"
    );
    for instance in &view.instances {
        if let Some(load) = instance.load {
            let _ = writeln!(
                out,
                "autoscaler_instance_load_percent{{instance_id=\"{}\"}} {load}",
                escape(&instance.instance_id)
            );
        }
    }
    let (buckets, count, sum) = registry.poll_latency.read();
    let _ = writeln!(
        out,
        "# HELP autoscaler_poll_latency_seconds Time one poll (a Ping carrying the metrics) took.\n# TYPE autoscaler_poll_latency_seconds histogram"
    );
    for (bound, cumulative) in buckets {
        let _ = writeln!(
            out,
            "autoscaler_poll_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "autoscaler_poll_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(out, "autoscaler_poll_latency_seconds_sum {sum}");
    let _ = writeln!(out, "autoscaler_poll_latency_seconds_count {count}");
    if let Some(controller) = &dashboard.status.controller {
        let counters = controller.counters();
        let mut counter = |name: &str, help: &str, values: Vec<(String, u64)>, label: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, value) in values {
                if label.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {value}", escape(&key));
                }
            }
        };
        counter(
            "autoscaler_evaluations_total",
            "Policy evaluations.",
            vec![(String::new(), counters.evaluations)],
            "",
        );
        counter(
            "autoscaler_decisions_total",
            "Evaluations in which a rule changed or held the recommendation, by rule.",
            counters.rules.into_iter().collect(),
            "reason",
        );
        counter(
            "autoscaler_actions_total",
            "Instances launched, scaled in and replaced.",
            vec![
                ("launch".to_string(), counters.launched),
                ("scale-in".to_string(), counters.scaled_in),
                ("replace".to_string(), counters.replaced),
            ],
            "action",
        );
        counter(
            "autoscaler_shadow_disagreements_total",
            "Evaluations where the shadow policy wanted another fleet size (never acted on).",
            vec![(String::new(), counters.shadow_disagreements)],
            "",
        );
        counter(
            "autoscaler_provider_errors_total",
            "Failed provider calls, each attempt counted, by kind.",
            counters.provider_errors.into_iter().collect(),
            "kind",
        );
        counter(
            "autoscaler_launch_failures_total",
            "Launches that failed: refused by the provider, or instances that stopped or were replaced before they ever reported.",
            vec![(String::new(), counters.launch_failures)],
            "",
        );
        let backoff = controller.launch_backoff();
        let _ = writeln!(
            out,
            "# HELP autoscaler_launch_failures_consecutive Failed launches in a row; 0 while launches succeed.\n\
             # TYPE autoscaler_launch_failures_consecutive gauge\n\
             autoscaler_launch_failures_consecutive {}\n\
             # HELP autoscaler_launch_backoff_seconds Time until the next launch may be tried while launches are failing.\n\
             # TYPE autoscaler_launch_backoff_seconds gauge\n\
             autoscaler_launch_backoff_seconds {}",
            backoff.as_ref().map_or(0, |b| b.consecutive_failures),
            backoff.as_ref().map_or(0.0, |b| b.retry_in.as_secs_f64()),
        );
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The dashboard's routes.
pub fn router(dashboard: Arc<Dashboard>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/api/status", get(api))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    dashboard: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(dashboard))
        .with_graceful_shutdown(shutdown)
        .await
}
