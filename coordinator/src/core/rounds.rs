//! Distributed training rounds: a job whose round is complete (`Change::RoundReady`, or found
//! so at start) is applied here, one at a time, by [`crate::training::close_round`] in one
//! store transaction; then its next round's shards join the queue, or the job ends.
//!
//! The round clock: a round's `round_timeout_s` counts from when the coordinator first sees
//! one of its shards started (after a restart, from the restart). Once it has passed and at
//! least `min_workers` shards of the round have succeeded, the round closes with those: the
//! others are cancelled (their late results refused) and, in diloco, their micro-batches run
//! in the next round. With fewer contributions the round keeps waiting: a lost worker's shard
//! goes back to the queue when its lease lapses, so a round nobody finished is run again.

use super::*;
use crate::training::{self, RoundOutcome};

/// How often the round clock looks at open rounds.
const CLOCK_TICK: Duration = Duration::from_millis(500);

/// A distributed job's open round, as the clock sees it.
struct RoundClock {
    prefix: String,
    started: Option<Instant>,
}

impl Core {
    /// Apply rounds as they complete, and close rounds at their timeout; runs until the
    /// coordinator stops.
    pub async fn round_loop(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.rounds_rx).take() else {
            return;
        };
        let mut clocks: HashMap<String, RoundClock> = HashMap::new();
        let mut limits: HashMap<String, (Duration, usize)> = HashMap::new();
        let mut tick = tokio::time::interval(CLOCK_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => self.close_round(&job).await,
                    None => return,
                },
                _ = tick.tick() => self.check_clocks(&mut clocks, &mut limits).await,
            }
        }
    }

    /// Start the clocks of rounds that began, and close those past their timeout.
    async fn check_clocks(
        &self,
        clocks: &mut HashMap<String, RoundClock>,
        limits: &mut HashMap<String, (Duration, usize)>,
    ) {
        // (job, prefix, succeeded, open, started) of every live distributed job's open round.
        let open: Vec<(String, String, usize, usize, bool)> = {
            let s = lock(&self.sched);
            s.jobs
                .values()
                .filter(|j| {
                    j.head.kind == JobKind::TrainRound
                        && !j.head.state.is_final()
                        && j.head.state != JobState::Blocked
                })
                .filter_map(|j| {
                    let round = j
                        .shards
                        .iter()
                        .filter_map(|s| training::round_of(s))
                        .max()?;
                    let prefix = training::round_prefix(&j.head.id, round);
                    let (succeeded, open) = s.round_progress(&j.head.id, &prefix)?;
                    let started = j.shards.iter().any(|id| {
                        id.starts_with(&prefix)
                            && s.shards.get(id).is_some_and(|sh| {
                                matches!(sh.state, ShardState::Running | ShardState::Succeeded)
                            })
                    });
                    Some((j.head.id.clone(), prefix, succeeded, open, started))
                })
                .collect()
        };
        clocks.retain(|job, _| open.iter().any(|o| &o.0 == job));
        limits.retain(|job, _| open.iter().any(|o| &o.0 == job));
        for (job, prefix, succeeded, pending, started) in open {
            let clock = clocks.entry(job.clone()).or_insert(RoundClock {
                prefix: prefix.clone(),
                started: None,
            });
            if clock.prefix != prefix {
                *clock = RoundClock {
                    prefix: prefix.clone(),
                    started: None,
                };
            }
            if clock.started.is_none() && started {
                clock.started = Some(Instant::now());
            }
            let Some(since) = clock.started else {
                continue;
            };
            if pending == 0 {
                continue;
            }
            let (timeout, min) = match limits.get(&job) {
                Some(l) => *l,
                None => {
                    let id = job.clone();
                    let meta = self
                        .store
                        .call(move |c| training::run_meta(c, &id)?.config())
                        .await;
                    let Ok(Some(d)) = meta.map(|cfg| cfg.distributed) else {
                        continue;
                    };
                    let l = (Duration::from_secs(d.round_timeout_s), d.min_workers.max(1));
                    limits.insert(job.clone(), l);
                    l
                }
            };
            if since.elapsed() >= timeout && succeeded >= min {
                tracing::warn!(
                    job,
                    round = %prefix,
                    succeeded,
                    dropped = pending,
                    "round timeout: closing the round with the contributions that arrived"
                );
                self.close_round_early(&job, &prefix).await;
            }
        }
    }

    /// Cancel the open shards of a round past its timeout; the round is then applied as
    /// complete (`Change::RoundReady` after the commit).
    async fn close_round_early(&self, job: &str, prefix: &str) {
        let (fut, changes, running) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            let running = s.close_round_early(job, prefix, &mut changes);
            (self.persist(changes.clone(), Vec::new()), changes, running)
        };
        if let Err(e) = fut.await {
            tracing::error!(job, error = %e, "cannot record a round closed at its timeout");
            return;
        }
        self.committed(&changes);
        self.send_cancels(running, "the round closed at its timeout");
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
                Ok(RoundOutcome::Next(shards, progress)) => {
                    let n = shards.len();
                    s.set_training(job, progress);
                    s.add_round(
                        job,
                        shards
                            .into_iter()
                            .map(|p| NewShard {
                                id: p.shard.id,
                                state: ShardState::Ready,
                                attempt: Attempt(0),
                                task_failures: 0,
                                infra_failures: 0,
                                units: p.shard.units,
                                prefer: p.prefer,
                                prompt_tokens: 0,
                            })
                            .collect(),
                    );
                    tracing::info!(job, shards = n, "training round applied; next round queued");
                }
                Ok(RoundOutcome::Done(progress)) => {
                    tracing::info!(job, "distributed training finished");
                    s.set_training(job, progress);
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
        // The applied round's gradients or deltas are no longer needed.
        let store = self.artifacts.clone();
        let id = job.to_string();
        match self
            .store
            .call(move |c| training::drop_contributions(c, &store, &id))
            .await
        {
            Ok(freed) => tracing::debug!(job, freed, "contributions removed"),
            Err(e) => tracing::warn!(job, error = %e, "cannot remove a round's contributions"),
        }
    }
}
