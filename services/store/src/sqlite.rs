//! The store on one machine: a SQLite database (rusqlite, with SQLite compiled in) in the state
//! dir, shared by every daemon of the group on that machine. The lease row is read and written
//! inside one write transaction (`BEGIN IMMEDIATE`), so two daemons never both take it; lease
//! expiry is judged by the wall clock, which the daemons of one machine share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use autoscaler_policy::time::now_ms;

use crate::{Activity, DemandSample, Lease, Pending, Store, StoreError};

/// How long one call may take, waiting for another daemon's transaction included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for a lock another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        address TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS memory (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS activity (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        body BLOB NOT NULL,
        sequence INTEGER
    );
    CREATE INDEX IF NOT EXISTS activity_at ON activity (at_ms);
    CREATE TABLE IF NOT EXISTS demand (
        at_ms INTEGER PRIMARY KEY,
        capacities REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS document (
        name TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        body BLOB NOT NULL
    );
";

/// After `SCHEMA`: a store made before records had a sequence gains the column (its old rows
/// have none, and are never replaced), then the key that makes a record written again replace
/// the first.
const RECORD_KEY: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS activity_key ON activity (epoch, sequence);";

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// What SQLite said, as this crate's error: a file that is not a database (or a damaged one) is
/// `Corrupt`, anything else (locked, I/O) `Unavailable`.
fn sqlite(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Unavailable(error.to_string()),
    }
}

/// Whether SQLite said another connection holds the file (worth waiting for).
fn busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// What SQLite said when opening `path`, with the reason the system gives where SQLite gives
/// none ("unable to open database file" names neither the cause nor which file): the file
/// cannot be opened for writing, or the directory (where SQLite makes its `-wal` and `-shm`
/// files beside the store) cannot be written.
fn explained(path: &Path, error: rusqlite::Error) -> StoreError {
    let store_error = sqlite(error);
    let StoreError::Unavailable(said) = &store_error else {
        return store_error;
    };
    let reason = match path.exists() {
        true => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .err()
            .map(|error| format!("{} cannot be written: {error}", path.display()))
            .or_else(|| unwritable_dir(path)),
        false => unwritable_dir(path),
    };
    match reason {
        Some(reason) => StoreError::Unavailable(format!("{said}: {reason}")),
        None => store_error,
    }
}

/// Why no file can be made beside `path` (where SQLite keeps the store's `-wal` and `-shm`),
/// if none can: a probe file is made and removed.
fn unwritable_dir(path: &Path) -> Option<String> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".store-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Err(error) => Some(format!(
            "cannot make files in {} (the store keeps its -wal and -shm files beside it): {error}",
            dir.display()
        )),
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
    }
}

/// The group's store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (or makes) the store at `path`. A file that is not such a store is refused, and
    /// left as it is. A store another daemon holds busy (two started at the same instant, both
    /// making the schema) is waited for, up to the store's call timeout.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        loop {
            match SqliteStore::open_once(path) {
                Err(error) if busy(&error) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(error) => return Err(explained(path, error)),
                Ok(store) => return Ok(store),
            }
        }
    }

    fn open_once(path: &Path) -> Result<SqliteStore, rusqlite::Error> {
        let mut connection = Connection::open(path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // Readers do not wait for the writer, and a crash loses no committed write. Changing
        // the journal mode takes the file whole: SQLite answers "busy" at once, without its
        // busy handler, while another connection makes the schema; `open` tries again.
        let _: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        // The schema in one write transaction, taken at its start (a deferred one that must
        // turn into a writer is refused at once when another writer went first).
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute_batch(SCHEMA)?;
        let has_sequence = transaction
            .prepare("SELECT 1 FROM pragma_table_info('activity') WHERE name = 'sequence'")
            .and_then(|mut statement| statement.exists([]))?;
        if !has_sequence {
            transaction.execute_batch("ALTER TABLE activity ADD COLUMN sequence INTEGER;")?;
        }
        transaction.execute_batch(RECORD_KEY)?;
        transaction.commit()?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the rows of `table` (one of this file's, with an `at_ms`) before `before_ms`.
    fn delete_before(&self, table: &'static str, before_ms: i64) -> Pending<'_, u64> {
        self.call(move |connection| {
            let deleted = connection
                .execute(
                    &format!("DELETE FROM {table} WHERE at_ms < ?1"),
                    params![before_ms],
                )
                .map_err(sqlite)?;
            Ok(deleted as u64)
        })
    }

    /// Runs `work` on the connection off the async runtime, within `CALL_TIMEOUT`.
    fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Pending<'_, T> {
        let connection = self.connection.clone();
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || {
                let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut connection)
            });
            match tokio::time::timeout(CALL_TIMEOUT, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(join)) => Err(unavailable(format!("the store's task failed: {join}"))),
                Err(_) => Err(unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
            }
        })
    }
}

fn read_lease(connection: &Connection) -> Result<Option<Lease>, StoreError> {
    connection
        .query_row(
            "SELECT holder, epoch, address, expires_at_ms FROM lease WHERE id = 1",
            [],
            |row| {
                Ok(Lease {
                    holder: row.get(0)?,
                    epoch: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    address: row.get(2)?,
                    expires_at_ms: row.get(3)?,
                })
            },
        )
        .optional()
        .map_err(sqlite)
}

/// Fails unless `epoch` is the lease's.
fn check_epoch(connection: &Connection, epoch: u64) -> Result<(), StoreError> {
    let current = read_lease(connection)?.map_or(0, |lease| lease.epoch);
    if current == epoch {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            writer: epoch,
            current,
        })
    }
}

fn epoch_value(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn acquire<'a>(
        &'a self,
        holder: &'a str,
        address: &'a str,
        duration: Duration,
    ) -> Pending<'a, Option<Lease>> {
        let (holder, address) = (holder.to_string(), address.to_string());
        self.call(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            let now = now_ms();
            let expires_at_ms = now.saturating_add(duration.as_millis() as i64);
            let lease = match read_lease(&transaction)? {
                // Ours and still running: renewed, same epoch.
                Some(lease) if lease.holder == holder && lease.expires_at_ms >= now => Lease {
                    address,
                    expires_at_ms,
                    ..lease
                },
                // Another's and still running.
                Some(lease) if lease.expires_at_ms >= now => return Ok(None),
                // Run out (or given up): taken, by a new term.
                Some(lease) => Lease {
                    holder,
                    epoch: lease.epoch.saturating_add(1),
                    address,
                    expires_at_ms,
                },
                None => Lease {
                    holder,
                    epoch: 1,
                    address,
                    expires_at_ms,
                },
            };
            transaction
                .execute(
                    "INSERT INTO lease (id, holder, epoch, address, expires_at_ms) VALUES (1, ?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET holder = ?1, epoch = ?2, address = ?3, expires_at_ms = ?4",
                    params![lease.holder, epoch_value(lease.epoch), lease.address, lease.expires_at_ms],
                )
                .map_err(sqlite)?;
            transaction.commit().map_err(sqlite)?;
            Ok(Some(lease))
        })
    }

    fn release<'a>(&'a self, holder: &'a str, epoch: u64) -> Pending<'a, ()> {
        let holder = holder.to_string();
        self.call(move |connection| {
            connection
                .execute(
                    "UPDATE lease SET expires_at_ms = 0 WHERE id = 1 AND holder = ?1 AND epoch = ?2",
                    params![holder, epoch_value(epoch)],
                )
                .map_err(sqlite)?;
            Ok(())
        })
    }

    fn lease(&self) -> Pending<'_, Option<Lease>> {
        self.call(|connection| read_lease(connection))
    }

    fn save_memory<'a>(&'a self, epoch: u64, memory: &'a [u8]) -> Pending<'a, ()> {
        let memory = memory.to_vec();
        self.call(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            check_epoch(&transaction, epoch)?;
            transaction
                .execute(
                    "INSERT INTO memory (id, epoch, body) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET epoch = ?1, body = ?2",
                    params![epoch_value(epoch), memory],
                )
                .map_err(sqlite)?;
            transaction.commit().map_err(sqlite)
        })
    }

    fn memory(&self) -> Pending<'_, Option<Vec<u8>>> {
        self.call(|connection| {
            connection
                .query_row("SELECT body FROM memory WHERE id = 1", [], |row| row.get(0))
                .optional()
                .map_err(sqlite)
        })
    }

    fn append<'a>(&'a self, epoch: u64, records: &'a [Activity]) -> Pending<'a, ()> {
        let records = records.to_vec();
        self.call(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            check_epoch(&transaction, epoch)?;
            for record in &records {
                transaction
                    .execute(
                        "INSERT INTO activity (at_ms, epoch, sequence, body) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (epoch, sequence) DO UPDATE
                         SET at_ms = excluded.at_ms, body = excluded.body",
                        params![
                            record.at_ms,
                            epoch_value(record.epoch),
                            epoch_value(record.sequence),
                            record.body
                        ],
                    )
                    .map_err(sqlite)?;
            }
            transaction.commit().map_err(sqlite)
        })
    }

    fn activity(&self, since_ms: i64, limit: usize) -> Pending<'_, Vec<Activity>> {
        self.call(move |connection| {
            let mut statement = connection
                .prepare(
                    "SELECT at_ms, epoch, body, sequence FROM activity WHERE at_ms >= ?1
                     ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(sqlite)?;
            let rows = statement
                .query_map(params![since_ms, limit as i64], |row| {
                    Ok(Activity {
                        at_ms: row.get(0)?,
                        epoch: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        body: row.get(2)?,
                        sequence: row
                            .get::<_, Option<i64>>(3)?
                            .and_then(|s| u64::try_from(s).ok())
                            .unwrap_or(0),
                    })
                })
                .map_err(sqlite)?;
            let mut found = rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)?;
            found.reverse();
            Ok(found)
        })
    }

    fn prune(&self, before_ms: i64) -> Pending<'_, u64> {
        self.delete_before("activity", before_ms)
    }

    fn record_demand<'a>(&'a self, epoch: u64, samples: &'a [DemandSample]) -> Pending<'a, ()> {
        let samples = samples.to_vec();
        self.call(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            check_epoch(&transaction, epoch)?;
            for sample in &samples {
                transaction
                    .execute(
                        "INSERT INTO demand (at_ms, capacities) VALUES (?1, ?2)
                         ON CONFLICT (at_ms) DO UPDATE SET capacities = excluded.capacities",
                        params![sample.at_ms, sample.capacities],
                    )
                    .map_err(sqlite)?;
            }
            transaction.commit().map_err(sqlite)
        })
    }

    fn demand(&self, since_ms: i64) -> Pending<'_, Vec<DemandSample>> {
        self.call(move |connection| {
            let mut statement = connection
                .prepare("SELECT at_ms, capacities FROM demand WHERE at_ms >= ?1 ORDER BY at_ms")
                .map_err(sqlite)?;
            let rows = statement
                .query_map(params![since_ms], |row| {
                    Ok(DemandSample {
                        at_ms: row.get(0)?,
                        capacities: row.get(1)?,
                    })
                })
                .map_err(sqlite)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
        })
    }

    fn prune_demand(&self, before_ms: i64) -> Pending<'_, u64> {
        self.delete_before("demand", before_ms)
    }

    fn save_document<'a>(&'a self, epoch: u64, name: &'a str, body: &'a [u8]) -> Pending<'a, ()> {
        let (name, body) = (name.to_string(), body.to_vec());
        self.call(move |connection| {
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            check_epoch(&transaction, epoch)?;
            transaction
                .execute(
                    "INSERT INTO document (name, epoch, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET epoch = ?2, body = ?3",
                    params![name, epoch_value(epoch), body],
                )
                .map_err(sqlite)?;
            transaction.commit().map_err(sqlite)
        })
    }

    fn document<'a>(&'a self, name: &'a str) -> Pending<'a, Option<Vec<u8>>> {
        let name = name.to_string();
        self.call(move |connection| {
            connection
                .query_row(
                    "SELECT body FROM document WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sqlite)
        })
    }
}
