//! Distributed training rounds: a job whose round is complete (`Change::RoundReady`, or found
//! so at start) is applied here, one at a time, by [`crate::training::close_round`] in one
//! store transaction; then its next round's shards join the queue, or the job ends.

use super::*;
use crate::training::{self, RoundOutcome};

impl Core {
    /// Apply rounds as they complete; runs until the coordinator stops.
    pub async fn round_loop(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.rounds_rx).take() else {
            return;
        };
        while let Some(job) = rx.recv().await {
            self.close_round(&job).await;
        }
    }

    async fn close_round(&self, job: &str) {
        let store = self.artifacts.clone();
        let id = job.to_string();
        let outcome = self
            .store
            .call(move |c| training::close_round(c, &store, &id))
            .await;
        let (fut, changes) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            match outcome {
                Ok(RoundOutcome::NotReady) => return,
                Ok(RoundOutcome::Next(shards)) => {
                    let n = shards.len();
                    s.add_round(
                        job,
                        shards
                            .into_iter()
                            .map(|p| NewShard {
                                id: p.id,
                                state: ShardState::Ready,
                                attempt: Attempt(0),
                                task_failures: 0,
                                infra_failures: 0,
                                units: p.units,
                            })
                            .collect(),
                    );
                    tracing::info!(job, shards = n, "training round applied; next round queued");
                }
                Ok(RoundOutcome::Done) => {
                    tracing::info!(job, "distributed training finished");
                    s.job_succeeded(job, &mut changes);
                }
                Err(e) => {
                    tracing::error!(job, error = %e, "a training round cannot be applied");
                    s.job_failed(
                        job,
                        &format!("applying a training round: {e}"),
                        &mut changes,
                    );
                }
            }
            (self.persist(changes.clone(), Vec::new()), changes)
        };
        match fut.await {
            Ok(()) => self.committed(&changes),
            Err(e) => tracing::error!(job, error = %e, "cannot record a training round's outcome"),
        }
        self.kick.notify_one();
    }
}
