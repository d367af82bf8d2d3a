//! The local provider's processes, as Linux shows them: which live processes are the group's
//! (their environment names the state dir; `/proc` gives their command line and start time),
//! and how one is stopped (SIGTERM, then SIGKILL at a deadline; a child through tokio's reaper,
//! an adopted process by its pid, only while that pid still runs the instance).

use super::*;

/// A pid a signal can safely go to: never 0, 1 or a negative number (a process group, or all).
pub(super) fn valid_pid(pid: u32) -> bool {
    pid >= 2 && i32::try_from(pid).is_ok()
}

/// The value of `--instance-id` in a NUL-separated command line.
pub(super) fn instance_id_of(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|pair| pair[0] == b"--instance-id")
        .and_then(|pair| std::str::from_utf8(pair[1]).ok())
        .map(str::to_string)
}

pub(crate) fn zombie_or_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// True if `pid` runs the agent (or the app) of `instance_id` (guards against a reused pid) and
/// is no zombie.
pub(super) fn runs_agent(pid: u32, instance_id: &str) -> bool {
    valid_pid(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|cmdline| instance_id_of(&cmdline))
            .is_some_and(|id| id == instance_id)
        && !zombie_or_gone(pid)
}

/// The live processes whose environment names `marker` as their state dir in `variable`
/// (`STATE_DIR_ENV` for agents, `APP_STATE_DIR_ENV` for apps), with the instance id of their
/// command line (`None` when it has none).
pub(super) fn processes_of(variable: &str, marker: &Path) -> Vec<(u32, Option<String>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut wanted = variable.as_bytes().to_vec();
    wanted.push(b'=');
    wanted.extend_from_slice(marker.as_os_str().as_bytes());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !valid_pid(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_slice())
            || zombie_or_gone(pid)
        {
            continue;
        }
        let id = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|cmdline| instance_id_of(&cmdline));
        found.push((pid, id));
    }
    found
}

/// When a process started, from `/proc` (its start time in clock ticks since boot; Linux
/// reports them at 100 per second to user space).
pub(super) fn process_started(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // Fields after the command: state is field 3, starttime field 22.
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(
        boot.checked_mul(1000)?
            .checked_add(ticks.checked_mul(10)?)?,
    ))
}

/// SIGTERM, then SIGKILL after `grace`: for a process that is not our child.
pub(super) fn stop_stray(pid: u32, grace: Duration) {
    if !valid_pid(pid) {
        return;
    }
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while !zombie_or_gone(pid) {
        if Instant::now() >= deadline {
            let _ = kill(target, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops process `pid` of `instance_id`: our `child`, or (adopted) by its pid, but only while
/// that pid still runs a process of the instance (a pid may have been reused).
pub(super) async fn stop_process(
    pid: u32,
    child: &mut Option<tokio::process::Child>,
    instance_id: &str,
    deadline: tokio::time::Instant,
) -> std::io::Result<Stopped> {
    match child.take() {
        Some(mut child) => stop_child(&mut child, deadline).await,
        None if runs_agent(pid, instance_id) => stop_pid(pid, deadline).await,
        None => Ok(Stopped::Gone),
    }
}

/// How a process asked to stop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within its grace (its status, when it was our child).
    Exited(Option<ExitStatus>),
    /// It was still running at the deadline and was sent SIGKILL.
    Killed,
    /// It had ended before it was asked.
    Gone,
}

/// SIGTERM, then SIGKILL at `deadline`, waiting on tokio's reaper (no thread is blocked): how
/// the local provider and the rehearsal's runner stop a child process.
pub async fn stop_child(
    child: &mut tokio::process::Child,
    deadline: tokio::time::Instant,
) -> std::io::Result<Stopped> {
    let Some(pid) = child.id() else {
        return Ok(Stopped::Gone);
    };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => Ok(Stopped::Exited(Some(status?))),
        Err(_) => {
            child.kill().await?;
            Ok(Stopped::Killed)
        }
    }
}

/// [`stop_child`] for a process that is not our child (an adopted agent): its end is seen in
/// /proc, polled.
pub(crate) async fn stop_pid(pid: u32, deadline: tokio::time::Instant) -> std::io::Result<Stopped> {
    if !valid_pid(pid) || zombie_or_gone(pid) {
        return Ok(Stopped::Gone);
    }
    let target = Pid::from_raw(pid as i32);
    kill(target, Signal::SIGTERM).map_err(std::io::Error::from)?;
    while !zombie_or_gone(pid) {
        if tokio::time::Instant::now() >= deadline {
            kill(target, Signal::SIGKILL).map_err(std::io::Error::from)?;
            return Ok(Stopped::Killed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Stopped::Exited(None))
}

/// The last line of an agent's log with text in it, without terminal colour codes, shortened.
pub(super) fn last_log_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(MAX_RECORD_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut clean = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            clean.push(c);
        }
    }
    let clean = clean.trim();
    Some(match clean.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &clean[..cut]),
        None => clean.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Stopped, stop_child, stop_pid};

    fn shell(script: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", script]).kill_on_drop(true);
        command
    }

    /// Until the shell has installed its trap: it says so on stdout.
    async fn started(child: &mut tokio::process::Child) {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        let stdout = child.stdout.as_mut().unwrap();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut byte))
            .await
            .expect("the shell starts within 10 s")
            .unwrap();
    }

    #[tokio::test]
    async fn a_child_that_obeys_sigterm_exits_and_one_that_ignores_it_is_killed_at_the_deadline() {
        let mut obeys = shell("echo; sleep 30")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        started(&mut obeys).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let Stopped::Exited(Some(status)) = stop_child(&mut obeys, deadline).await.unwrap() else {
            panic!("sh exits on SIGTERM");
        };
        assert!(!status.success());
        assert!(
            tokio::time::Instant::now() < deadline,
            "it did not wait for the deadline"
        );

        let mut ignores = shell("trap '' TERM; echo; while :; do sleep 0.1; done")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        started(&mut ignores).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        assert_eq!(
            stop_child(&mut ignores, deadline).await.unwrap(),
            Stopped::Killed
        );
        assert!(tokio::time::Instant::now() >= deadline);
        assert_eq!(
            stop_child(&mut ignores, deadline).await.unwrap(),
            Stopped::Gone,
            "a reaped child is gone"
        );
    }

    #[tokio::test]
    async fn a_process_that_is_not_our_child_is_stopped_by_its_pid() {
        let mut other = shell("trap '' TERM; echo; while :; do sleep 0.1; done")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        started(&mut other).await;
        let pid = other.id().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        assert_eq!(stop_pid(pid, deadline).await.unwrap(), Stopped::Killed);
        other.wait().await.unwrap();
        assert_eq!(stop_pid(0, deadline).await.unwrap(), Stopped::Gone);
    }
}
