//! The local provider's state dir as files: an instance record per instance (written whole, a
//! temporary file renamed), the instance numbers (`local-` and up to nine digits, never reused:
//! the counter and the logs an instance leaves both count), and the `set-aside/` directory where
//! a file that cannot be read is moved, never deleted.

use super::*;

/// The most of a record or counter file that is read: a real one is a line.
pub(super) const MAX_RECORD_BYTES: u64 = 4096;

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    u64::try_from(autoscaler_policy::time::unix_ms(time)).unwrap_or(0)
}

/// The number of a well-formed instance id, `local-` and one to nine digits.
pub(super) fn instance_number(instance_id: &str) -> Option<u64> {
    let digits = instance_id.strip_prefix("local-")?;
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads at most `MAX_RECORD_BYTES` of a small text file.
pub(super) fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_RECORD_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The file name ending of an instance record: `<state-dir>/<instance-id>.instance`.
pub const RECORD_SUFFIX: &str = ".instance";

/// An instance record, one line `<pid> <launch time, ms since the Unix epoch>`, followed by
/// `<app pid> <app port>` when the instance runs an application, in
/// `<state-dir>/<instance-id>.instance`. The daemon writes it; tests, the demo and the benchmarks
/// read it to find an instance's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The agent's process.
    pub pid: u32,
    pub launched_at: SystemTime,
    pub app: Option<AppRecord>,
}

/// The application's process and port, in an instance record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppRecord {
    pub pid: u32,
    pub port: u16,
}

impl InstanceRecord {
    /// Where the record of `instance_id` is kept.
    pub fn path(state_dir: &Path, instance_id: &str) -> PathBuf {
        state_dir.join(format!("{instance_id}{RECORD_SUFFIX}"))
    }

    /// The record of `instance_id`, if it is there and well formed.
    pub fn read(state_dir: &Path, instance_id: &str) -> Option<InstanceRecord> {
        Self::read_path(&Self::path(state_dir, instance_id))
    }

    pub(super) fn read_path(path: &Path) -> Option<InstanceRecord> {
        Self::parse(&read_small(path).ok()?)
    }

    /// Every well-formed record of `state_dir`, by instance id (none when it cannot be read).
    pub fn all(state_dir: &Path) -> Vec<(String, InstanceRecord)> {
        let Ok(entries) = std::fs::read_dir(state_dir) else {
            return Vec::new();
        };
        let mut records: Vec<_> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let instance_id = path.file_name()?.to_str()?.strip_suffix(RECORD_SUFFIX)?;
                Some((instance_id.to_string(), Self::read_path(&path)?))
            })
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records
    }

    fn parse(text: &str) -> Option<InstanceRecord> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (pid, launched_ms, app) = match fields.as_slice() {
            [pid, launched] => (pid, launched, None),
            [pid, launched, app_pid, app_port] => (pid, launched, Some((app_pid, app_port))),
            _ => return None,
        };
        let pid: u32 = pid.parse().ok()?;
        let launched_ms: u64 = launched_ms.parse().ok()?;
        if !valid_pid(pid) {
            return None;
        }
        let app = match app {
            Some((app_pid, app_port)) => {
                let app = AppRecord {
                    pid: app_pid.parse().ok()?,
                    port: app_port.parse().ok()?,
                };
                if !valid_pid(app.pid) || app.port == 0 {
                    return None;
                }
                Some(app)
            }
            None => None,
        };
        Some(InstanceRecord {
            pid,
            launched_at: UNIX_EPOCH.checked_add(Duration::from_millis(launched_ms))?,
            app,
        })
    }

    /// Writes the line `parse` reads.
    pub(super) fn write(&self, path: &Path) -> std::io::Result<()> {
        let app = self
            .app
            .map(|app| format!(" {} {}", app.pid, app.port))
            .unwrap_or_default();
        write_whole(
            path,
            &format!("{} {}{app}\n", self.pid, unix_ms(self.launched_at)),
        )
    }
}

/// The launch specification version of `instance_id`, kept beside its record in
/// `<state-dir>/<instance-id>.version` (one line, `v3-1a2b3c4d`).
pub(super) fn version_path(state_dir: &Path, instance_id: &str) -> PathBuf {
    state_dir.join(format!("{instance_id}.version"))
}

/// The version kept for `instance_id`, when it is there and reads as one.
pub(super) fn read_version(state_dir: &Path, instance_id: &str) -> Option<String> {
    let text = read_small(&version_path(state_dir, instance_id)).ok()?;
    let version = text.trim();
    let plausible = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plausible.then(|| version.to_string())
}

/// Writes `text` to `path` whole: into a temporary file beside it, synced, then renamed over it.
/// A kill at any point leaves the old content or the new, never an empty or half-written file.
pub(super) fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// The instance number of a log file's name (`local-0007.log`, `local-0007.app.log`): an
/// instance leaves its logs behind when its record goes, so they tell which ids were used.
pub(super) fn logged_number(file_name: &str) -> Option<u64> {
    let id = file_name
        .strip_suffix(".app.log")
        .or_else(|| file_name.strip_suffix(".log"))?;
    instance_number(id)
}

/// Moves `path` into the state dir's `set-aside/` directory, and says so.
pub(super) fn set_aside(state_dir: &Path, path: &Path, why: &str) {
    let dir = state_dir.join(SET_ASIDE_DIR);
    let name = path
        .file_name()
        .map_or("unnamed".into(), |n| n.to_string_lossy().into_owned());
    let stamp = unix_ms(SystemTime::now());
    let mut target = dir.join(format!("{name}.{stamp}"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{stamp}.{n}"));
        n += 1;
    }
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(path, &target)) {
        Ok(()) => tracing::warn!(
            file = %path.display(),
            moved_to = %target.display(),
            "{why}: set aside"
        ),
        Err(error) => tracing::warn!(
            file = %path.display(),
            %error,
            "{why}; it could not be set aside and is ignored"
        ),
    }
}
