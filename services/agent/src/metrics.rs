//! The agent's own Prometheus metrics over a minimal HTTP/1.1 responder (`GET /metrics`), so the
//! agent needs no web framework. Each connection is answered once and closed, within a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::service::AgentState;

/// The metrics in Prometheus' text format.
pub fn render(state: &AgentState) -> String {
    let sample = state.current();
    let attached = state.attachment().is_some();
    format!(
        "# HELP autoscaler_agent_load_percent The load this agent reports, 0-100.\n\
         # TYPE autoscaler_agent_load_percent gauge\n\
         autoscaler_agent_load_percent{{instance_id=\"{id}\"}} {load}\n\
         # HELP autoscaler_agent_uptime_seconds Time since the agent started.\n\
         # TYPE autoscaler_agent_uptime_seconds gauge\n\
         autoscaler_agent_uptime_seconds {uptime}\n\
         # HELP autoscaler_agent_polls_total Heartbeats (Ping) answered.\n\
         # TYPE autoscaler_agent_polls_total counter\n\
         autoscaler_agent_polls_total {polls}\n\
         # HELP autoscaler_agent_monitor_attached 1 while a monitor watches this agent.\n\
         # TYPE autoscaler_agent_monitor_attached gauge\n\
         autoscaler_agent_monitor_attached {attached}\n",
        id = state.instance_id().replace('"', "\\\""),
        load = sample.load,
        uptime = state.uptime().as_secs_f64(),
        polls = state.polls(),
        attached = u8::from(attached),
    )
}

/// Answers `GET /metrics` (and `GET /`) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let exchange = async {
                let mut request = [0u8; 1024];
                let read = socket.read(&mut request).await?;
                let line = String::from_utf8_lossy(&request[..read]);
                let (status, body) =
                    if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                        ("200 OK", render(&state))
                    } else {
                        ("404 Not Found", "not found\n".to_string())
                    };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await?;
                socket.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        });
    }
}
