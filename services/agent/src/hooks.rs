//! Lifecycle hooks: the commands the agent runs when its instance is launched (before it is put
//! in service: warm caches, fetch data) and when it is terminated (after its drain, before the
//! termination: flush logs, hand off work), as EC2 Auto Scaling's lifecycle hooks hold an
//! instance in Pending:Wait and Terminating:Wait.
//!
//! A hook is a shell command (`sh -c`). It says continue by exiting 0 and abandon by exiting
//! with any other status; one that outlives its timeout is killed and the default result
//! stands. The last lines it wrote (stdout and stderr together) are kept for the record.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use autoscaler_policy::instance::ending;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How a hook ends: the instance goes on, or its launch is abandoned (a termination goes on
/// either way, as on EC2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HookResult {
    Continue,
    /// EC2's default result.
    #[default]
    Abandon,
}

impl HookResult {
    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "continue",
            HookResult::Abandon => "abandon",
        }
    }
}

impl std::str::FromStr for HookResult {
    type Err = String;

    fn from_str(text: &str) -> Result<HookResult, String> {
        match text {
            "continue" => Ok(HookResult::Continue),
            "abandon" => Ok(HookResult::Abandon),
            other => Err(format!(
                "{other:?} is not a hook result: continue or abandon"
            )),
        }
    }
}

pub use autoscaler_policy::instance::HOOK_TIMEOUT_MAX as MAX_TIMEOUT;

/// The hooks an agent runs.
#[derive(Clone, Debug)]
pub struct HookConfig {
    /// Run at the start, before the instance is put in service.
    pub launch: Option<String>,
    /// Run when the controller says the instance is about to be terminated (after its drain).
    pub termination: Option<String>,
    /// How long a hook may run before it is killed and `default_result` stands. 300 s by
    /// default rather than EC2's 3,600: a held hook holds capacity (a launch that does not come
    /// into service, a termination that does not end), and EC2's hour is meant for a person to
    /// answer; a hook here is a command that either finishes in minutes or is stuck.
    pub timeout: Duration,
    pub default_result: HookResult,
}

impl Default for HookConfig {
    fn default() -> HookConfig {
        HookConfig {
            launch: None,
            termination: None,
            timeout: Duration::from_secs(300),
            default_result: HookResult::Abandon,
        }
    }
}

impl HookConfig {
    /// A clear error naming the flag, for a setting the agent cannot use.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, command) in [
            ("--launch-hook", &self.launch),
            ("--termination-hook", &self.termination),
        ] {
            if command.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return Err(format!("{flag} is empty: give a shell command"));
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "--hook-timeout {} s is outside 1-{} s",
                self.timeout.as_secs_f64(),
                MAX_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }
}

/// Which transition a hook runs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Launch,
    Termination,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Launch => "launch",
            Transition::Termination => "termination",
        }
    }
}

/// What a hook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    pub result: HookResult,
    /// `launch hook exited 0 after 1.2 s: continue`.
    pub summary: String,
    /// Its last lines, at most `TAIL_BYTES`.
    pub output_tail: String,
}

/// How much of a hook's output is kept: its last lines, up to this many bytes.
pub use autoscaler_policy::instance::HOOK_OUTPUT_BYTES as TAIL_BYTES;
const TAIL_LINES: usize = 20;

/// Runs `command` for `transition` of `instance_id` until it exits or `timeout` passes.
pub async fn run(
    command: &str,
    transition: Transition,
    instance_id: &str,
    timeout: Duration,
    default_result: HookResult,
) -> HookOutcome {
    let started = Instant::now();
    let name = transition.as_str();
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("AUTOSCALER_INSTANCE_ID", instance_id)
        .env("AUTOSCALER_LIFECYCLE_TRANSITION", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: what it starts is killed with it at its timeout.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            return HookOutcome {
                result: HookResult::Abandon,
                summary: format!("{name} hook could not start ({error}): abandon"),
                output_tail: String::new(),
            };
        }
    };
    // Killed, with everything it started, if it is still running when this ends (its
    // timeout, or the agent stopping while it runs).
    let mut group = Group(child.id());
    let (lines, mut collected) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(out, lines.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(err, lines.clone())));
    }
    drop(lines);
    let mut tail = VecDeque::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let exit = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            Some(line) = collected.recv() => keep(&mut tail, line),
            () = tokio::time::sleep_until(deadline) => break None,
        }
    };
    if exit.is_some() {
        group.0 = None;
    }
    let took = started.elapsed().as_secs_f64();
    let (result, how) = match exit {
        Some(Ok(status)) if status.success() => (HookResult::Continue, "exited 0".to_string()),
        Some(Ok(status)) => (HookResult::Abandon, format!("ended with {status}")),
        Some(Err(error)) => (
            HookResult::Abandon,
            format!("could not be waited on ({error})"),
        ),
        None => {
            drop(group);
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            (
                default_result,
                format!(
                    "did not finish within {:.0} s (killed)",
                    timeout.as_secs_f64()
                ),
            )
        }
    };
    // What is left in the pipes, briefly: a process the hook left behind may hold them open.
    let rest = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(line)) = tokio::time::timeout_at(rest, collected.recv()).await {
        keep(&mut tail, line);
    }
    for reader in readers {
        reader.abort();
    }
    let lines: Vec<String> = tail.into_iter().collect();
    let output_tail = ending(&lines.join("\n"), TAIL_BYTES).to_string();
    HookOutcome {
        result,
        summary: format!("{name} hook {how} after {took:.1} s: {}", result.as_str()),
        output_tail,
    }
}

/// A hook's process group, killed when dropped unless the hook has exited.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(id) = self.0.take().and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(id),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn keep(tail: &mut VecDeque<String>, line: String) {
    tail.push_back(line);
    while tail.len() > TAIL_LINES {
        tail.pop_front();
    }
}

async fn read_lines(
    stream: impl AsyncRead + Unpin,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
) {
    // Bytes, not text: a hook may write anything, and a stream left unread would block it.
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        // A line longer than the tail is cut to its end.
        if lines.send(ending(text, TAIL_BYTES).to_string()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hook(command: &str, timeout_ms: u64, default: HookResult) -> HookOutcome {
        run(
            command,
            Transition::Launch,
            "local-0001",
            Duration::from_millis(timeout_ms),
            default,
        )
        .await
    }

    #[tokio::test]
    async fn exit_0_continues_and_its_output_tail_is_kept() {
        let outcome = hook(
            "echo warming for $AUTOSCALER_INSTANCE_ID; echo to stderr >&2; for i in $(seq 1 30); do echo line $i; done",
            10_000,
            HookResult::Abandon,
        )
        .await;
        assert_eq!(outcome.result, HookResult::Continue, "{outcome:?}");
        assert!(outcome.summary.starts_with("launch hook exited 0 after"));
        assert!(
            outcome.summary.ends_with(": continue"),
            "{}",
            outcome.summary
        );
        assert!(
            outcome.output_tail.ends_with("line 30"),
            "{}",
            outcome.output_tail
        );
        assert_eq!(outcome.output_tail.lines().count(), TAIL_LINES);
    }

    #[tokio::test]
    async fn a_failing_hook_abandons_whatever_the_default() {
        let outcome = hook("echo no data; exit 3", 10_000, HookResult::Continue).await;
        assert_eq!(outcome.result, HookResult::Abandon);
        assert!(
            outcome.summary.contains("exit status: 3"),
            "{}",
            outcome.summary
        );
        assert_eq!(outcome.output_tail, "no data");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_and_the_default_result_stands() {
        for default in [HookResult::Continue, HookResult::Abandon] {
            let started = Instant::now();
            let outcome = hook("echo started; sleep 30", 300, default).await;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "killed at its timeout"
            );
            assert_eq!(outcome.result, default);
            assert!(
                outcome.summary.contains("did not finish within"),
                "{}",
                outcome.summary
            );
            assert_eq!(outcome.output_tail, "started");
        }
    }

    #[tokio::test]
    async fn what_a_hook_started_is_killed_with_it_at_its_timeout() {
        let dir = std::env::temp_dir().join(format!("hook-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let command = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let outcome = hook(&command, 500, HookResult::Abandon).await;
        assert!(
            outcome.summary.contains("did not finish"),
            "{}",
            outcome.summary
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie of the killed shell's (reaped by init).
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(Instant::now() < gone, "the hook's sleep {pid} outlived it");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn binary_output_is_read_to_its_end_and_kept_as_text() {
        // 200 KiB that is not UTF-8, more than a pipe holds: the hook must not block on it.
        let outcome = hook(
            "head -c 204800 /dev/zero | tr '\\0' '\\377'; echo; echo done",
            10_000,
            HookResult::Abandon,
        )
        .await;
        assert_eq!(outcome.result, HookResult::Continue, "{outcome:?}");
        assert!(
            outcome.output_tail.ends_with("\ndone"),
            "{:?}",
            outcome.output_tail
        );
    }

    #[tokio::test]
    async fn a_long_output_keeps_only_its_last_kibibyte() {
        let outcome = hook(
            "head -c 5000 /dev/zero | tr '\\0' x; echo; echo end",
            10_000,
            HookResult::Abandon,
        )
        .await;
        assert!(outcome.output_tail.len() <= TAIL_BYTES);
        assert!(outcome.output_tail.ends_with("\nend"));
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let empty = HookConfig {
            launch: Some("  ".into()),
            ..HookConfig::default()
        };
        assert!(empty.validate().unwrap_err().contains("--launch-hook"));
        let long = HookConfig {
            timeout: Duration::from_secs(7_201),
            ..HookConfig::default()
        };
        assert!(long.validate().unwrap_err().contains("--hook-timeout"));
        assert!("later".parse::<HookResult>().is_err());
        assert_eq!("continue".parse(), Ok(HookResult::Continue));
    }
}
