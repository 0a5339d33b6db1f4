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

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, SortOrder, SortTarget};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};

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
        bail!("worker id {id:?} is not valid: it must be non-empty, without '/' or spaces");
    }
    Ok(())
}

// ---- in process -------------------------------------------------------------------------

/// The registry in process: for embedded mode (`flotilla run`) and tests.
#[derive(Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    state: Mutex<MemoryState>,
    /// Woken when the leadership becomes free.
    leader_free: Notify,
}

#[derive(Default)]
struct MemoryState {
    /// id -> (generation, capabilities); the generation tells a stale registration's drop
    /// from the current one when an id registers twice.
    workers: BTreeMap<String, (u64, String)>,
    leader: Option<(u64, String)>,
    watchers: Vec<mpsc::UnboundedSender<WorkerEvent>>,
    next_generation: u64,
}

impl MemoryState {
    fn publish(&mut self, event: WorkerEvent) {
        self.watchers.retain(|w| w.send(event.clone()).is_ok());
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes a worker's key as if its lease had expired (fault injection for tests of the
    /// coordinator's requeueing). Its [`Registration`] reports the key as lost.
    pub fn expire_worker(&self, id: &str) -> bool {
        let mut s = self.inner.state.lock().expect("registry state");
        let removed = s.workers.remove(id).is_some();
        if removed {
            s.publish(WorkerEvent::Down(id.to_string()));
        }
        removed
    }
}

#[tonic::async_trait]
impl Registry for MemoryRegistry {
    async fn register_worker(&self, id: &str, capabilities_json: String) -> Result<Registration> {
        check_worker_id(id)?;
        let generation = {
            let mut s = self.inner.state.lock().expect("registry state");
            s.next_generation += 1;
            let generation = s.next_generation;
            s.workers
                .insert(id.to_string(), (generation, capabilities_json.clone()));
            s.publish(WorkerEvent::Up(WorkerEntry {
                id: id.to_string(),
                capabilities_json,
            }));
            generation
        };
        let (held_tx, held) = watch::channel(true);
        let (stop, stopped) = oneshot::channel::<()>();
        let inner = self.inner.clone();
        let id = id.to_string();
        let key = format!("{WORKERS_PREFIX}{id}");
        let task = tokio::spawn(async move {
            // Report an expiry injected by `expire_worker` while waiting to be dropped.
            let mut stopped = stopped;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        let s = inner.state.lock().expect("registry state");
                        let ours = matches!(s.workers.get(&id), Some((g, _)) if *g == generation);
                        held_tx.send_if_modified(|h| std::mem::replace(h, ours) != ours);
                    }
                }
            }
            let mut s = inner.state.lock().expect("registry state");
            if matches!(s.workers.get(&id), Some((g, _)) if *g == generation) {
                s.workers.remove(&id);
                s.publish(WorkerEvent::Down(id));
            }
        });
        Ok(Registration {
            key,
            held,
            stop: Some(stop),
            task: Some(task),
        })
    }

    async fn workers(&self) -> Result<Vec<WorkerEntry>> {
        let s = self.inner.state.lock().expect("registry state");
        Ok(s.workers
            .iter()
            .map(|(id, (_, caps))| WorkerEntry {
                id: id.clone(),
                capabilities_json: caps.clone(),
            })
            .collect())
    }

    async fn watch_workers(&self) -> Result<mpsc::Receiver<WorkerEvent>> {
        // Events are queued without bound under the state lock (so they keep their order and
        // never block a registration), then forwarded into the bounded channel the trait
        // promises.
        let (utx, mut urx) = mpsc::unbounded_channel();
        {
            let mut s = self.inner.state.lock().expect("registry state");
            for (id, (_, caps)) in &s.workers {
                let _ = utx.send(WorkerEvent::Up(WorkerEntry {
                    id: id.clone(),
                    capabilities_json: caps.clone(),
                }));
            }
            s.watchers.push(utx);
        }
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        tokio::spawn(async move {
            while let Some(event) = urx.recv().await {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn lead(&self, address: &str) -> Result<Registration> {
        let generation = loop {
            let free = self.inner.leader_free.notified();
            {
                let mut s = self.inner.state.lock().expect("registry state");
                if s.leader.is_none() {
                    s.next_generation += 1;
                    let generation = s.next_generation;
                    s.leader = Some((generation, address.to_string()));
                    break generation;
                }
            }
            free.await;
        };
        let (_held_tx, held) = watch::channel(true);
        let (stop, stopped) = oneshot::channel::<()>();
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _held_tx = _held_tx;
            let _ = stopped.await;
            let mut s = inner.state.lock().expect("registry state");
            if matches!(s.leader, Some((g, _)) if g == generation) {
                s.leader = None;
                inner.leader_free.notify_waiters();
            }
        });
        Ok(Registration {
            key: format!("{LEADER_ELECTION}/{generation:x}"),
            held,
            stop: Some(stop),
            task: Some(task),
        })
    }

    async fn leader(&self) -> Result<Option<String>> {
        let s = self.inner.state.lock().expect("registry state");
        Ok(s.leader.as_ref().map(|(_, address)| address.clone()))
    }
}

// ---- etcd -------------------------------------------------------------------------------

/// The registry in etcd.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    endpoints: Vec<String>,
    ttl: Duration,
}

impl EtcdRegistry {
    /// Connects to etcd (`http://host:2379`, or `host:2379`) and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let joined = endpoints.join(",");
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {joined}"))?;
        tokio::time::timeout(Duration::from_secs(5), client.status())
            .await
            .map_err(|_| anyhow!("etcd at {joined} did not answer within 5 s"))?
            .with_context(|| format!("etcd at {joined} did not answer"))?;
        Ok(Self {
            client,
            endpoints: endpoints.to_vec(),
            ttl: DEFAULT_TTL,
        })
    }

    /// Uses leases of this time-to-live instead of [`DEFAULT_TTL`] (whole seconds, at least
    /// 2: etcd's minimum).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(2));
        self
    }

    /// The endpoints this registry talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The underlying etcd client (for tests that inject faults, such as revoking a lease).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn snapshot(client: &mut Client) -> Result<(BTreeMap<String, String>, i64)> {
        let resp = client
            .get(WORKERS_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .context("cannot list workers in etcd")?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut workers = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(id) = worker_id(kv.key()) {
                workers.insert(id, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        Ok((workers, revision))
    }

    /// Starts a lease-bound session: acquires it once (errors reach the caller), then keeps
    /// it in a background task.
    async fn start_session(&self, kind: SessionKind) -> Result<Registration> {
        let mut client = self.client.clone();
        let (lease, key) = kind.acquire(&mut client, self.ttl).await?;
        let (held_tx, held) = watch::channel(true);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run_session(client, kind, self.ttl, lease, held_tx, stopped));
        Ok(Registration {
            key,
            held,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

fn worker_id(key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(WORKERS_PREFIX)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

#[tonic::async_trait]
impl Registry for EtcdRegistry {
    async fn register_worker(&self, id: &str, capabilities_json: String) -> Result<Registration> {
        check_worker_id(id)?;
        self.start_session(SessionKind::Worker {
            key: format!("{WORKERS_PREFIX}{id}"),
            value: capabilities_json,
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerEntry>> {
        let (workers, _) = Self::snapshot(&mut self.client.clone()).await?;
        Ok(workers
            .into_iter()
            .map(|(id, capabilities_json)| WorkerEntry {
                id,
                capabilities_json,
            })
            .collect())
    }

    async fn watch_workers(&self) -> Result<mpsc::Receiver<WorkerEvent>> {
        let mut client = self.client.clone();
        let (known, revision) = Self::snapshot(&mut client).await?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL.max(known.len() + 16));
        for (id, caps) in &known {
            let _ = tx
                .send(WorkerEvent::Up(WorkerEntry {
                    id: id.clone(),
                    capabilities_json: caps.clone(),
                }))
                .await;
        }
        tokio::spawn(watch_loop(client, known, revision, tx));
        Ok(rx)
    }

    async fn lead(&self, address: &str) -> Result<Registration> {
        self.start_session(SessionKind::Leader {
            address: address.to_string(),
        })
        .await
    }

    async fn leader(&self) -> Result<Option<String>> {
        // The election's leader is the candidate key created first (etcd's own rule).
        let resp = self
            .client
            .clone()
            .get(
                format!("{LEADER_ELECTION}/"),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(1),
                ),
            )
            .await
            .context("cannot read the coordinator's leader key in etcd")?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

/// What a lease-bound session holds.
enum SessionKind {
    /// A worker key with its capabilities.
    Worker { key: String, value: String },
    /// A candidacy in the coordinator election, publishing this address.
    Leader { address: String },
}

impl SessionKind {
    /// Grants a lease and takes the key with it; for a leader, waits until elected (keeping
    /// the fresh lease alive meanwhile). Returns the lease and the key held.
    async fn acquire(&self, client: &mut Client, ttl: Duration) -> Result<(i64, String)> {
        let lease = client
            .lease_grant(ttl.as_secs() as i64, None)
            .await
            .context("cannot grant an etcd lease")?
            .id();
        match self {
            SessionKind::Worker { key, value } => {
                client
                    .put(
                        key.as_str(),
                        value.as_str(),
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    )
                    .await
                    .with_context(|| format!("cannot write {key} in etcd"))?;
                Ok((lease, key.clone()))
            }
            SessionKind::Leader { address } => {
                let mut campaigner = client.clone();
                let campaign = campaigner.campaign(LEADER_ELECTION, address.as_str(), lease);
                tokio::select! {
                    resp = campaign => {
                        let resp = resp.context("etcd election for the coordinator failed")?;
                        let key = resp
                            .leader()
                            .map(|l| String::from_utf8_lossy(l.key()).into_owned())
                            .unwrap_or_else(|| format!("{LEADER_ELECTION}/{lease:x}"));
                        Ok((lease, key))
                    }
                    reason = keep_lease(client.clone(), lease, ttl) => {
                        Err(anyhow!("lost the etcd lease while campaigning: {reason}"))
                    }
                }
            }
        }
    }
}

/// Keeps `lease` alive until it is lost; returns why.
async fn keep_lease(mut client: Client, lease: i64, ttl: Duration) -> String {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return format!("keep-alive stream failed: {e}"),
    };
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return format!("keep-alive failed: {e}");
        }
        match tokio::time::timeout(ttl / 3, responses.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "the lease expired".into(),
            Ok(Ok(None)) => return "keep-alive stream closed".into(),
            Ok(Err(e)) => return format!("keep-alive failed: {e}"),
            Err(_) => return "etcd did not answer a keep-alive in time".into(),
        }
    }
}

/// Whether etcd still knows `lease` (false when it expired or was revoked).
async fn lease_alive(client: &mut Client, lease: i64) -> Result<bool> {
    let resp = client.lease_time_to_live(lease, None).await?;
    Ok(resp.ttl() > 0)
}

/// The background task of one registration: keep the lease alive; when that fails, keep the
/// same lease if etcd still has it, or acquire a new one (with backoff) if it is gone; on
/// stop, revoke the lease.
async fn run_session(
    mut client: Client,
    kind: SessionKind,
    ttl: Duration,
    mut lease: i64,
    held: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let reason = tokio::select! {
            _ = &mut stop => break,
            reason = keep_lease(client.clone(), lease, ttl) => reason,
        };
        tracing::warn!(lease, %reason, "etcd lease in trouble; recovering");
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt = async {
                if lease_alive(&mut client, lease).await? {
                    return Ok(lease);
                }
                held.send_replace(false);
                let (new_lease, key) = kind.acquire(&mut client, ttl).await?;
                tracing::info!(key, "registered again in etcd with a new lease");
                Ok::<_, anyhow::Error>(new_lease)
            };
            tokio::select! {
                _ = &mut stop => {
                    revoke(&mut client, lease).await;
                    return;
                }
                result = attempt => match result {
                    Ok(l) => {
                        lease = l;
                        held.send_replace(true);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "etcd unreachable; retrying");
                    }
                },
            }
            tokio::select! {
                _ = &mut stop => {
                    revoke(&mut client, lease).await;
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    revoke(&mut client, lease).await;
}

async fn revoke(client: &mut Client, lease: i64) {
    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
}

/// Streams membership changes into `tx` from `revision` on; after any interruption (etcd
/// restarted, watch cancelled by compaction) it re-reads the prefix and reports the
/// difference, so no change is missed.
async fn watch_loop(
    mut client: Client,
    mut known: BTreeMap<String, String>,
    mut revision: i64,
    tx: mpsc::Sender<WorkerEvent>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if tx.is_closed() {
            return;
        }
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match client.watch(WORKERS_PREFIX, Some(options)).await {
            Ok(mut stream) => loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch on workers failed; resyncing");
                        break;
                    }
                };
                if resp.canceled() {
                    break;
                }
                backoff = Duration::from_millis(200);
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    revision = revision.max(kv.mod_revision());
                    let Some(id) = worker_id(kv.key()) else {
                        continue;
                    };
                    let out = match event.event_type() {
                        EventType::Put => {
                            let caps = String::from_utf8_lossy(kv.value()).into_owned();
                            known.insert(id.clone(), caps.clone());
                            WorkerEvent::Up(WorkerEntry {
                                id,
                                capabilities_json: caps,
                            })
                        }
                        EventType::Delete => {
                            known.remove(&id);
                            WorkerEvent::Down(id)
                        }
                    };
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch workers in etcd; retrying"),
        }
        // Resync from a fresh snapshot.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match EtcdRegistry::snapshot(&mut client).await {
                Ok((now, rev)) => {
                    for id in known.keys() {
                        if !now.contains_key(id)
                            && tx.send(WorkerEvent::Down(id.clone())).await.is_err()
                        {
                            return;
                        }
                    }
                    for (id, caps) in &now {
                        if known.get(id) != Some(caps) {
                            let up = WorkerEvent::Up(WorkerEntry {
                                id: id.clone(),
                                capabilities_json: caps.clone(),
                            });
                            if tx.send(up).await.is_err() {
                                return;
                            }
                        }
                    }
                    known = now;
                    revision = rev;
                    break;
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "etcd unreachable; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut mpsc::Receiver<WorkerEvent>) -> WorkerEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the watch is open")
    }

    #[tokio::test]
    async fn memory_registry_reports_workers_coming_and_going() {
        let reg = MemoryRegistry::new();
        let a = reg
            .register_worker("a", "{\"slots\":1}".into())
            .await
            .unwrap();
        let mut events = reg.watch_workers().await.unwrap();
        assert_eq!(
            next(&mut events).await,
            WorkerEvent::Up(WorkerEntry {
                id: "a".into(),
                capabilities_json: "{\"slots\":1}".into()
            })
        );
        let b = reg.register_worker("b", "{}".into()).await.unwrap();
        assert!(matches!(next(&mut events).await, WorkerEvent::Up(e) if e.id == "b"));
        assert_eq!(reg.workers().await.unwrap().len(), 2);
        drop(a);
        assert_eq!(next(&mut events).await, WorkerEvent::Down("a".into()));
        assert_eq!(reg.workers().await.unwrap()[0].id, "b");
        assert!(reg.expire_worker("b"));
        assert_eq!(next(&mut events).await, WorkerEvent::Down("b".into()));
        let mut b = b;
        tokio::time::timeout(Duration::from_secs(2), b.lost())
            .await
            .expect("the registration notices the expiry");
    }

    #[tokio::test]
    async fn memory_registry_elects_one_leader_at_a_time() {
        let reg = MemoryRegistry::new();
        assert_eq!(reg.leader().await.unwrap(), None);
        let first = reg.lead("127.0.0.1:1").await.unwrap();
        assert_eq!(reg.leader().await.unwrap().as_deref(), Some("127.0.0.1:1"));
        let r2 = reg.clone();
        let second = tokio::spawn(async move { r2.lead("127.0.0.1:2").await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !second.is_finished(),
            "a second leader while the first holds"
        );
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("the second candidate is elected")
            .unwrap();
        assert_eq!(reg.leader().await.unwrap().as_deref(), Some("127.0.0.1:2"));
    }

    #[tokio::test]
    async fn bad_worker_ids_are_refused() {
        let reg = MemoryRegistry::new();
        let err = reg.register_worker("a/b", "{}".into()).await.unwrap_err();
        assert!(err.to_string().contains("worker id \"a/b\""), "{err}");
    }
}
