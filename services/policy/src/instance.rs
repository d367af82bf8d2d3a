//! What the policy knows of one instance's lifecycle and liveness: the provider's state and the
//! monitor's health verdict.

/// Lifecycle of an instance as the provider reports it. Terminated instances are not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Launched, not running yet.
    Pending,
    Running,
    /// Exists but does not run (a stopped EC2 instance, an exited process): to be replaced.
    Stopped,
}

/// Liveness of one instance as the monitor's polls see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    /// Registered, not polled yet.
    Unknown,
    /// The last poll answered.
    Healthy,
    /// Missed at least one poll, fewer than the unhealthy threshold.
    Suspect,
    /// Missed the threshold's number of consecutive polls.
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Suspect => "suspect",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance is in its lifecycle hooks, as its agent reports it (EC2 Auto Scaling's
/// lifecycle states). An instance whose agent runs no hook is `InService`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lifecycle {
    #[default]
    InService,
    /// Pending:Wait: its launch hook runs; it is warming, not in service.
    PendingWait,
    /// Its launch hook failed or timed out with the default result `abandon`: a failed launch,
    /// to terminate.
    Abandoned,
    /// Terminating:Wait: its termination hook runs, after its drain.
    TerminatingWait,
    /// Its termination hook ended: it may be terminated.
    TerminatingProceed,
}

impl Lifecycle {
    /// As EC2 names the state: `Pending:Wait`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::InService => "InService",
            Lifecycle::PendingWait => "Pending:Wait",
            Lifecycle::Abandoned => "Abandoned",
            Lifecycle::TerminatingWait => "Terminating:Wait",
            Lifecycle::TerminatingProceed => "Terminating:Proceed",
        }
    }

    /// Whether a termination hook has started (the instance is leaving).
    pub fn is_terminating(self) -> bool {
        matches!(
            self,
            Lifecycle::TerminatingWait | Lifecycle::TerminatingProceed
        )
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a hook's output is kept (its end), in bytes: by the agent, and by the monitor
/// whatever an agent sends.
pub const HOOK_OUTPUT_BYTES: usize = 1024;

/// The longest a lifecycle hook may run, as EC2 allows (its heartbeat timeout is 30-7200 s).
pub const HOOK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(7_200);

/// The end of `text`, at most `limit` bytes, cut at a character boundary.
pub fn ending(text: &str, limit: usize) -> &str {
    let mut cut = text.len().saturating_sub(limit);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    &text[cut..]
}

/// What an agent reports of its lifecycle hooks: the state, and what its last hook did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookReport {
    pub state: Lifecycle,
    /// `launch hook exited 0 after 1.2 s: continue` (empty before a hook ended).
    pub summary: String,
    /// The last lines the hook wrote.
    pub output_tail: String,
}
