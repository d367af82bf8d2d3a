//! The monitor's HTTP side: the dashboard (one page, its script and styles inside the binary, no
//! CDN), its JSON API (the Status payload and the last minutes of history), Prometheus metrics,
//! and a liveness probe. Read-only: nothing here changes the fleet.

use std::future::Future;
use std::sync::Arc;

use autoscaler_controller::cloud::CloudErrorKind;
use autoscaler_controller::policy;
use autoscaler_proto::v1;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
    /// The lease this daemon leads by, when it has a store: `autoscaler_leader` is 0 the moment
    /// its term ends (not once the daemon has stopped serving it).
    pub fence: Option<Arc<crate::leader::LeaseFence>>,
}

/// The help of `autoscaler_leader`, which the leader reports as 1 and a standby as 0.
pub const LEADER_HELP: &str =
    "1 while this daemon leads its group (polls, decides, acts); 0 while it stands by";

/// How many decisions the page lists.
const DECISIONS_SHOWN: usize = 15;

/// The JSON the page renders: the status report and the history. With a store, the decisions
/// are the activity history's last ones (they outlive restarts and failovers).
async fn payload(dashboard: &Dashboard) -> serde_json::Value {
    let mut report = dashboard.status.report(0);
    if dashboard.status.term.is_some() {
        match dashboard.status.activity(0, DECISIONS_SHOWN).await {
            Ok(records) => report.decisions = records,
            Err(error) => {
                tracing::warn!(%error, "cannot read the activity history; showing this daemon's own decisions")
            }
        }
    }
    serde_json::json!({
        "status": StatusJson::from(&report),
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
    /// What the schedules set now, when the group has any.
    schedule: Option<ScheduleJson<'a>>,
    /// What the forecaster says, when the group has one.
    forecast: Option<ForecastJson<'a>>,
    /// The launch specification version new instances get, and the running (or last) refresh.
    launch_version: &'a str,
    refresh: Option<RefreshJson<'a>>,
}

/// An instance refresh, as the page shows it.
#[derive(Debug, serde::Serialize)]
struct RefreshJson<'a> {
    id: u64,
    status: &'a str,
    target: &'a str,
    previous: &'a str,
    percent_complete: u32,
    instances_left: u32,
    replaced: u32,
    reason: &'a str,
    paused_until_ms: i64,
}

#[derive(Debug, serde::Serialize)]
struct ForecastJson<'a> {
    mode: &'a str,
    acting: bool,
    fallen_back: bool,
    history_hours: f64,
    made_at_ms: i64,
    demand: f64,
    lead_secs: u32,
    lead_samples: u32,
    floor: u32,
    target_percent: f64,
    error_percent: Option<f64>,
    under_percent: Option<f64>,
    baseline_error_percent: Option<f64>,
    next: Vec<PointJson>,
}

#[derive(Debug, serde::Serialize)]
struct PointJson {
    at_ms: i64,
    capacities: f64,
}

#[derive(Debug, serde::Serialize)]
struct ScheduleJson<'a> {
    min_instances: u32,
    max_instances: u32,
    active: Vec<WindowJson<'a>>,
    next: Option<WindowJson<'a>>,
    change: &'a str,
}

/// A scheduled window: one holding (until `ends_at_ms`) or the next (from `starts_at_ms`).
#[derive(Debug, serde::Serialize)]
struct WindowJson<'a> {
    name: &'a str,
    min_instances: u32,
    max_instances: Option<u32>,
    starts_at_ms: i64,
    ends_at_ms: i64,
}

impl<'a> From<&'a v1::ScheduledWindow> for WindowJson<'a> {
    fn from(w: &'a v1::ScheduledWindow) -> WindowJson<'a> {
        WindowJson {
            name: &w.name,
            min_instances: w.min_instances,
            max_instances: w.max_instances,
            starts_at_ms: w.starts_at_ms,
            ends_at_ms: w.ends_at_ms,
        }
    }
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
    /// The load balancer's state of it (`healthy`, `draining`, ...), empty without one.
    target_state: &'static str,
    requests_in_flight: Option<u32>,
    target_reason: &'a str,
    requests_per_second: Option<f64>,
    /// The launch specification version it was launched with.
    version: &'a str,
    protected_from_scale_in: bool,
    /// Where its lifecycle hooks hold it (`Pending:Wait`, ...), and what the last one did.
    lifecycle_state: &'a str,
    hook_summary: &'a str,
    hook_output_tail: &'a str,
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
                    target_state: i.target_state().name(),
                    requests_in_flight: i.requests_in_flight,
                    target_reason: &i.target_reason,
                    requests_per_second: i.requests_per_second,
                    version: &i.version,
                    protected_from_scale_in: i.protected_from_scale_in,
                    lifecycle_state: &i.lifecycle_state,
                    hook_summary: &i.hook_summary,
                    hook_output_tail: &i.hook_output_tail,
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
            schedule: report.schedule.as_ref().map(|s| ScheduleJson {
                min_instances: s.min_instances,
                max_instances: s.max_instances,
                active: s.active.iter().map(WindowJson::from).collect(),
                next: s.next.as_ref().map(WindowJson::from),
                change: &s.change,
            }),
            launch_version: &report.launch_version,
            refresh: report.refresh.as_ref().map(|r| RefreshJson {
                id: r.id,
                status: &r.status,
                target: &r.target,
                previous: &r.previous,
                percent_complete: r.percent_complete,
                instances_left: r.instances_left,
                replaced: r.replaced,
                reason: &r.reason,
                paused_until_ms: r.paused_until_ms,
            }),
            forecast: report.forecast.as_ref().map(|f| ForecastJson {
                mode: &f.mode,
                acting: f.acting,
                fallen_back: f.fallen_back,
                history_hours: f.history_hours,
                made_at_ms: f.made_at_ms,
                demand: f.demand,
                lead_secs: f.lead_secs,
                lead_samples: f.lead_samples,
                floor: f.floor,
                target_percent: f.target_percent,
                error_percent: f.error_percent,
                under_percent: f.under_percent,
                baseline_error_percent: f.baseline_error_percent,
                next: f
                    .next
                    .iter()
                    .map(|p| PointJson {
                        at_ms: p.at_ms,
                        capacities: p.capacities,
                    })
                    .collect(),
            }),
        }
    }
}

async fn page(State(dashboard): State<Arc<Dashboard>>) -> Html<String> {
    // The first render needs no request: the data rides along in the page.
    let data = payload(&dashboard).await.to_string().replace("</", "<\\/");
    Html(PAGE.replace("/*INITIAL_DATA*/null", &data))
}

async fn api(State(dashboard): State<Arc<Dashboard>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(payload(&dashboard).await),
    )
}

async fn metrics(State(dashboard): State<Arc<Dashboard>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        render_metrics(&dashboard),
    )
}

/// The metrics in Prometheus' text format (version 0.0.4), as of now: the controller's and the
/// monitor's (`Registry::register_metrics`), encoded by `prometheus-client`.
pub fn render_metrics(dashboard: &Dashboard) -> String {
    let report = dashboard.status.report(u64::MAX);
    let mut metrics = prometheus_client::registry::Registry::default();
    let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metrics.register(
        "autoscaler_desired_instances",
        "Fleet size the controller last decided on",
        gauge(report.desired_instances.into()),
    );
    metrics.register(
        "autoscaler_observed_instances",
        "Instances the provider lists",
        gauge(report.instances.iter().filter(|i| i.listed()).count() as u64),
    );
    metrics.register(
        "autoscaler_min_instances",
        "Lower bound of the fleet",
        gauge(report.min_instances.into()),
    );
    let leads = dashboard.fence.as_ref().is_none_or(|fence| !fence.ended());
    metrics.register("autoscaler_leader", LEADER_HELP, gauge(u64::from(leads)));
    metrics.register(
        "autoscaler_max_instances",
        "Upper bound of the fleet",
        gauge(report.max_instances.into()),
    );
    if let Some(forecast) = &report.forecast {
        let value = |v: f64| ConstGauge::<f64>::new(v);
        metrics.register(
            "autoscaler_forecast_demand_capacities",
            "The most demand the forecast has for the next lead time, in instance capacities",
            value(forecast.demand),
        );
        metrics.register(
            "autoscaler_forecast_floor_instances",
            "The fleet the forecast demand of the next lead time needs at the target load",
            gauge(forecast.floor.into()),
        );
        metrics.register(
            "autoscaler_forecast_lead_seconds",
            "The lead time the forecast looks ahead (launches' time to service, p95)",
            gauge(forecast.lead_secs.into()),
        );
        metrics.register(
            "autoscaler_forecast_acting",
            "1 while the forecast raises the floor (forecast-and-scale, enough history, check passed)",
            gauge(u64::from(forecast.acting)),
        );
        metrics.register(
            "autoscaler_forecast_fallen_back",
            "1 while the forecast's error is past its bound (forecast-only by itself)",
            gauge(u64::from(forecast.fallen_back)),
        );
        if let Some(error) = forecast.error_percent {
            metrics.register(
                "autoscaler_forecast_error_percent",
                "The error (WAPE) of the last 24 hours' hourly forecasts against the demand",
                value(error),
            );
        }
    }
    dashboard.status.registry.register_metrics(&mut metrics);
    if let Some(controller) = &dashboard.status.controller {
        let counters = controller.counters();
        let labelled = |label: &'static str, values: Vec<(&'static str, u64)>| {
            let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
            for (value, count) in values {
                family.get_or_create(&[(label, value)]).inc_by(count);
            }
            family
        };
        metrics.register(
            "autoscaler_evaluations",
            "Policy evaluations",
            ConstCounter::new(counters.evaluations),
        );
        metrics.register(
            "autoscaler_decisions",
            "Evaluations in which a rule changed or held the recommendation, by rule",
            labelled(
                "reason",
                policy::Rule::ALL
                    .iter()
                    .map(|rule| {
                        (
                            rule.as_str(),
                            counters.rules.get(rule).copied().unwrap_or(0),
                        )
                    })
                    .collect(),
            ),
        );
        metrics.register(
            "autoscaler_actions",
            "Instances launched, scaled in and replaced",
            labelled(
                "action",
                vec![
                    ("launch", counters.launched),
                    ("scale-in", counters.scaled_in),
                    ("replace", counters.replaced),
                ],
            ),
        );
        metrics.register(
            "autoscaler_shadow_disagreements",
            "Evaluations where the shadow policy wanted another fleet size (never acted on)",
            ConstCounter::new(counters.shadow_disagreements),
        );
        metrics.register(
            "autoscaler_provider_errors",
            "Failed provider calls, each attempt counted, by kind",
            labelled(
                "kind",
                CloudErrorKind::ALL
                    .iter()
                    .map(|kind| {
                        let count = counters.provider_errors.get(kind).copied().unwrap_or(0);
                        (kind.as_str(), count)
                    })
                    .collect(),
            ),
        );
        metrics.register(
            "autoscaler_launch_failures",
            "Launches that failed: refused by the provider, or instances that stopped or were replaced before they ever reported",
            ConstCounter::new(counters.launch_failures),
        );
        let backoff = controller.launch_backoff();
        metrics.register(
            "autoscaler_launch_failures_consecutive",
            "Failed launches in a row; 0 while launches succeed",
            gauge(
                backoff
                    .as_ref()
                    .map_or(0, |b| b.consecutive_failures.into()),
            ),
        );
        metrics.register(
            "autoscaler_launch_backoff_seconds",
            "Time until the next launch may be tried while launches are failing",
            ConstGauge::new(backoff.as_ref().map_or(0.0, |b| b.retry_in.as_secs_f64())),
        );
    }
    let mut text = String::new();
    prometheus_text::encode(&mut text, &metrics).expect("writing to a String cannot fail");
    text
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
