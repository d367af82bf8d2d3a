//! Local instances as a test sees them: a state directory read through the controller's own
//! record reader, that kills every recorded agent when dropped.

use std::path::PathBuf;

use autoscaler_controller::local::InstanceRecord;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A local provider's state directory under the system's temp dir, emptied when made; every
/// agent recorded in it is killed, and the directory removed, when dropped, so a failed test
/// leaves no process behind.
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new(name: &str) -> StateDir {
        let dir =
            std::env::temp_dir().join(format!("autoscaler-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }

    /// The recorded pid of `instance_id`.
    pub fn pid_of(&self, instance_id: &str) -> Option<i32> {
        InstanceRecord::read(&self.0, instance_id).map(|record| record.pid as i32)
    }

    /// The recorded pid of `instance_id`'s application, when it runs one.
    pub fn app_pid_of(&self, instance_id: &str) -> Option<i32> {
        InstanceRecord::read(&self.0, instance_id)?
            .app
            .map(|app| app.pid as i32)
    }

    /// Every recorded pid.
    pub fn pids(&self) -> Vec<i32> {
        InstanceRecord::all(&self.0)
            .into_iter()
            .map(|(_, record)| record.pid as i32)
            .collect()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // The reader accepts only pids a signal can safely go to (never 0, 1 or a group).
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
