//! Leader and standby on one machine, as processes sharing a state dir (and its SQLite store):
//! a standby takes over a leader killed with SIGKILL, frozen with SIGSTOP past its lease, or
//! stopped cleanly (at once, keeping the instances); a deposed leader that comes back acts no
//! more and stands by in the same process; with the store out of reach the leader stands by
//! rather than act blind, the fleet stays as it is, and it leads again when the store is back; a
//! lone leader frozen past its lease, or restarted within it, leads on in a new term. No instance is ever launched twice, and the activity history
//! outlives every change of leader (counting the quiet evaluations folded into a record). A
//! standby answers while it waits (health, the history, UNAVAILABLE naming the leader). Schedules
//! put at run time (the Operator service) are checked as the config is, kept in the store and
//! taken up by the next leader.

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

/// Waits until the daemon whose dashboard is at `http` stands by, naming the leader at
/// `leader`, and reports `autoscaler_leader 0`.
async fn stands_by(http: u16, leader: u16) {
    let leader = format!("127.0.0.1:{leader}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = try_http_get(loopback(http), "/healthz")
            .await
            .unwrap_or_default();
        let (_, metrics) = try_http_get(loopback(http), "/metrics")
            .await
            .unwrap_or_default();
        if body.contains("stands by")
            && body.contains(&leader)
            && metrics.contains("autoscaler_leader 0")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not standing by within 20 s: {body} / {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record the store of `state_dir` holds, as (epoch, sequence, first written at).
async fn stored_keys(state_dir: &std::path::Path) -> BTreeSet<(u64, u64, i64)> {
    use autoscaler_store::Store as _;
    let store = autoscaler_store::SqliteStore::open(&state_dir.join("store.sqlite")).unwrap();
    store
        .activity(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|a| (a.epoch, a.sequence, a.at_ms))
        .collect()
}

/// Outside test, findings 1 and 2 (what a term is), with one daemon: frozen past its lease
/// with nobody else to take it, it takes the lease again at a new epoch and goes on leading
/// the same fleet (before, it deposed itself and exited 75, leaving its agents unmanaged);
/// killed and started again at once, inside its lease, the new process is a new term and no
/// record of the earlier terms is replaced (before, it renewed its predecessor's lease, numbered
/// its records from 1 again in the same epoch and overwrote them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_frozen_or_restarted_within_its_lease_leads_on_in_a_new_term() {
    let state_dir = StateDir::new("lone-term");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let port = free_port();
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let fleet = listed(&leads(port, 2, "2 instances").await);

    // 1. Frozen for 5 s, past its 3 s lease, with no other daemon.
    signal(&daemon, Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&daemon, Signal::SIGCONT);
    let resumed = Instant::now();
    let mut client = status_client(loopback(port));
    let again = wait_status(&mut client, "led again", 2, Duration::from_secs(60), |s| {
        reported(s).len() == 2 && s.decisions.iter().any(|d| d.epoch == 2)
    })
    .await;
    eprintln!(
        "figure: a lone leader frozen past its lease leads again {:.1} s after it resumed",
        resumed.elapsed().as_secs_f64()
    );
    assert!(daemon.try_wait().unwrap().is_none(), "it did not exit");
    assert_eq!(listed(&again), fleet, "the same fleet");
    assert_eq!(launched_ever(&state_dir.0), 2, "nothing launched twice");

    // 2. Killed and started again at once, inside its lease.
    let before = stored_keys(&state_dir.0).await;
    assert!(before.iter().any(|(epoch, _, _)| *epoch == 1), "{before:?}");
    signal(&daemon, Signal::SIGKILL);
    let _ = daemon.wait().await;
    let mut daemon = spawn_daemon_process(&state_dir.0, port, &config);
    let mut client = status_client(loopback(port));
    let third = wait_status(&mut client, "a new term", 2, Duration::from_secs(60), |s| {
        reported(s).len() == 2 && !s.decisions.is_empty()
    })
    .await;
    let epoch = third.decisions.last().unwrap().epoch;
    assert_eq!(epoch, 3, "the restarted daemon's own term");
    // Its records are written; every record of the earlier terms is still there, as written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = stored_keys(&state_dir.0).await;
        if after.iter().any(|(e, _, _)| *e == 3) {
            let lost: Vec<_> = before.difference(&after).collect();
            assert!(
                lost.is_empty(),
                "records of earlier terms replaced: {lost:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the new term wrote no record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed(&third), fleet, "the same fleet");
    assert_eq!(launched_ever(&state_dir.0), 2, "nothing launched twice");
    signal(&daemon, Signal::SIGTERM);
    assert_eq!(exit_code(&mut daemon, "the daemon").await, Some(0));
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
    // The deposed leader stands by in the same process (it does not exit): it says so, and
    // names the leader that took the lease.
    stands_by(http_b, port_a).await;
    assert!(
        b.try_wait().unwrap().is_none(),
        "the deposed leader is still running"
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

    // 3. A clean stop hands the lease over at once, and the instances with it: to b, which
    // has stood by since it was deposed.
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
    // It steps down, and stands by in the same process: asked, it says so.
    let mut client = status_client(loopback(port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_status(v1::GetStatusRequest::default()),
        )
        .await;
        if let Ok(Err(status)) = &answer
            && status.code() == tonic::Code::Unavailable
            && status.message().contains("stands by")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still leading without its store: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(daemon.try_wait().unwrap().is_none(), "it did not exit");
    // It left its instances running: whoever leads next adopts them.
    for pid in &pids {
        assert!(alive(*pid), "agent {pid} was stopped");
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    // The store back, the same process leads again.
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

/// Outside test, finding 5: a standby started before the group's TLS material exists (the
/// leader makes it when its term begins) answers once it is there, naming the leader. Before,
/// it accepted connections and never completed a handshake: its clients got transport errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_started_before_the_tls_material_answers_once_it_is_there() {
    use autoscaler_store::Store as _;
    let state_dir = StateDir::new("standby-no-tls");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    // Another daemon holds the lease, and has not made the material yet.
    let store = autoscaler_store::SqliteStore::open(&state_dir.0.join("store.sqlite")).unwrap();
    store
        .acquire("elsewhere@host#1", "127.0.0.1:9", Duration::from_secs(120))
        .await
        .unwrap()
        .expect("a free lease");
    assert!(!state_dir.0.join("tls").exists());
    let port = free_port();
    let mut command = bare_daemon_command(&state_dir.0, port, &config);
    command
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut standby = standing_by(command).await;
    // The leader makes the material.
    write_tls_dir(&state_dir.0.join("tls"));
    let mut client = status_client(loopback(port));
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_status(v1::GetStatusRequest::default()),
    )
    .await
    .expect("an answer within 10 s, not a wait")
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("stands by") && refused.message().contains("elsewhere@host#1"),
        "names the leader: {refused:?}"
    );
    signal(&standby, Signal::SIGTERM);
    assert_eq!(exit_code(&mut standby, "the standby").await, Some(0));
}

fn window(name: &str, min: u32) -> v1::ScheduleEntry {
    v1::ScheduleEntry {
        name: name.to_string(),
        // Starts every minute and lasts an hour: it holds now, whatever the time.
        kind: Some(v1::schedule_entry::Kind::Window(v1::ScheduleWindow {
            cron: "* * * * *".to_string(),
            time_zone: "Europe/Paris".to_string(),
            duration_secs: 3_600,
            min_instances: min,
            max_instances: None,
        })),
        source: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_put_at_run_time_are_checked_kept_and_outlive_a_failover() {
    let state_dir = StateDir::new("runtime-schedules");
    let config = process_config_file(&state_dir.0, 4, 30.0);
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_daemon_process(&state_dir.0, port_a, &config);
    leads(port_a, 2, "a leads 2 instances").await;
    let mut operator = operator_client(loopback(port_a));

    // Bad input: a clear error naming the field, and nothing changed.
    for (entry, code, words) in [
        (
            v1::ScheduleEntry {
                kind: Some(v1::schedule_entry::Kind::Window(v1::ScheduleWindow {
                    cron: "every morning".to_string(),
                    ..Default::default()
                })),
                ..window("bad-cron", 3)
            },
            tonic::Code::InvalidArgument,
            "cron",
        ),
        (
            window("too-big", 9),
            tonic::Code::InvalidArgument,
            "min_instances",
        ),
        (
            v1::ScheduleEntry {
                kind: None,
                ..window("no-kind", 3)
            },
            tonic::Code::InvalidArgument,
            "entry.kind",
        ),
        (window("", 3), tonic::Code::InvalidArgument, "entry.name"),
    ] {
        let error = operator
            .put_schedule(v1::PutScheduleRequest { entry: Some(entry) })
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "{error:?}");
        assert!(error.message().contains(words), "{words}: {error:?}");
    }
    let error = operator
        .delete_schedule(v1::DeleteScheduleRequest {
            name: "nothing".to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(error.code(), tonic::Code::NotFound);
    let listed = operator
        .list_schedules(v1::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");

    // A window put at run time raises the floor at once.
    let put = operator
        .put_schedule(v1::PutScheduleRequest {
            entry: Some(window("launch-day", 3)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!put.replaced);
    let status = leads(port_a, 3, "a keeps the window's floor of 3").await;
    let schedule = status.schedule.expect("the status shows it");
    assert_eq!(schedule.active[0].name, "launch-day");

    // The leader is killed: the standby takes over with the window from the store.
    let mut b = spawn_standby_process(&state_dir.0, port_b, None, &config).await;
    signal(&a, Signal::SIGKILL);
    let _ = a.wait().await;
    let status = leads(port_b, 3, "b keeps the window's floor of 3").await;
    assert_eq!(
        status.schedule.expect("b shows it").active[0].name,
        "launch-day"
    );
    let mut operator = operator_client(loopback(port_b));
    let listed = operator
        .list_schedules(v1::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "{listed:?}");
    assert_eq!(listed.entries[0].source, "operator");
    // Put again under the same name: replaced; then deleted: the floor is the config's again.
    let put = operator
        .put_schedule(v1::PutScheduleRequest {
            entry: Some(window("launch-day", 4)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(put.replaced);
    leads(port_b, 4, "b keeps the new floor of 4").await;
    operator
        .delete_schedule(v1::DeleteScheduleRequest {
            name: "launch-day".to_string(),
        })
        .await
        .unwrap();
    let mut client = status_client(loopback(port_b));
    wait_status(
        &mut client,
        "no schedule after the delete",
        4,
        Duration::from_secs(20),
        |s| s.schedule.is_none(),
    )
    .await;
    let pids = state_dir.pids();
    signal(&b, Signal::SIGTERM);
    assert_eq!(exit_code(&mut b, "the last daemon").await, Some(0));
    for pid in pids {
        assert!(!alive(pid), "agent {pid} outlived the last daemon");
    }
}
