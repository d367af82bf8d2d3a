//! The agent's own Prometheus metrics (`GET /metrics`): encoded by `prometheus-client` in
//! Prometheus' text format, served over HTTP/1.1 by hyper (already in the agent for tonic), one
//! request per connection, each connection bounded in time.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::service::AgentState;

/// How long one connection may take, from accept to the last byte of the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// The metrics in Prometheus' text format (version 0.0.4).
pub fn render(state: &AgentState) -> String {
    let mut registry = Registry::default();
    let load = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
    load.get_or_create(&[("instance_id", state.instance_id().to_string())])
        .set(state.current().load / 100.0);
    registry.register(
        "autoscaler_agent_load_ratio",
        "The load this agent reports, as a share of its capacity (0-1)",
        load,
    );
    registry.register(
        "autoscaler_agent_uptime_seconds",
        "Time since the agent started",
        ConstGauge::new(state.uptime().as_secs_f64()),
    );
    registry.register(
        "autoscaler_agent_polls",
        "Heartbeats (Ping) answered",
        ConstCounter::new(state.polls()),
    );
    registry.register(
        "autoscaler_agent_monitor_attached",
        "1 while a monitor watches this agent",
        ConstGauge::new(i64::from(state.attachment().is_some())),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

fn answer(request: &Request<Incoming>, state: &AgentState) -> Response<Full<Bytes>> {
    let found =
        request.method() == hyper::Method::GET && matches!(request.uri().path(), "/metrics" | "/");
    let (status, content_type, body) = if found {
        (StatusCode::OK, prometheus_text::CONTENT_TYPE, render(state))
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Answers `GET /metrics` (and `GET /`) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&request, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::load::{LoadModel, LoadModelConfig};
    use crate::service::{AgentState, LoadSource};

    #[test]
    fn label_values_are_escaped_and_the_text_is_prometheus_0_0_4() {
        let model = LoadModel::new(LoadModelConfig::default()).unwrap();
        let state = AgentState::new("a\\b\"c\nd".to_string(), LoadSource::Simulated(model));
        let text = super::render(&state);
        assert!(
            text.contains("autoscaler_agent_load_ratio{instance_id=\"a\\\\b\\\"c\\nd\"} "),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE autoscaler_agent_polls_total counter\nautoscaler_agent_polls_total 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP autoscaler_agent_monitor_attached 1 while a monitor watches this agent.\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("# EOF"),
            "the Prometheus text format, not OpenMetrics: {text}"
        );
    }
}
