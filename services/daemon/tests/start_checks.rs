//! What the daemon checks before it launches anything: flags and files that can never work
//! stop it at once (exit 64) with one line naming the flag or the file and the cause, and no
//! agent is started on them.

use std::time::Duration;

use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;

/// Runs the daemon with `extra` flags on a fresh state dir; its exit code, its stderr, and how
/// many instances it launched.
async fn start(
    name: &str,
    extra: &[&str],
    tls_dir: Option<&std::path::Path>,
) -> (Option<i32>, String, usize) {
    let state_dir = StateDir::new(name);
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let mut command = tokio::process::Command::new(monitor_binary());
    command
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--state-dir")
        .arg(&state_dir.0)
        .args(extra)
        .env("AUTOSCALER_TOKEN", TOKEN)
        .kill_on_drop(true);
    if let Some(dir) = tls_dir {
        command.arg("--tls-dir").arg(dir);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the daemon stops within 30 s on a setting that cannot work")
        .unwrap();
    let launched = std::fs::read_dir(&state_dir.0)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".instance"))
                .count()
        })
        .unwrap_or(0);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        launched,
    )
}

/// Outside test, finding 8: `--advertise` that agents cannot use. Before, the daemon started
/// and launched agents that exited 64 ("invalid uri character") or never registered (port 0),
/// and backed off for ever.
#[tokio::test]
async fn an_advertised_address_agents_cannot_reach_stops_the_daemon_naming_the_flag() {
    for (advertise, cause) in [
        ("not an address", "invalid"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1", "no port"),
        ("0.0.0.0:7000", "no address an agent can reach"),
    ] {
        let (code, stderr, launched) = start("advertise", &["--advertise", advertise], None).await;
        assert_eq!(code, Some(64), "{advertise}: {stderr}");
        assert!(stderr.contains("--advertise"), "{advertise}: {stderr}");
        assert!(stderr.contains(cause), "{advertise}: {stderr}");
        assert_eq!(launched, 0, "{advertise}: nothing is launched");
    }
}

/// Outside test, findings 8 and 9: a `--tls-dir` without the agents' material, or with a
/// damaged key, stops the daemon naming the file. Before, the first started agents that could
/// not start; the second said "failed to parse private key as RSA", naming no file.
#[tokio::test]
async fn a_tls_dir_that_cannot_work_stops_the_daemon_naming_the_file() {
    let dir = StateDir::new("tls-dir-checks");
    let tls = dir.0.join("material");
    write_tls_dir(&tls);
    std::fs::remove_file(tls.join("agent.key")).unwrap();
    let (code, stderr, launched) = start("tls-no-agent", &[], Some(&tls)).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("agent.key"), "{stderr}");
    assert_eq!(launched, 0);

    write_tls_dir(&tls);
    std::fs::write(
        tls.join("monitor.key"),
        "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, stderr, launched) = start("tls-bad-key", &[], Some(&tls)).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("monitor.key"), "{stderr}");
    assert_eq!(launched, 0);
}
