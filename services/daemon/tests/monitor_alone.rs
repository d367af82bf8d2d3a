//! `autoscaler-monitor --no-controller`: the monitor alone says what it does not serve. An
//! explicit `--http-listen` is refused; a config's `monitor.http_listen` is not served, with a
//! warning; GetStatus answers UNIMPLEMENTED, as the README says.

use std::process::Stdio;
use std::time::Duration;

use autoscaler_proto::v1;
use autoscaler_testkit::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn monitor_alone(tls_dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(monitor_binary());
    command
        .arg("--no-controller")
        .arg("--tls-dir")
        .arg(tls_dir)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn an_explicit_http_listen_is_refused_without_the_controller() {
    let state = StateDir::new("alone-flag");
    write_tls_dir(&state.0);
    let http = free_port();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        monitor_alone(&state.0)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .output(),
    )
    .await
    .expect("the monitor exits within 20 s")
    .expect("running autoscaler-monitor");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("--http-listen cannot be served with --no-controller"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn a_configured_dashboard_is_not_served_alone_and_the_log_says_so() {
    let state = StateDir::new("alone-config");
    write_tls_dir(&state.0);
    let (grpc, http) = (free_port(), free_port());
    let config = state.0.join("alone.toml");
    std::fs::write(
        &config,
        format!("[monitor]\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n"),
    )
    .unwrap();
    let mut child = monitor_alone(&state.0)
        .arg("--config")
        .arg(&config)
        .spawn()
        .expect("starting autoscaler-monitor");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("monitor.http_listen is not served with --no-controller") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the warning within 20 s");
    assert!(warned, "the monitor ended without the warning");

    let address = std::net::SocketAddr::from(([127, 0, 0, 1], grpc));
    let mut status = status_client(address);
    // The port may not be open yet: retry while the connection is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match status
            .get_status(v1::GetStatusRequest { decisions_after: 0 })
            .await
        {
            Err(error)
                if error.code() == tonic::Code::Unavailable
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other.map(|_| ()),
        }
    };
    let code = answer.expect_err("no Status service alone").code();
    assert_eq!(code, tonic::Code::Unimplemented);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_err(),
        "nothing listens on the configured dashboard address"
    );
    child.kill().await.unwrap();
}
