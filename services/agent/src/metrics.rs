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
        "# HELP autoscaler_agent_load_ratio The load this agent reports, as a share of its capacity (0-1).\n\
         # TYPE autoscaler_agent_load_ratio gauge\n\
         autoscaler_agent_load_ratio{{instance_id=\"{id}\"}} {load}\n\
         # HELP autoscaler_agent_uptime_seconds Time since the agent started.\n\
         # TYPE autoscaler_agent_uptime_seconds gauge\n\
         autoscaler_agent_uptime_seconds {uptime}\n\
         # HELP autoscaler_agent_polls_total Heartbeats (Ping) answered.\n\
         # TYPE autoscaler_agent_polls_total counter\n\
         autoscaler_agent_polls_total {polls}\n\
         # HELP autoscaler_agent_monitor_attached 1 while a monitor watches this agent.\n\
         # TYPE autoscaler_agent_monitor_attached gauge\n\
         autoscaler_agent_monitor_attached {attached}\n",
        id = label_value(state.instance_id()),
        load = sample.load / 100.0,
        uptime = state.uptime().as_secs_f64(),
        polls = state.polls(),
        attached = u8::from(attached),
    )
}

/// A label value in Prometheus' text format: backslash, double quote and newline escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(super::label_value("local-0001"), "local-0001");
        assert_eq!(super::label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
