//! The registry in process: embedded mode (`flotilla run`) and tests.

use super::*;
use crate::error::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};

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
