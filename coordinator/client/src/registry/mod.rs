//! Who is in the cluster: worker membership and the coordinator's leader key.
//!
//! Workers announce themselves under `/flotilla/workers/<id>` with their capabilities as the
//! value; the key is bound to a lease with a short time-to-live (10 s), kept alive while the
//! worker runs. A worker that dies stops refreshing its lease, etcd deletes the key when the
//! lease expires, and the coordinator (watching the prefix) requeues that worker's shards.
//!
//! The coordinator wins an etcd election on `/flotilla/leader` and publishes its gRPC address
//! there, so a worker needs only the etcd endpoints and a token to find it.
//!
//! Two implementations sit behind one [`Registry`] trait:
//! - [`EtcdRegistry`] talks to a real etcd cluster (the `etcd-client` crate).
//! - [`MemoryRegistry`] keeps the same state in process, for `flotilla run` (embedded mode,
//!   no etcd needed) and for tests. Leases cannot be lost in process; everything else behaves
//!   the same, watch events included.
//!
//! A [`Registration`] is the handle of one lease-bound key: while it lives, a background task
//! keeps the lease alive (and re-registers if etcd says the lease is gone); dropping it stops
//! the task, which revokes the lease so the key disappears at once rather than at expiry.
//!
//! Files: this one (the trait, entries, registrations), `memory.rs`, `etcd.rs`.

use crate::error::{Error, Result};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The key prefix under which workers register.
pub const WORKERS_PREFIX: &str = "/flotilla/workers/";
/// The election name whose leader is the active coordinator (candidates' keys live under
/// `LEADER_ELECTION/`).
pub const LEADER_ELECTION: &str = "/flotilla/leader";
/// Time-to-live of worker and leader leases.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Capacity of the channel returned by [`Registry::watch_workers`].
const WATCH_CHANNEL: usize = 256;

/// One registered worker: its id and the capabilities it announced (JSON, as the worker
/// wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEntry {
    pub id: String,
    pub capabilities_json: String,
}

/// A change in membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker registered, or re-registered / updated its capabilities.
    Up(WorkerEntry),
    /// A worker's key is gone: it deregistered, or its lease expired.
    Down(String),
}

/// Membership and leader election, in etcd or in process.
#[tonic::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers the worker `id` with its capabilities under a lease-bound key. The key stays
    /// while the returned [`Registration`] lives; if the lease is lost (etcd unreachable for
    /// longer than the TTL), the worker registers again as soon as it can.
    async fn register_worker(&self, id: &str, capabilities_json: String) -> Result<Registration>;

    /// The workers registered now, sorted by id.
    async fn workers(&self) -> Result<Vec<WorkerEntry>>;

    /// Membership changes: first one `Up` per worker registered now, then every change as it
    /// happens. The stream ends when the receiver is dropped.
    async fn watch_workers(&self) -> Result<mpsc::Receiver<WorkerEvent>>;

    /// Campaigns to be the coordinator; resolves once this process is the leader, with its
    /// `address` published for [`Registry::leader`]. Leadership lasts while the returned
    /// [`Registration`] lives.
    async fn lead(&self, address: &str) -> Result<Registration>;

    /// The current leader's published address, if there is a leader.
    async fn leader(&self) -> Result<Option<String>>;
}

/// The handle of one lease-bound key (a worker registration or a leadership).
///
/// Dropping it stops the keep-alive and revokes the lease (best effort: if the process is
/// killed instead, the key expires with its lease).
pub struct Registration {
    key: String,
    held: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    /// The keep-alive task, which revokes the lease when stopped.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// The key this registration holds (`/flotilla/workers/<id>`, or the leader's candidate
    /// key).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the key is held right now. It turns false while a lost lease is being
    /// replaced, and true again once it is.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Resolves when the key stops being held (the lease was lost). For a leader this means
    /// another coordinator may have taken over.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !held).await;
    }

    /// Gives the key up now and waits (up to 3 s) until it is gone, so a process about to
    /// exit leaves no key waiting for its lease to expire.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("held", &self.is_held())
            .finish()
    }
}

fn check_worker_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') || id.chars().any(char::is_whitespace) {
        return Err(Error::Invalid(format!(
            "worker id {id:?} is not valid: it must be non-empty, without '/' or spaces"
        )));
    }
    Ok(())
}

mod etcd;
mod memory;

pub use etcd::EtcdRegistry;
pub use memory::MemoryRegistry;

#[cfg(test)]
mod tests;
