//! When the agent gives shards back: the connection is gone (stop them), the worker shuts
//! down (hand them back as infrastructure failures), or `--when-idle` and the PC's user is
//! back (pause asking; hand running shards back once the policy's grace is over;
//! `crate::idle` watches the PC).

use super::Agent;
use flotilla_proto::v1::{worker_message, FailureKind, ShardFailure, WorkerMessage};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

impl Agent {
    /// The connection is gone, and with it the coordinator's claim on our shards: stop them.
    pub(super) fn abandon_all(&mut self) {
        for (shard_id, r) in self.running.drain() {
            tracing::info!(shard = shard_id, "stopping: its connection is gone");
            r.cancel.store(true, Ordering::Relaxed);
        }
        self.queue.clear();
    }

    /// On shutdown: stop running shards and tell the coordinator they need another worker.
    pub(super) async fn shut_down(&mut self, tx: &mpsc::Sender<WorkerMessage>) {
        for (shard_id, r) in self.running.drain() {
            r.cancel.store(true, Ordering::Relaxed);
            let failure = ShardFailure {
                shard_id,
                attempt: r.attempt.0,
                kind: FailureKind::Infrastructure as i32,
                message: "the worker is shutting down".into(),
            };
            let _ = tx
                .send(WorkerMessage {
                    kind: Some(worker_message::Kind::Failure(failure)),
                })
                .await;
        }
        self.queue.clear();
        // Give the stream a moment to carry the last messages before it closes.
        let deadline = Instant::now() + Duration::from_secs(1);
        while tx.capacity() < tx.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `--when-idle`: look at the PC; on a change tell the coordinator (an ask carries the
    /// pause); once the user has been back longer than the policy allows, hand running shards
    /// back. Returns whether the pause state changed.
    pub(super) async fn watch_idle(&mut self, tx: &mpsc::Sender<WorkerMessage>) -> bool {
        let Some(watch) = self.idle.as_mut() else {
            return false;
        };
        let reason = watch.busy_reason();
        let yield_within = watch.policy.yield_within;
        let changed = match (&self.paused, reason) {
            (None, Some(r)) => {
                tracing::info!(reason = r, "pausing: the PC is in use (--when-idle)");
                self.paused = Some((r, Instant::now()));
                true
            }
            (Some(_), None) => {
                tracing::info!("resuming: the PC is free again (--when-idle)");
                self.paused = None;
                true
            }
            (Some((_, since)), Some(r)) => {
                self.paused = Some((r, *since));
                false
            }
            (None, None) => false,
        };
        if let Some((reason, since)) = &self.paused {
            if since.elapsed() >= yield_within && !self.running.is_empty() {
                let message = format!(
                    "handed back: the PC's user is back (--when-idle: {reason}; running shards \
                     get {} s)",
                    yield_within.as_secs()
                );
                for (shard_id, r) in self.running.drain() {
                    r.cancel.store(true, Ordering::Relaxed);
                    tracing::info!(shard = shard_id, "handing the shard back (--when-idle)");
                    crate::metrics::global().failed(&r.kind, "infrastructure", 0.0);
                    let failure = ShardFailure {
                        shard_id,
                        attempt: r.attempt.0,
                        kind: FailureKind::Infrastructure as i32,
                        message: message.clone(),
                    };
                    let _ = tx
                        .send(WorkerMessage {
                            kind: Some(worker_message::Kind::Failure(failure)),
                        })
                        .await;
                }
                self.queue.clear();
            }
        }
        changed
    }
}
