//! Durable state: one SQLite database (`coordinator.db` under `--data-dir`) holding sweeps,
//! jobs, shards, attempts, results and the artifact index. Nothing authoritative lives only
//! in memory: the scheduler's in-memory view is rebuilt from here after a restart.
//!
//! One thread owns the connection. Callers hand it closures ([`Store::submit`]); it runs
//! whatever has queued up inside one transaction (group commit), each closure under its own
//! savepoint so a failing one rolls back alone, and answers every caller only after the
//! commit: an acknowledged change is on disk. This is how the coordinator keeps thousands of
//! state changes per second durable on a slow disk.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use tokio::sync::oneshot;

/// A failure of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: {0}")]
    Other(String),
    #[error("the state database is closed")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Shard, job and sweep states: the contract's enums, stored as their numbers (the proto
/// enums' numbers, [`JobState::code`](state::JobState::code)).
pub mod state {
    pub use flotilla_contract::{JobState, ShardState, SweepState};
}

/// Reads a stored state (column `i`) as its enum; an unknown number is a conversion error
/// naming the column.
pub fn stored<T>(
    row: &rusqlite::Row,
    i: usize,
    from_code: fn(i64) -> flotilla_contract::Result<T>,
) -> rusqlite::Result<T> {
    let code: i64 = row.get(i)?;
    from_code(code).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Integer, Box::new(e))
    })
}

/// The tables, created at start when absent.
const SCHEMA: &str = include_str!("schema.sql");

type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Work = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The handle to the database thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: std_mpsc::Sender<Work>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Open (or create) the database at `path` and start its thread.
    pub fn open(path: &Path) -> StoreResult<Store> {
        Self::open_with(path, None)
    }

    /// [`Store::open`], observing each group commit's latency in `commit_seconds`.
    pub fn open_with(
        path: &Path,
        commit_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> StoreResult<Store> {
        let conn = Connection::open(path)?;
        // WAL with synchronous=NORMAL: a commit is durable against a process crash (kill -9)
        // at once, and against power loss at the next checkpoint; readers never block.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;",
        )?;
        conn.execute_batch(SCHEMA)?;
        let (tx, rx) = std_mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("flotilla-store".into())
            .spawn(move || run(conn, rx, commit_seconds))
            .map_err(|e| StoreError::Other(format!("cannot start the database thread: {e}")))?;
        Ok(Store { tx })
    }

    /// Queue `f` to run inside a transaction; the returned future resolves after the commit.
    /// Calls queue in the order `submit` is called, which lets the scheduler keep the database
    /// in the same order as its memory (it submits while holding its lock).
    pub fn submit<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel::<StoreResult<T>>();
        let work: Work = Box::new(move |conn: &Connection| {
            let outcome = savepoint(conn, f);
            Box::new(move |commit_error: Option<&StoreError>| {
                let r = match (outcome, commit_error) {
                    (Ok(_), Some(e)) => Err(StoreError::Other(format!("commit failed: {e}"))),
                    (r, _) => r,
                };
                let _ = otx.send(r);
            })
        });
        let sent = self.tx.send(work).is_ok();
        async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            orx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Run `f` and wait for it.
    pub async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(f).await
    }
}

fn savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    conn.execute_batch("SAVEPOINT work")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE work")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO work; RELEASE work");
            Err(e)
        }
    }
}

/// The database thread: group commit of whatever is queued.
fn run(
    conn: Connection,
    rx: std_mpsc::Receiver<Work>,
    commit_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let t0 = std::time::Instant::now();
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let mut replies = Vec::with_capacity(batch.len());
        for work in batch {
            replies.push(work(&conn));
        }
        let committed = began.and_then(|_| conn.execute_batch("COMMIT"));
        if let Some(h) = &commit_seconds {
            h.observe(t0.elapsed().as_secs_f64());
        }
        let err = committed.err().map(StoreError::from);
        if err.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = ?err, "state database commit failed");
        }
        for reply in replies {
            reply(err.as_ref());
        }
    }
}

/// Next value of a named counter (sweep numbers).
pub fn next_counter(conn: &Connection, name: &str) -> StoreResult<i64> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, 1)
         ON CONFLICT(name) DO UPDATE SET value = value + 1",
        params![name],
    )?;
    Ok(conn.query_row(
        "SELECT value FROM counters WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?)
}

/// Is an artifact indexed?
pub fn artifact_known(conn: &Connection, sha256: &str) -> StoreResult<Option<u64>> {
    Ok(conn
        .query_row(
            "SELECT size FROM artifacts WHERE sha256 = ?1",
            params![sha256],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|s| s as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_call_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let a = store.submit(|c| Ok(next_counter(c, "x")?));
        let b = store.submit(|c| {
            next_counter(c, "x")?;
            Err::<(), _>(StoreError::Other("boom".into()))
        });
        let c = store.submit(|c| Ok(next_counter(c, "x")?));
        assert_eq!(a.await.unwrap(), 1);
        assert!(b.await.is_err());
        // b's increment was rolled back; c sees 2.
        assert_eq!(c.await.unwrap(), 2);
        drop(store);
        // Reopened: the committed value is there.
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.call(|c| next_counter(c, "x")).await.unwrap(), 3);
    }
}
