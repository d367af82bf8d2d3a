//! The local provider against whatever its state dir may hold: no content makes it panic, an
//! unreadable file is set aside (never deleted), and instance numbers never overflow.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use autoscaler_controller::cloud::Cloud;
use autoscaler_controller::local::{AgentEnv, LocalCloud, LocalConfig, SET_ASIDE_DIR};
use proptest::prelude::*;

fn fresh_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "autoscaler-local-state-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A provider whose "agent" is `true`: it accepts any flags and exits at once.
fn config(state_dir: &Path) -> LocalConfig {
    LocalConfig {
        state_dir: state_dir.to_path_buf(),
        agent_binary: PathBuf::from("true"),
        monitor_address: "127.0.0.1:9".into(),
        monitor_file: None,
        agent_env: AgentEnv::default(),
        tls_dir: None,
        agent_args: Vec::new(),
        terminate_grace: Duration::from_millis(200),
        app: None,
    }
}

/// Every file under `dir` (set-aside included), as (name, content).
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for sub in [dir.to_path_buf(), dir.join(SET_ASIDE_DIR)] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                found.push((entry.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    found
}

/// A well-formed record of an instance with a well-formed id: the provider may remove it when
/// its process is gone (the instance ended while no daemon ran).
fn removable(name: &str, content: &[u8]) -> bool {
    let text = std::str::from_utf8(content).unwrap_or("");
    if name == "next-id" {
        // A counter in range is read and then rewritten by the launch.
        return text.trim().parse::<u64>().is_ok_and(|n| n <= 999_999_999);
    }
    let id_ok = name
        .strip_suffix(".instance")
        .and_then(|id| id.strip_prefix("local-"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
    let fields: Vec<&str> = text.split_whitespace().collect();
    id_ok && fields.len() == 2 && fields.iter().all(|f| f.parse::<u64>().is_ok())
}

fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| format!("local-{n}.instance")),
        (0u64..20).prop_map(|n| format!("local-{n:04}.instance")),
        "[a-z0-9.-]{0,12}".prop_map(|s| format!("{s}.instance")),
        Just("local-.instance".to_string()),
        Just("next-id".to_string()),
    ]
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("{a} {b}\n").into_bytes()),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        Just(b"18446744073709551615".to_vec()),
        Just(b"999999999".to_vec()),
        Just(b"4242".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Invariant: whatever the state dir holds, opening it and launching never panics, the
    /// ids launched are well-formed and new, and every file but a well-formed record of an
    /// ended instance is still there, in place or under set-aside/.
    #[test]
    fn no_state_dir_content_panics_or_is_lost(
        files in proptest::collection::vec((file_name(), content()), 0..6),
    ) {
        let dir = fresh_dir("prop");
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let before = contents(&dir);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let cloud = LocalCloud::open(config(&dir)).expect("an existing dir opens");
            let listed = cloud.list().await.expect("listing never fails");
            match cloud.launch(&["t".to_string()]).await {
                Ok(ids) => {
                    prop_assert_eq!(ids.len(), 1);
                    let id = &ids[0];
                    let number: u64 = id.strip_prefix("local-").unwrap().parse().unwrap();
                    prop_assert!(number <= 999_999_999, "{}", id);
                    prop_assert!(!listed.iter().any(|i| &i.instance_id == id), "{} reused", id);
                    cloud.terminate(&ids).await.expect("its own instance terminates");
                }
                Err(error) => {
                    prop_assert!(error.message.contains("instance number"), "{}", error);
                }
            }
            Ok(())
        })?;
        let after = contents(&dir);
        for (name, bytes) in &before {
            if removable(name, bytes) {
                continue;
            }
            let kept = after.iter().any(|(other, content)| {
                content == bytes && (other == name || other.starts_with(&format!("{name}.")))
            });
            prop_assert!(kept, "{} ({:?}) was lost; now: {:?}", name, String::from_utf8_lossy(bytes), after);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn the_issue_s_three_state_dirs_open_and_launch() {
    // The highest counter the provider accepts: one more id, then a clear refusal.
    let dir = fresh_dir("last");
    std::fs::write(dir.join("next-id"), "999999999").unwrap();
    let cloud = LocalCloud::open(config(&dir)).unwrap();
    let ids = cloud.launch(&["t".to_string()]).await.unwrap();
    assert_eq!(ids, ["local-999999999"]);
    let refused = cloud.launch(&["t".to_string()]).await.unwrap_err();
    assert!(
        refused.message.contains("no local instance number is left"),
        "{refused}"
    );
    cloud.terminate(&ids).await.unwrap();

    // A counter past the range and a record named past it: both set aside, ids start over.
    let dir = fresh_dir("overflow");
    std::fs::write(dir.join("next-id"), "18446744073709551615").unwrap();
    std::fs::write(dir.join("local-18446744073709551615.instance"), "1 2").unwrap();
    // A truncated record: only the pid.
    std::fs::write(dir.join("local-0001.instance"), "4242").unwrap();
    let cloud = LocalCloud::open(config(&dir)).unwrap();
    let ids = cloud.launch(&["t".to_string()]).await.unwrap();
    assert_eq!(ids, ["local-0002"], "after the truncated local-0001");
    cloud.terminate(&ids).await.unwrap();
    let mut aside: Vec<String> = std::fs::read_dir(dir.join(SET_ASIDE_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    aside.sort();
    assert_eq!(aside.len(), 3, "{aside:?}");
    assert!(aside[0].starts_with("local-0001.instance."), "{aside:?}");
    assert!(
        aside[1].starts_with("local-18446744073709551615.instance."),
        "{aside:?}"
    );
    assert!(aside[2].starts_with("next-id."), "{aside:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_agent_that_exits_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("exit");
    // An "agent" that fails as one does without its key: a line on stderr, exit status 64.
    let script = dir.join("failing-agent");
    std::fs::write(
        &script,
        "#!/bin/sh\necho starting\nprintf '\\033[31mERROR\\033[0m cannot read agent.pem\\n' >&2\necho >&2\nexit 64\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = config(&dir);
    config.agent_binary = script;
    let cloud = LocalCloud::open(config).unwrap();
    let ids = cloud.launch(&["t".to_string()]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let listed = cloud.list().await.unwrap();
        if let Some(reason) = listed[0].state_reason.clone() {
            break reason;
        }
        assert!(std::time::Instant::now() < deadline, "sh never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        reason, "exit status: 64; last log line: ERROR cannot read agent.pem",
        "the status, and the last line with text, without its colour codes"
    );
    cloud.terminate(&ids).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_agent_killed_by_a_signal_is_reported_without_its_log() {
    let dir = fresh_dir("killed");
    let mut config = config(&dir);
    // A script that logs a line and waits (the flags it is given do not matter to it).
    let script = dir.join("quiet-agent");
    std::fs::write(&script, "#!/bin/sh\necho all is well\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    config.agent_binary = script;
    let cloud = LocalCloud::open(config).unwrap();
    let ids = cloud.launch(&["t".to_string()]).await.unwrap();
    let pid = std::fs::read_to_string(dir.join(format!("{}.instance", ids[0])))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(reason) = cloud.list().await.unwrap()[0].state_reason.clone() {
            break reason;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kill was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reason, "signal: 9 (SIGKILL)");
    cloud.terminate(&ids).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Outside test, finding 4: an id once launched is never launched again, whatever is lost. The
/// fleet was {local-0001, local-0003} with the counter at 4; the daemon was killed, 0003's
/// record removed and the counter emptied (a kill between the truncation and the write of an
/// in-place write did exactly that). Before, the next launch was `local-0002` again.
#[tokio::test]
async fn an_id_once_launched_is_never_launched_again_whatever_is_lost() {
    let dir = fresh_dir("reuse");
    let cloud = LocalCloud::open(config(&dir)).unwrap();
    let ids = cloud
        .launch(&["a".to_string(), "b".to_string(), "c".to_string()])
        .await
        .unwrap();
    assert_eq!(ids, ["local-0001", "local-0002", "local-0003"]);
    cloud.terminate(&["local-0002".to_string()]).await.unwrap();
    // The counter is written whole: no temporary file is left, and it holds the next number.
    assert_eq!(std::fs::read_to_string(dir.join("next-id")).unwrap(), "4");
    assert!(!dir.join("next-id.new").exists());
    drop(cloud);
    let _ = std::fs::remove_file(dir.join("local-0003.instance"));
    std::fs::write(dir.join("next-id"), "").unwrap();

    let cloud = LocalCloud::open(config(&dir)).unwrap();
    let again = cloud.launch(&["d".to_string()]).await.unwrap();
    assert_eq!(again, ["local-0004"], "ids 0001-0003 were used");
    cloud.terminate(&again).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
