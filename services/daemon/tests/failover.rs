//! Leader and standby on one machine, as processes sharing a state dir (and its SQLite store):
//! a standby takes over a leader killed with SIGKILL, frozen with SIGSTOP past its lease, or
//! stopped cleanly (at once, keeping the instances); a deposed leader that comes back acts no
//! more and steps down; with the store out of reach the leader steps down rather than act blind,
//! and the fleet stays as it is. No instance is ever launched twice, and the activity history
//! outlives every change of leader (counting the quiet evaluations folded into a record). A
//! standby answers while it waits (health, the history, UNAVAILABLE naming the leader).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use autoscaler_proto::v1;
use autoscaler_testkit::daemon::*;
use autoscaler_testkit::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn signal(child: &tokio::process::Child, signal: Signal) {
    kill(Pid::from_raw(child.id().unwrap() as i32), signal).unwrap();
}

/// The instances reporting a load to this daemon.
fn reported(status: &v1::GetStatusResponse) -> BTreeSet<String> {
    status
        .instances
        .iter()
        .filter(|i| i.listed() && i.is_healthy() && i.load_percent.is_some())
        .map(|i| i.instance_id.clone())
        .collect()
}

/// Waits until the daemon at `port` leads a fleet of `size` instances, all reporting.
async fn leads(port: u16, size: usize, what: &str) -> v1::GetStatusResponse {
    let mut client = status_client(loopback(port));
    wait_status(&mut client, what, size, Duration::from_secs(60), |s| {
        reported(s).len() == size && listed(s).len() == size
    })
    .await
}

/// The activity history as the leader at `port` serves it: (epoch, at, summary) in order.
async fn history(port: u16) -> Vec<(u64, i64, String)> {
    let mut client = status_client(loopback(port));
    let records = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_activity(v1::GetActivityRequest {
            since_unix_ms: 0,
            limit: 0,
        }),
    )
    .await
    .expect("an answer within 10 s")
    .expect("the activity history")
    .into_inner()
    .records;
    records
        .into_iter()
        .map(|r| (r.epoch, r.at_unix_ms, r.summary))
        .collect()
}

/// What a standby at `port` (dashboard at `http`) answers while the daemon at `leader` leads:
/// nothing waits for a timeout.
async fn answers_as_a_standby(port: u16, http: u16, leader: u16) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let leader = format!("127.0.0.1:{leader}");
    let within = Duration::from_secs(5);
    let mut client = status_client(loopback(port));
    let refused = tokio::time::timeout(within, client.get_status(v1::GetStatusRequest::default()))
        .await
        .expect("an answer, not a wait")
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("stands by") && refused.message().contains(&leader),
        "names the leader: {refused:?}"
    );
    let activity = tokio::time::timeout(
        within,
        client.get_activity(v1::GetActivityRequest {
            since_unix_ms: 0,
            limit: 0,
        }),
    )
    .await
    .expect("an answer, not a wait")
    .expect("the history, from the shared store")
    .into_inner();
    assert!(!activity.records.is_empty(), "the leader's records");
    let mut health = HealthClient::new(channel_as(loopback(port), Role::Operator, Role::Monitor));
    for (service, status) in [
        ("", ServingStatus::Serving),
        ("autoscaler.v1.Monitor", ServingStatus::NotServing),
        ("autoscaler.v1.Status", ServingStatus::NotServing),
    ] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), status, "{service:?}");
    }
    let (code, body) = http_get(loopback(http), "/healthz").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("stands by") && body.contains(&leader),
        "{body}"
    );
    let (code, metrics) = http_get(loopback(http), "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("autoscaler_leader 0"), "{metrics}");
    let (code, body) = http_get(loopback(http), "/api/status").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&leader), "{body}");
}

/// The records of term `epoch` numbered `sequence` in the store of `state_dir` (read beside the
/// daemons, as SQLite allows).
async fn stored(state_dir: &std::path::Path, epoch: u64, sequence: u64) -> Vec<v1::DecisionRecord> {
    use autoscaler_store::Store as _;
    let store = autoscaler_store::SqliteStore::open(&state_dir.join("store.sqlite")).unwrap();
    store
        .activity(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|a| prost::Message::decode(a.body.as_slice()).unwrap())
        .filter(|r: &v1::DecisionRecord| r.epoch == epoch && r.sequence == sequence)
        .collect()
}

/// How many instances the local provider has ever launched (its next id, less one).
fn launched_ever(state_dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(state_dir.join("next-id"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
        - 1
}

async fn exit_code(child: &mut tokio::process::Child, what: &str) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within 20 s"))
        .unwrap()
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_a_frozen_and_a_stopped_leader() {
    let state_dir = StateDir::new("failover");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_daemon_process(&state_dir.0, port_a, &config);
    let first = leads(port_a, 2, "a leads 2 instances").await;
    let fleet = listed(&first);
    let http_b = free_port();
    let mut b = spawn_standby_process(&state_dir.0, port_b, Some(http_b), &config).await;
    answers_as_a_standby(port_b, http_b, port_a).await;
    // 1. The leader is killed: the standby takes over the same fleet, launching nothing.
    let killed = Instant::now();
    signal(&a, Signal::SIGKILL);
    let _ = a.wait().await;
    let taken = leads(port_b, 2, "b leads the same 2 instances").await;
    eprintln!(
        "figure: leader killed -> standby leads the fleet, all reporting: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(listed(&taken), fleet, "the fleet changed hands unchanged");
    let (code, metrics) = http_get(loopback(http_b), "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("autoscaler_leader 1"), "{metrics}");
    assert_eq!(launched_ever(&state_dir.0), 2, "nothing launched twice");
    let records = history(port_b).await;
    let epochs: BTreeSet<u64> = records.iter().map(|(e, _, _)| *e).collect();
    assert_eq!(
        epochs.into_iter().collect::<Vec<_>>(),
        [1, 2],
        "the history of both terms"
    );

    // 2. Split brain: b frozen past its lease, a (started again) takes over; b, resumed,
    // acts no more and steps down.
    let mut a = spawn_standby_process(&state_dir.0, port_a, None, &config).await;
    signal(&b, Signal::SIGSTOP);
    let frozen = Instant::now();
    leads(port_a, 2, "a leads again while b is frozen").await;
    eprintln!(
        "figure: leader frozen -> standby leads: {:.1} s",
        frozen.elapsed().as_secs_f64()
    );
    signal(&b, Signal::SIGCONT);
    assert_eq!(
        exit_code(&mut b, "the deposed leader").await,
        Some(75),
        "a deposed leader steps down (exit 75)"
    );
    let records = history(port_a).await;
    let third_began = records
        .iter()
        .filter(|(e, _, _)| *e == 3)
        .map(|(_, at, _)| *at)
        .min()
        .expect("records of the third term");
    assert!(
        records
            .iter()
            .filter(|(e, _, _)| *e == 2)
            .all(|(_, at, _)| *at < third_began),
        "the deposed leader wrote nothing once the third term began: {records:#?}"
    );
    assert_eq!(launched_ever(&state_dir.0), 2, "nothing launched twice");
    assert_eq!(
        listed(&leads(port_a, 2, "the fleet as it was").await),
        fleet
    );

    // 3. A clean stop hands the lease over at once, and the instances with it.
    let mut b = spawn_standby_process(&state_dir.0, port_b, None, &config).await;
    let stopped = Instant::now();
    signal(&a, Signal::SIGTERM);
    assert_eq!(exit_code(&mut a, "the stopped leader").await, Some(0));
    let handed = leads(port_b, 2, "b leads after a clean hand-over").await;
    eprintln!(
        "figure: leader stopped -> standby leads: {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(
        listed(&handed),
        fleet,
        "the instances were handed over, not terminated"
    );
    assert_eq!(launched_ever(&state_dir.0), 2);
    // Quiet evaluations fold into one record ("no change" x N), and the history counts them:
    // the record is written again, in its place, as more fold into it.
    let mut client = status_client(loopback(port_b));
    let quiet = wait_status(
        &mut client,
        "a quiet record",
        2,
        Duration::from_secs(60),
        |s| {
            reported(s).len() == 2
                && s.decisions
                    .last()
                    .is_some_and(|d| d.repeated >= 1 && d.missing.is_empty())
        },
    )
    .await;
    // The newest: the steady state, into which evaluations keep folding.
    let folded = quiet.decisions.last().unwrap();
    let (epoch, sequence) = (folded.epoch, folded.sequence);
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let [record] = stored(&state_dir.0, epoch, sequence).await.as_slice() {
            break record.repeated;
        }
        assert!(Instant::now() < deadline, "the record was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_status(
        &mut client,
        "more folded",
        2,
        Duration::from_secs(60),
        |s| {
            s.decisions
                .iter()
                .any(|d| d.sequence == sequence && d.repeated >= first + 2)
        },
    )
    .await;

    // The last daemon stops: no process is left behind.
    let pids: Vec<i32> = fleet.iter().filter_map(|id| state_dir.pid_of(id)).collect();
    signal(&b, Signal::SIGTERM);
    assert_eq!(exit_code(&mut b, "the last daemon").await, Some(0));
    let kept = stored(&state_dir.0, epoch, sequence).await;
    assert_eq!(kept.len(), 1, "one record, not one per write: {kept:#?}");
    assert!(
        kept[0].repeated >= first + 2,
        "the history counts the evaluations folded since the record was first written: {} \
         stored, {first} at first",
        kept[0].repeated
    );
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the last daemon");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_out_of_reach_the_leader_steps_down_and_the_fleet_stays() {
    let state_dir = StateDir::new("store-gone");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let port = free_port();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let fleet = listed(&leads(port, 2, "2 instances").await);
    let pids: Vec<i32> = fleet.iter().filter_map(|id| state_dir.pid_of(id)).collect();

    // Another process holds the store's write lock: the leader cannot renew its lease.
    let path = state_dir.0.join("store.sqlite");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked.send(()).unwrap();
        let _ = released.recv_timeout(Duration::from_secs(60));
        connection.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    assert_eq!(
        exit_code(&mut daemon, "the leader without its store").await,
        Some(75),
        "it steps down"
    );
    // It left its instances running: whoever leads next adopts them.
    for pid in &pids {
        assert!(alive(*pid), "agent {pid} was stopped");
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    assert_eq!(listed(&leads(port, 2, "led again").await), fleet);
    assert_eq!(launched_ever(&state_dir.0), 2, "nothing launched twice");
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(exit_code(&mut daemon, "the daemon").await, Some(0));
}

#[tokio::test]
async fn a_store_that_is_not_one_stops_the_daemon_naming_it_and_is_left_alone() {
    let state_dir = StateDir::new("bad-store");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let store = state_dir.0.join("store.sqlite");
    let garbage = b"not a database\n".repeat(300);
    std::fs::write(&store, &garbage).unwrap();
    write_tls_dir(&state_dir.0.join("tls"));
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(monitor_binary())
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--state-dir")
            .arg(&state_dir.0)
            .env("AUTOSCALER_TOKEN", TOKEN)
            .output(),
    )
    .await
    .expect("the daemon exits within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("store.sqlite") && stderr.contains("not a database"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), garbage, "left as it was");
    assert!(state_dir.pids().is_empty(), "nothing launched");
}
