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
