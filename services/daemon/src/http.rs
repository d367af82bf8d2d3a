//! The monitor's HTTP side: the dashboard (one page, its script and styles inside the binary, no
//! CDN), its JSON API (the Status payload and the last minutes of history), Prometheus metrics,
//! and a liveness probe. Read-only: nothing here changes the fleet.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use autoscaler_policy::fleet::Health;
use autoscaler_proto::v1;
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
    /// The loads at which the live policy acts (its target, or its thresholds), percent.
    pub load_marks: Vec<(f64, &'static str)>,
}

/// The JSON the page renders: the status report and the history.
fn payload(dashboard: &Dashboard) -> serde_json::Value {
    serde_json::json!({
        "status": StatusJson::from(&dashboard.status.report(0)),
        "history": dashboard.history.samples(),
        "load_marks": dashboard.load_marks,
    })
}

/// The dashboard's own JSON of the status report: what the page reads, with states and health
/// as names. It is not the wire schema, so the protocol can change without breaking the page.
#[derive(Debug, serde::Serialize)]
struct StatusJson<'a> {
    group: &'a str,
    monitor_id: &'a str,
    min_instances: u32,
    max_instances: u32,
    desired_instances: u32,
    instances: Vec<InstanceJson<'a>>,
    decisions: Vec<DecisionJson<'a>>,
    launch_failures: Option<LaunchFailuresJson<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct InstanceJson<'a> {
    instance_id: &'a str,
    state: &'static str,
    health: &'static str,
    load_percent: Option<f64>,
    recent_loads: &'a [f64],
    address: &'a str,
    age_ms: u64,
    consecutive_misses: u32,
    last_error: &'a str,
    zone: &'a str,
    state_reason: &'a str,
}

#[derive(Debug, serde::Serialize)]
struct DecisionJson<'a> {
    sequence: u64,
    at_unix_ms: i64,
    summary: &'a str,
    current: u32,
    recommendation: u32,
    desired: u32,
    rules: &'a [String],
    outcome: &'a [String],
    launched: &'a [String],
    terminated: &'a [String],
    replaced: &'a [String],
    repeated: u32,
    average_load_percent: Option<f64>,
    shadow_disagreement: &'a str,
    in_service: u32,
    warming: u32,
    without_metric: u32,
    unhealthy: u32,
    missing: &'a [String],
}

#[derive(Debug, serde::Serialize)]
struct LaunchFailuresJson<'a> {
    consecutive: u32,
    next_attempt_in_ms: u64,
    last_reason: &'a str,
}

impl<'a> From<&'a v1::GetStatusResponse> for StatusJson<'a> {
    fn from(report: &'a v1::GetStatusResponse) -> StatusJson<'a> {
        StatusJson {
            group: &report.group,
            monitor_id: &report.monitor_id,
            min_instances: report.min_instances,
            max_instances: report.max_instances,
            desired_instances: report.desired_instances,
            instances: report
                .instances
                .iter()
                .map(|i| InstanceJson {
                    instance_id: &i.instance_id,
                    state: i.state().name(),
                    health: i.health().name(),
                    load_percent: i.load_percent,
                    recent_loads: &i.recent_loads,
                    address: &i.address,
                    age_ms: i.age_ms,
                    consecutive_misses: i.consecutive_misses,
                    last_error: &i.last_error,
                    zone: &i.zone,
                    state_reason: &i.state_reason,
                })
                .collect(),
            decisions: report
                .decisions
                .iter()
                .map(|d| DecisionJson {
                    sequence: d.sequence,
                    at_unix_ms: d.at_unix_ms,
                    summary: &d.summary,
                    current: d.current,
                    recommendation: d.recommendation,
                    desired: d.desired,
                    rules: &d.rules,
                    outcome: &d.outcome,
                    launched: &d.launched,
                    terminated: &d.terminated,
                    replaced: &d.replaced,
                    repeated: d.repeated,
                    average_load_percent: d.average_load_percent,
                    shadow_disagreement: &d.shadow_disagreement,
                    in_service: d.in_service,
                    warming: d.warming,
                    without_metric: d.without_metric,
                    unhealthy: d.unhealthy,
                    missing: &d.missing,
                })
                .collect(),
            launch_failures: report.launch_failures.as_ref().map(|l| LaunchFailuresJson {
                consecutive: l.consecutive,
                next_attempt_in_ms: l.next_attempt_in_ms,
                last_reason: &l.last_reason,
            }),
        }
    }
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
        report.instances.iter().filter(|i| i.listed()).count() as f64,
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
        "# HELP autoscaler_instance_load_ratio Last load each instance reported, as a share of its capacity (0-1).\n# TYPE autoscaler_instance_load_ratio gauge"
    );
    for instance in &view.instances {
        if let Some(load) = instance.load {
            let _ = writeln!(
                out,
                "autoscaler_instance_load_ratio{{instance_id=\"{}\"}} {}",
                escape(&instance.instance_id),
                load / 100.0
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
