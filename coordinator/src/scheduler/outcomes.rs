//! What happens to a shard after it is assigned: its result fenced against the current
//! attempt and stored once, its failure charged to the task or infrastructure budget, its
//! job and sweep settled, a lost worker's shards requeued, a sweep cancelled.

use super::*;

impl Scheduler {
    /// Is (shard, attempt) the current running attempt?
    pub fn fence(&self, shard_id: &str, attempt: Attempt) -> Verdict {
        let Some(shard) = self.shards.get(shard_id) else {
            return Verdict::Refused(format!("unknown shard {shard_id}"));
        };
        match shard.state {
            ShardState::Running if shard.attempt == attempt => Verdict::Accepted,
            ShardState::Succeeded if shard.attempt == attempt => Verdict::Duplicate,
            _ if shard.attempt != attempt => Verdict::Refused(format!(
                "attempt {attempt} of shard {shard_id} is superseded (the current attempt is {})",
                shard.attempt
            )),
            _ => Verdict::Refused(format!(
                "attempt {attempt} of shard {shard_id} is no longer running"
            )),
        }
    }

    /// A result for (shard, attempt) from a worker that reported `units` in `seconds`.
    pub fn succeed(
        &mut self,
        shard_id: &str,
        attempt: Attempt,
        units: u64,
        seconds: f64,
        changes: &mut Vec<Change>,
    ) -> Verdict {
        let v = self.fence(shard_id, attempt);
        if v != Verdict::Accepted {
            return v;
        }
        let shard = self.shards.get_mut(shard_id).expect("fenced shard exists");
        shard.state = ShardState::Succeeded;
        let worker = shard.worker.take();
        let job_id = shard.job_id.clone();
        changes.push(Change::Succeeded {
            shard: shard_id.to_string(),
            attempt,
        });
        if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
            w.running.remove(shard_id);
            w.completed += 1;
            if seconds > 0.0 && units > 0 {
                let rate = units as f64 / seconds;
                w.units_per_second = Some(match w.units_per_second {
                    Some(old) => 0.7 * old + 0.3 * rate,
                    None => rate,
                });
            }
        }
        let job = self.jobs.get_mut(&job_id).expect("job of a shard exists");
        job.running = job.running.saturating_sub(1);
        job.done += 1;
        if job.done as usize == job.shards.len() && !job.head.state.is_final() {
            if job.head.kind == JobKind::TrainRound {
                // A round of a distributed run is complete: the coordinator applies it and
                // adds the next round's shards, or ends the job (core::rounds).
                changes.push(Change::RoundReady { job: job_id });
            } else {
                self.job_succeeded(&job_id, changes);
            }
        }
        Verdict::Accepted
    }

    /// Mark a job succeeded: its dependents whose dependencies all succeeded are unblocked,
    /// and its sweep ends if this was its last job.
    pub fn job_succeeded(&mut self, job_id: &str, changes: &mut Vec<Change>) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.head.state.is_final() {
            return;
        }
        job.head.state = JobState::Succeeded;
        changes.push(Change::Job {
            job: job_id.to_string(),
            state: JobState::Succeeded,
            error: String::new(),
        });
        let dependents = job.dependents.clone();
        for d in dependents {
            let ready = {
                let dj = &self.jobs[&d];
                dj.head.state == JobState::Blocked
                    && dj.head.depends_on.iter().all(|x| {
                        self.jobs
                            .get(x)
                            .is_some_and(|x| x.head.state == JobState::Succeeded)
                    })
            };
            if ready {
                changes.push(Change::Unblocked { job: d });
            }
        }
        let sweep = self.jobs[job_id].sweep_id.clone();
        self.check_sweep(&sweep, changes);
    }

    /// Fail a job from outside its shards (a distributed round that cannot be applied).
    pub fn job_failed(&mut self, job_id: &str, error: &str, changes: &mut Vec<Change>) {
        self.fail_job(job_id, error, changes);
        if let Some(sweep) = self.jobs.get(job_id).map(|j| j.sweep_id.clone()) {
            self.check_sweep(&sweep, changes);
        }
    }

    /// The next round's shards of a distributed training job, already stored as `Ready`.
    pub fn add_round(&mut self, job_id: &str, shards: Vec<NewShard>) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.head.state.is_final() {
            return;
        }
        for s in shards {
            if self.shards.contains_key(&s.id) {
                continue;
            }
            job.shards.push(s.id.clone());
            job.ready.push_back(s.id.clone());
            self.shards.insert(s.id.clone(), ShardMem::new(job_id, s));
        }
    }

    /// The shards of a distributed job's round (`prefix`: the round's shard-id prefix) that
    /// have succeeded, and those still open (ready or running); `None` when the job has
    /// ended.
    pub fn round_progress(&self, job_id: &str, prefix: &str) -> Option<(usize, usize)> {
        let job = self.jobs.get(job_id)?;
        if job.head.state.is_final() {
            return None;
        }
        let mut succeeded = 0;
        let mut open = 0;
        for s in job.shards.iter().filter(|s| s.starts_with(prefix)) {
            match self.shards.get(s).map(|s| s.state) {
                Some(ShardState::Succeeded) => succeeded += 1,
                Some(st) if !st.is_final() => open += 1,
                _ => {}
            }
        }
        Some((succeeded, open))
    }

    /// Close a round at its timeout with the contributions that arrived: the round's open
    /// shards are cancelled (queued ones dropped, running ones returned for the caller to
    /// send `Cancel`; their late results are refused) and count as settled, so the round is
    /// ready to apply (`Change::RoundReady`).
    pub fn close_round_early(
        &mut self,
        job_id: &str,
        prefix: &str,
        changes: &mut Vec<Change>,
    ) -> Vec<(String, Attempt, String)> {
        let mut running = Vec::new();
        let Some(job) = self.jobs.get_mut(job_id) else {
            return running;
        };
        if job.head.state.is_final() {
            return running;
        }
        job.ready.retain(|s| !s.starts_with(prefix));
        for sid in job.shards.iter().filter(|s| s.starts_with(prefix)) {
            let Some(shard) = self.shards.get_mut(sid) else {
                continue;
            };
            if shard.state.is_final() {
                continue;
            }
            if shard.state == ShardState::Running {
                job.running = job.running.saturating_sub(1);
                if let Some(w) = shard.worker.take() {
                    if let Some(wm) = self.workers.get_mut(&w) {
                        wm.running.remove(sid);
                    }
                    running.push((sid.clone(), shard.attempt, w));
                }
            }
            shard.state = ShardState::Cancelled;
            job.done += 1;
            changes.push(Change::ShardCancelled { shard: sid.clone() });
        }
        if job.done as usize == job.shards.len() {
            changes.push(Change::RoundReady {
                job: job_id.to_string(),
            });
        }
        running
    }

    /// Record where a distributed job's rounds stand (shown by `sweep watch`).
    pub fn set_training(
        &mut self,
        job_id: &str,
        progress: Option<flotilla_proto::v1::TrainProgress>,
    ) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.training = progress;
        }
    }

    /// Distributed training jobs whose shards have all succeeded but which have not ended:
    /// a round waiting to be applied (after a restart).
    pub fn rounds_pending(&self) -> Vec<String> {
        self.jobs
            .values()
            .filter(|j| {
                j.head.kind == JobKind::TrainRound
                    && !j.head.state.is_final()
                    && j.head.state != JobState::Blocked
                    && j.done as usize == j.shards.len()
            })
            .map(|j| j.head.id.clone())
            .collect()
    }

    /// After the store made an unblocked job's specs complete: queue its shards.
    pub fn mark_ready(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.head.state != JobState::Blocked {
            return;
        }
        job.head.state = JobState::Ready;
        for s in &job.shards {
            if let Some(shard) = self.shards.get_mut(s) {
                if shard.state == ShardState::Blocked || shard.state == ShardState::Ready {
                    shard.state = ShardState::Ready;
                    job.ready.push_back(s.clone());
                }
            }
        }
    }

    /// A failure report for (shard, attempt).
    pub fn fail(
        &mut self,
        shard_id: &str,
        attempt: Attempt,
        kind: FailureKind,
        message: &str,
        changes: &mut Vec<Change>,
    ) -> Verdict {
        let v = self.fence(shard_id, attempt);
        if v != Verdict::Accepted {
            // A failure for a shard that already succeeded under this attempt is stale too.
            return match v {
                Verdict::Duplicate => Verdict::Refused(format!(
                    "shard {shard_id} already succeeded under attempt {attempt}"
                )),
                other => other,
            };
        }
        let shard = self.shards.get_mut(shard_id).expect("fenced shard exists");
        let worker_id = shard.worker.take().unwrap_or_default();
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.running.remove(shard_id);
        }
        let job_id = shard.job_id.clone();
        let sweep_id = self.jobs[&job_id].sweep_id.clone();
        if self.recent_failures.len() >= super::RECENT_FAILURES {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(super::FailureRecord {
            at_unix_ms: crate::store::now_ms(),
            sweep_id: sweep_id.clone(),
            shard_id: shard_id.to_string(),
            attempt: attempt.0,
            worker_id,
            kind,
            message: message.to_string(),
        });
        let (budget_task, budget_infra) = self
            .sweeps
            .get(&sweep_id)
            .map(|s| (s.retry_task, s.retry_infra))
            .unwrap_or((0, 0));
        let shard = self.shards.get_mut(shard_id).expect("fenced shard exists");
        let over = match kind {
            FailureKind::Task => {
                shard.task_failures += 1;
                shard.task_failures > budget_task
            }
            FailureKind::Infrastructure => {
                shard.infra_failures += 1;
                shard.infra_failures > budget_infra
            }
        };
        let what = match kind {
            FailureKind::Task => "task",
            FailureKind::Infrastructure => "infrastructure",
        };
        let job = self.jobs.get_mut(&job_id).expect("job of a shard exists");
        job.running = job.running.saturating_sub(1);
        if !over {
            shard.state = ShardState::Ready;
            changes.push(Change::Requeued {
                shard: shard_id.to_string(),
                attempt,
                outcome: format!("{what} failure: {message}"),
                task_failures: shard.task_failures,
                infra_failures: shard.infra_failures,
            });
            if !job.head.state.is_final() {
                // Retries go to the front: the job should not finish without them.
                job.ready.push_front(shard_id.to_string());
            }
            return Verdict::Accepted;
        }
        shard.state = ShardState::Failed;
        job.failed += 1;
        let error = format!(
            "shard {shard_id} failed after {} task and {} infrastructure failures; last ({what}): {message}",
            shard.task_failures, shard.infra_failures
        );
        changes.push(Change::ShardFailed {
            shard: shard_id.to_string(),
            attempt,
            error: error.clone(),
            task_failures: shard.task_failures,
            infra_failures: shard.infra_failures,
        });
        self.fail_job(&job_id, &error, changes);
        self.check_sweep(&sweep_id, changes);
        Verdict::Accepted
    }

    /// Fail a job and, transitively, every job that depends on it.
    pub(super) fn fail_job(&mut self, job_id: &str, error: &str, changes: &mut Vec<Change>) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.head.state.is_final() {
            return;
        }
        job.head.state = JobState::Failed;
        job.head.error = error.to_string();
        job.ready.clear();
        changes.push(Change::Job {
            job: job_id.to_string(),
            state: JobState::Failed,
            error: error.to_string(),
        });
        for d in job.dependents.clone() {
            self.fail_job(
                &d,
                &format!("depends on job {job_id}, which failed"),
                changes,
            );
        }
    }

    /// End the sweep when every job has ended.
    pub(super) fn check_sweep(&mut self, sweep_id: &str, changes: &mut Vec<Change>) {
        let Some(sweep) = self.sweeps.get(sweep_id) else {
            return;
        };
        if sweep.state.is_final() {
            return;
        }
        let jobs: Vec<&JobMem> = sweep.jobs.iter().filter_map(|j| self.jobs.get(j)).collect();
        if !jobs.iter().all(|j| j.head.state.is_final()) {
            return;
        }
        let failed: Vec<&&JobMem> = jobs
            .iter()
            .filter(|j| j.head.state == JobState::Failed)
            .collect();
        let (state, error) = if failed.is_empty() {
            (SweepState::Succeeded, String::new())
        } else {
            (
                SweepState::Failed,
                format!(
                    "{} of {} jobs failed; first: {}: {}",
                    failed.len(),
                    jobs.len(),
                    failed[0].head.label,
                    failed[0].head.error
                ),
            )
        };
        let sweep = self.sweeps.get_mut(sweep_id).expect("checked above");
        sweep.state = state;
        sweep.error = error.clone();
        changes.push(Change::Sweep {
            sweep: sweep_id.to_string(),
            state,
            error,
        });
    }

    /// A worker is gone (stream dropped, key deleted, heartbeat missed): its running shards
    /// go back to the queue as infrastructure failures. Only the given connection is dropped,
    /// so a late drop of an old stream does not hit the worker's new one.
    pub fn drop_worker(
        &mut self,
        worker_id: &str,
        connection: Option<u64>,
        reason: &str,
        changes: &mut Vec<Change>,
    ) -> bool {
        let Some(w) = self.workers.get_mut(worker_id) else {
            return false;
        };
        if connection.is_some_and(|c| c != w.connection) || !w.connected {
            return false;
        }
        w.connected = false;
        w.waiting = 0;
        let running: Vec<String> = w.running.drain().collect();
        for s in running {
            let attempt = self.shards.get(&s).map(|s| s.attempt).unwrap_or_default();
            self.fail(&s, attempt, FailureKind::Infrastructure, reason, changes);
        }
        true
    }

    /// Cancel a sweep: queued shards are dropped, running ones returned for the caller to
    /// send `Cancel` to their workers; results for them are refused from now on.
    pub fn cancel_sweep(
        &mut self,
        sweep_id: &str,
        changes: &mut Vec<Change>,
    ) -> Vec<(String, Attempt, String)> {
        let mut running = Vec::new();
        let Some(sweep) = self.sweeps.get(sweep_id) else {
            return running;
        };
        if sweep.state.is_final() {
            return running;
        }
        for jid in sweep.jobs.clone() {
            let job = self.jobs.get_mut(&jid).expect("job of a sweep exists");
            if job.head.state.is_final() {
                continue;
            }
            job.head.state = JobState::Cancelled;
            job.ready.clear();
            changes.push(Change::Job {
                job: jid.clone(),
                state: JobState::Cancelled,
                error: "cancelled".into(),
            });
            for sid in job.shards.clone() {
                let shard = self.shards.get_mut(&sid).expect("shard of a job exists");
                if shard.state.is_final() {
                    continue;
                }
                if shard.state == ShardState::Running {
                    if let Some(w) = shard.worker.take() {
                        if let Some(wm) = self.workers.get_mut(&w) {
                            wm.running.remove(&sid);
                        }
                        running.push((sid.clone(), shard.attempt, w));
                    }
                }
                shard.state = ShardState::Cancelled;
                changes.push(Change::ShardCancelled { shard: sid });
            }
        }
        let sweep = self.sweeps.get_mut(sweep_id).expect("checked above");
        sweep.state = SweepState::Cancelled;
        sweep.error = "cancelled".into();
        changes.push(Change::Sweep {
            sweep: sweep_id.to_string(),
            state: SweepState::Cancelled,
            error: "cancelled".into(),
        });
        running
    }
}
