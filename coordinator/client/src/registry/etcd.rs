//! The registry in etcd: lease-bound worker keys and the leader election.

use super::*;
use crate::error::{Error, Result};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, SortOrder, SortTarget};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

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
            return Err(Error::Invalid("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let joined = endpoints.join(",");
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(Error::etcd(format!("cannot connect to etcd at {joined}")))?;
        tokio::time::timeout(Duration::from_secs(5), client.status())
            .await
            .map_err(|_| Error::Lost(format!("etcd at {joined} did not answer within 5 s")))?
            .map_err(Error::etcd(format!("etcd at {joined} did not answer")))?;
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
            .map_err(Error::etcd("cannot list workers in etcd"))?;
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
            .map_err(Error::etcd(
                "cannot read the coordinator's leader key in etcd",
            ))?;
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
            .map_err(Error::etcd("cannot grant an etcd lease"))?
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
                    .map_err(Error::etcd(format!("cannot write {key} in etcd")))?;
                Ok((lease, key.clone()))
            }
            SessionKind::Leader { address } => {
                let mut campaigner = client.clone();
                let campaign = campaigner.campaign(LEADER_ELECTION, address.as_str(), lease);
                tokio::select! {
                    resp = campaign => {
                        let resp = resp.map_err(Error::etcd("etcd election for the coordinator failed"))?;
                        let key = resp
                            .leader()
                            .map(|l| String::from_utf8_lossy(l.key()).into_owned())
                            .unwrap_or_else(|| format!("{LEADER_ELECTION}/{lease:x}"));
                        Ok((lease, key))
                    }
                    reason = keep_lease(client.clone(), lease, ttl) => {
                        Err(Error::Lost(format!("lost the etcd lease while campaigning: {reason}")))
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
    let resp = client
        .lease_time_to_live(lease, None)
        .await
        .map_err(Error::etcd(format!("cannot read lease {lease:x}")))?;
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
                Ok::<_, Error>(new_lease)
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
