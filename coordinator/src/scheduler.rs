//! The scheduler: the in-memory view of every live sweep, job, shard and worker, and the
//! decisions — which shard goes to which worker, which result is accepted, what happens after
//! a failure. It does no I/O: every operation returns the [`Change`]s to make durable, and the
//! coordinator (`coordinator.rs`) writes them to the store before telling anyone.
//!
//! The rules:
//! - **Pull.** A worker asks with its free slots; [`Scheduler::pick`] hands out ready shards in
//!   sweep order and DAG order (a job's shards are ready only when the jobs it depends on have
//!   succeeded). Shards of jobs whose model the worker already has loaded come first.
//! - **Faster workers get larger shares.** Pulling already gives each worker work in
//!   proportion to its speed; at the tail of a job (fewer ready shards than idle workers at
//!   least twice as fast, by measured units/s), a slow worker is not given the last shards,
//!   so the job does not wait on it.
//! - **Fencing.** Each assignment is a new attempt number; a result is accepted only for the
//!   shard's current, running attempt. The same result again is a no-op; anything else is
//!   refused.
//! - **Two retry budgets.** A task failure (bad input) and an infrastructure failure (the
//!   worker died, its stream dropped, its etcd key vanished, it missed heartbeats) count
//!   separately against the sweep's `retries`; a shard over budget fails its job, and the jobs
//!   that depend on it fail with it.

use crate::store::state::*;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// A state change to make durable, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Assigned {
        shard: String,
        attempt: u32,
        worker: String,
    },
    Succeeded {
        shard: String,
        attempt: u32,
    },
    /// Back in the queue after a failure of `attempt`.
    Requeued {
        shard: String,
        attempt: u32,
        outcome: String,
        task_failures: u32,
        infra_failures: u32,
    },
    ShardFailed {
        shard: String,
        attempt: u32,
        error: String,
        task_failures: u32,
        infra_failures: u32,
    },
    ShardCancelled {
        shard: String,
    },
    Job {
        job: String,
        state: i64,
        error: String,
    },
    /// Every job this one depends on succeeded: complete its shard specs from their results
    /// and make it ready (in the same transaction).
    Unblocked {
        job: String,
    },
    Sweep {
        sweep: String,
        state: i64,
        error: String,
    },
}

/// How a failure is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Task,
    Infrastructure,
}

/// What happened to a result or failure report.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Current attempt: recorded.
    Accepted,
    /// The same attempt's result again: nothing to do.
    Duplicate,
    /// Not the current attempt (superseded, cancelled, unknown shard).
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct SweepMem {
    pub id: String,
    pub seq: i64,
    pub name: String,
    pub state: i64,
    pub error: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub jobs: Vec<String>,
    pub retry_task: u32,
    pub retry_infra: u32,
}

#[derive(Debug, Clone)]
pub struct JobMem {
    pub id: String,
    pub sweep_id: String,
    pub seq: i64,
    pub kind: String,
    pub label: String,
    /// The model the job's shards load (preference for workers that have it loaded).
    pub model: String,
    pub state: i64,
    pub error: String,
    pub depends_on: Vec<String>,
    pub dependents: Vec<String>,
    pub shards: Vec<String>,
    pub ready: VecDeque<String>,
    pub done: u32,
    pub running: u32,
    pub failed: u32,
}

#[derive(Debug, Clone)]
pub struct ShardMem {
    pub id: String,
    pub job_id: String,
    pub state: i64,
    pub attempt: u32,
    pub worker: Option<String>,
    pub task_failures: u32,
    pub infra_failures: u32,
    pub units: u64,
}

#[derive(Debug, Clone)]
pub struct WorkerMem {
    pub id: String,
    pub capabilities: flotilla_proto::v1::Capabilities,
    pub models_loaded: Vec<String>,
    pub running: HashSet<String>,
    pub completed: u64,
    /// Exponentially weighted units per second over its results; None until one arrives.
    pub units_per_second: Option<f64>,
    pub last_seen: Instant,
    pub last_seen_unix_ms: i64,
    /// Free slots announced by its last ask and not filled yet.
    pub waiting: u32,
    pub connected: bool,
    /// Which connection (stream) this is; a reconnect gets a new one.
    pub connection: u64,
}

impl WorkerMem {
    pub fn new(id: &str, capabilities: flotilla_proto::v1::Capabilities, connection: u64) -> Self {
        Self {
            id: id.to_string(),
            models_loaded: capabilities.models_loaded.clone(),
            capabilities,
            running: HashSet::new(),
            completed: 0,
            units_per_second: None,
            last_seen: Instant::now(),
            last_seen_unix_ms: crate::store::now_ms(),
            waiting: 0,
            connected: true,
            connection,
        }
    }

    fn slots(&self) -> u32 {
        self.capabilities.slots.max(1)
    }
}

/// A job as planned, for [`Scheduler::add_job`].
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub seq: i64,
    pub kind: String,
    pub label: String,
    pub model: String,
    pub state: i64,
    pub error: String,
    pub depends_on: Vec<String>,
    pub shards: Vec<NewShard>,
}

#[derive(Debug, Clone)]
pub struct NewShard {
    pub id: String,
    pub state: i64,
    pub attempt: u32,
    pub task_failures: u32,
    pub infra_failures: u32,
    pub units: u64,
}

#[derive(Default)]
pub struct Scheduler {
    pub sweeps: HashMap<String, SweepMem>,
    /// Live sweeps in submission order.
    pub order: Vec<String>,
    pub jobs: HashMap<String, JobMem>,
    pub shards: HashMap<String, ShardMem>,
    pub workers: HashMap<String, WorkerMem>,
}

fn terminal(state: i64) -> bool {
    matches!(state, SUCCEEDED | FAILED | CANCELLED)
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a sweep (new, or loaded from the store after a restart).
    pub fn add_sweep(&mut self, sweep: SweepMem) {
        if !self.order.contains(&sweep.id) {
            self.order.push(sweep.id.clone());
        }
        self.sweeps.insert(sweep.id.clone(), sweep);
        let sweeps = &self.sweeps;
        self.order
            .sort_by_key(|id| sweeps.get(id).map(|s| s.seq).unwrap_or(0));
    }

    /// Add a job of a known sweep; ready shards go into its queue in order.
    pub fn add_job(&mut self, sweep_id: &str, job: NewJob) {
        let mut mem = JobMem {
            id: job.id.clone(),
            sweep_id: sweep_id.to_string(),
            seq: job.seq,
            kind: job.kind,
            label: job.label,
            model: job.model,
            state: job.state,
            error: job.error,
            depends_on: job.depends_on.clone(),
            dependents: Vec::new(),
            shards: Vec::new(),
            ready: VecDeque::new(),
            done: 0,
            running: 0,
            failed: 0,
        };
        for s in job.shards {
            match s.state {
                SUCCEEDED => mem.done += 1,
                FAILED => mem.failed += 1,
                READY if !terminal(job.state) && job.state != BLOCKED => {
                    mem.ready.push_back(s.id.clone())
                }
                _ => {}
            }
            mem.shards.push(s.id.clone());
            self.shards.insert(
                s.id.clone(),
                ShardMem {
                    id: s.id,
                    job_id: job.id.clone(),
                    state: s.state,
                    attempt: s.attempt,
                    worker: None,
                    task_failures: s.task_failures,
                    infra_failures: s.infra_failures,
                    units: s.units,
                },
            );
        }
        for d in &job.depends_on {
            if let Some(dep) = self.jobs.get_mut(d) {
                dep.dependents.push(job.id.clone());
            }
        }
        if let Some(s) = self.sweeps.get_mut(sweep_id) {
            s.jobs.push(job.id.clone());
        }
        self.jobs.insert(job.id, mem);
    }

    /// Register a connected worker (replacing an older connection of the same id, whose
    /// running shards the caller must have requeued with [`Scheduler::drop_worker`]).
    pub fn connect(&mut self, worker: WorkerMem) {
        self.workers.insert(worker.id.clone(), worker);
    }

    pub fn touch(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_seen = Instant::now();
            w.last_seen_unix_ms = crate::store::now_ms();
        }
    }

    /// How many idle workers are at least twice as fast as `worker` (for the tail rule).
    fn faster_idle(&self, worker: &WorkerMem) -> usize {
        let Some(mine) = worker.units_per_second else {
            return 0;
        };
        self.workers
            .values()
            .filter(|w| {
                w.connected
                    && w.id != worker.id
                    && (w.running.len() as u32) < w.slots()
                    && w.units_per_second.is_some_and(|u| u >= 2.0 * mine)
            })
            .count()
    }

    /// Up to `n` shards for `worker_id`: `(shard, attempt, job)`. The shards are marked
    /// running under their new attempt numbers.
    pub fn pick(
        &mut self,
        worker_id: &str,
        n: u32,
        changes: &mut Vec<Change>,
    ) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        let Some(worker) = self.workers.get(worker_id) else {
            return out;
        };
        if !worker.connected || n == 0 {
            return out;
        }
        let loaded: HashSet<&str> = worker.models_loaded.iter().map(String::as_str).collect();
        let faster = self.faster_idle(worker);
        // Candidate jobs in sweep and DAG order; those with the model loaded first.
        let mut candidates: Vec<(bool, usize, String)> = Vec::new();
        let mut i = 0;
        for sid in &self.order {
            let Some(sweep) = self.sweeps.get(sid) else {
                continue;
            };
            if terminal(sweep.state) {
                continue;
            }
            for jid in &sweep.jobs {
                let job = &self.jobs[jid];
                if job.ready.is_empty() || terminal(job.state) || job.state == BLOCKED {
                    continue;
                }
                // Tail rule: leave the last shards to the faster idle workers.
                if faster > 0 && job.ready.len() <= faster {
                    continue;
                }
                candidates.push((!loaded.contains(job.model.as_str()), i, jid.clone()));
                i += 1;
            }
        }
        candidates.sort();
        'jobs: for (_, _, jid) in candidates {
            loop {
                if out.len() as u32 >= n {
                    break 'jobs;
                }
                let job = self.jobs.get_mut(&jid).expect("candidate job exists");
                let Some(shard_id) = job.ready.pop_front() else {
                    break;
                };
                let shard = self.shards.get_mut(&shard_id).expect("queued shard exists");
                if shard.state != READY {
                    continue;
                }
                shard.state = RUNNING;
                shard.attempt += 1;
                shard.worker = Some(worker_id.to_string());
                job.running += 1;
                if job.state == READY {
                    job.state = RUNNING;
                }
                changes.push(Change::Assigned {
                    shard: shard_id.clone(),
                    attempt: shard.attempt,
                    worker: worker_id.to_string(),
                });
                out.push((shard_id, shard.attempt, jid.clone()));
            }
        }
        if let Some(w) = self.workers.get_mut(worker_id) {
            for (s, _, _) in &out {
                w.running.insert(s.clone());
            }
        }
        let sweeps: HashSet<String> = out
            .iter()
            .filter_map(|(_, _, j)| self.jobs.get(j).map(|j| j.sweep_id.clone()))
            .collect();
        for s in sweeps {
            let sweep = self.sweeps.get_mut(&s).expect("sweep of a job exists");
            if sweep.state == READY {
                sweep.state = RUNNING;
                changes.push(Change::Sweep {
                    sweep: s,
                    state: RUNNING,
                    error: String::new(),
                });
            }
        }
        out
    }

    /// Is (shard, attempt) the current running attempt?
    pub fn fence(&self, shard_id: &str, attempt: u32) -> Verdict {
        let Some(shard) = self.shards.get(shard_id) else {
            return Verdict::Refused(format!("unknown shard {shard_id}"));
        };
        match shard.state {
            RUNNING if shard.attempt == attempt => Verdict::Accepted,
            SUCCEEDED if shard.attempt == attempt => Verdict::Duplicate,
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
        attempt: u32,
        units: u64,
        seconds: f64,
        changes: &mut Vec<Change>,
    ) -> Verdict {
        let v = self.fence(shard_id, attempt);
        if v != Verdict::Accepted {
            return v;
        }
        let shard = self.shards.get_mut(shard_id).expect("fenced shard exists");
        shard.state = SUCCEEDED;
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
        if job.done as usize == job.shards.len() && !terminal(job.state) {
            job.state = SUCCEEDED;
            changes.push(Change::Job {
                job: job_id.clone(),
                state: SUCCEEDED,
                error: String::new(),
            });
            let dependents = job.dependents.clone();
            for d in dependents {
                let ready = {
                    let dj = &self.jobs[&d];
                    dj.state == BLOCKED
                        && dj
                            .depends_on
                            .iter()
                            .all(|x| self.jobs.get(x).is_some_and(|x| x.state == SUCCEEDED))
                };
                if ready {
                    changes.push(Change::Unblocked { job: d });
                }
            }
            let sweep = self.jobs[&job_id].sweep_id.clone();
            self.check_sweep(&sweep, changes);
        }
        Verdict::Accepted
    }

    /// After the store made an unblocked job's specs complete: queue its shards.
    pub fn mark_ready(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.state != BLOCKED {
            return;
        }
        job.state = READY;
        for s in &job.shards {
            if let Some(shard) = self.shards.get_mut(s) {
                if shard.state == BLOCKED || shard.state == READY {
                    shard.state = READY;
                    job.ready.push_back(s.clone());
                }
            }
        }
    }

    /// A failure report for (shard, attempt).
    pub fn fail(
        &mut self,
        shard_id: &str,
        attempt: u32,
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
        if let Some(w) = shard.worker.take().and_then(|w| self.workers.get_mut(&w)) {
            w.running.remove(shard_id);
        }
        let job_id = shard.job_id.clone();
        let sweep_id = self.jobs[&job_id].sweep_id.clone();
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
            shard.state = READY;
            changes.push(Change::Requeued {
                shard: shard_id.to_string(),
                attempt,
                outcome: format!("{what} failure: {message}"),
                task_failures: shard.task_failures,
                infra_failures: shard.infra_failures,
            });
            if !terminal(job.state) {
                // Retries go to the front: the job should not finish without them.
                job.ready.push_front(shard_id.to_string());
            }
            return Verdict::Accepted;
        }
        shard.state = FAILED;
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
    fn fail_job(&mut self, job_id: &str, error: &str, changes: &mut Vec<Change>) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if terminal(job.state) {
            return;
        }
        job.state = FAILED;
        job.error = error.to_string();
        job.ready.clear();
        changes.push(Change::Job {
            job: job_id.to_string(),
            state: FAILED,
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
    fn check_sweep(&mut self, sweep_id: &str, changes: &mut Vec<Change>) {
        let Some(sweep) = self.sweeps.get(sweep_id) else {
            return;
        };
        if terminal(sweep.state) {
            return;
        }
        let jobs: Vec<&JobMem> = sweep.jobs.iter().filter_map(|j| self.jobs.get(j)).collect();
        if !jobs.iter().all(|j| terminal(j.state)) {
            return;
        }
        let failed: Vec<&&JobMem> = jobs.iter().filter(|j| j.state == FAILED).collect();
        let (state, error) = if failed.is_empty() {
            (SUCCEEDED, String::new())
        } else {
            (
                FAILED,
                format!(
                    "{} of {} jobs failed; first: {}: {}",
                    failed.len(),
                    jobs.len(),
                    failed[0].label,
                    failed[0].error
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
            let attempt = self.shards.get(&s).map(|s| s.attempt).unwrap_or(0);
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
    ) -> Vec<(String, u32, String)> {
        let mut running = Vec::new();
        let Some(sweep) = self.sweeps.get(sweep_id) else {
            return running;
        };
        if terminal(sweep.state) {
            return running;
        }
        for jid in sweep.jobs.clone() {
            let job = self.jobs.get_mut(&jid).expect("job of a sweep exists");
            if terminal(job.state) {
                continue;
            }
            job.state = CANCELLED;
            job.ready.clear();
            changes.push(Change::Job {
                job: jid.clone(),
                state: CANCELLED,
                error: "cancelled".into(),
            });
            for sid in job.shards.clone() {
                let shard = self.shards.get_mut(&sid).expect("shard of a job exists");
                if terminal(shard.state) {
                    continue;
                }
                if shard.state == RUNNING {
                    if let Some(w) = shard.worker.take() {
                        if let Some(wm) = self.workers.get_mut(&w) {
                            wm.running.remove(&sid);
                        }
                        running.push((sid.clone(), shard.attempt, w));
                    }
                }
                shard.state = CANCELLED;
                changes.push(Change::ShardCancelled { shard: sid });
            }
        }
        let sweep = self.sweeps.get_mut(sweep_id).expect("checked above");
        sweep.state = CANCELLED;
        sweep.error = "cancelled".into();
        changes.push(Change::Sweep {
            sweep: sweep_id.to_string(),
            state: CANCELLED,
            error: "cancelled".into(),
        });
        running
    }

    /// Workers waiting for work (free slots announced, none given yet).
    pub fn waiting_workers(&self) -> Vec<String> {
        let mut w: Vec<&WorkerMem> = self
            .workers
            .values()
            .filter(|w| w.connected && w.waiting > 0)
            .collect();
        // Faster workers first.
        w.sort_by(|a, b| {
            b.units_per_second
                .unwrap_or(0.0)
                .total_cmp(&a.units_per_second.unwrap_or(0.0))
        });
        w.into_iter().map(|w| w.id.clone()).collect()
    }

    /// Is there a shard anyone could be given now?
    pub fn has_ready_work(&self) -> bool {
        self.order.iter().any(|s| {
            self.sweeps.get(s).is_some_and(|s| {
                !terminal(s.state)
                    && s.jobs
                        .iter()
                        .any(|j| self.jobs.get(j).is_some_and(|j| !j.ready.is_empty()))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::Capabilities;

    fn sweep(s: &mut Scheduler, id: &str, retries: (u32, u32)) {
        s.add_sweep(SweepMem {
            id: id.into(),
            seq: 1,
            name: id.into(),
            state: READY,
            error: String::new(),
            created_ms: 0,
            updated_ms: 0,
            jobs: Vec::new(),
            retry_task: retries.0,
            retry_infra: retries.1,
        });
    }

    fn job(id: &str, model: &str, shards: usize, deps: &[&str]) -> NewJob {
        NewJob {
            id: id.into(),
            seq: 0,
            kind: "noop".into(),
            label: id.into(),
            model: model.into(),
            state: if deps.is_empty() { READY } else { BLOCKED },
            error: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            shards: (0..shards)
                .map(|i| NewShard {
                    id: format!("{id}.s{i}"),
                    state: if deps.is_empty() { READY } else { BLOCKED },
                    attempt: 0,
                    task_failures: 0,
                    infra_failures: 0,
                    units: 1,
                })
                .collect(),
        }
    }

    fn worker(s: &mut Scheduler, id: &str, loaded: &[&str], slots: u32) {
        let caps = Capabilities {
            models_loaded: loaded.iter().map(|m| m.to_string()).collect(),
            slots,
            ..Default::default()
        };
        s.connect(WorkerMem::new(id, caps, 1));
    }

    #[test]
    fn workers_get_shards_of_models_they_have_loaded_first() {
        let mut s = Scheduler::new();
        sweep(&mut s, "sw", (0, 0));
        s.add_job("sw", job("a", "smollm2", 2, &[]));
        s.add_job("sw", job("b", "qwen", 2, &[]));
        worker(&mut s, "w1", &["qwen"], 1);
        let mut ch = Vec::new();
        let got = s.pick("w1", 3, &mut ch);
        let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(ids, ["b.s0", "b.s1", "a.s0"]);
        assert_eq!(got[0].1, 1, "first attempt is 1");
        assert_eq!(
            ch.len(),
            4,
            "three assignments and the sweep starting: {ch:?}"
        );
    }

    #[test]
    fn fencing_refuses_superseded_attempts_and_ignores_duplicates() {
        let mut s = Scheduler::new();
        sweep(&mut s, "sw", (0, 5));
        s.add_job("sw", job("a", "m", 1, &[]));
        worker(&mut s, "w1", &[], 1);
        worker(&mut s, "w2", &[], 1);
        let mut ch = Vec::new();
        let (shard, first, _) = s.pick("w1", 1, &mut ch).remove(0);
        // w1 vanishes; the shard goes to w2 under attempt 2.
        assert!(s.drop_worker("w1", None, "stream dropped", &mut ch));
        let (_, second, _) = s.pick("w2", 1, &mut ch).remove(0);
        assert_eq!(second, first + 1);
        assert!(
            matches!(s.succeed(&shard, first, 1, 1.0, &mut ch), Verdict::Refused(r) if r.contains("superseded"))
        );
        assert_eq!(
            s.succeed(&shard, second, 1, 1.0, &mut ch),
            Verdict::Accepted
        );
        assert_eq!(
            s.succeed(&shard, second, 1, 1.0, &mut ch),
            Verdict::Duplicate
        );
        assert_eq!(s.sweeps["sw"].state, SUCCEEDED);
    }

    #[test]
    fn task_and_infrastructure_failures_have_separate_budgets() {
        let mut s = Scheduler::new();
        sweep(&mut s, "sw", (1, 2));
        s.add_job("sw", job("a", "m", 1, &[]));
        s.add_job("sw", job("b", "m", 1, &["a"]));
        worker(&mut s, "w", &[], 1);
        let mut ch = Vec::new();
        let attempt = |s: &mut Scheduler, ch: &mut Vec<Change>| s.pick("w", 1, ch).remove(0).1;
        // Two infrastructure failures and one task failure: still within both budgets.
        for kind in [
            FailureKind::Infrastructure,
            FailureKind::Task,
            FailureKind::Infrastructure,
        ] {
            let a = attempt(&mut s, &mut ch);
            assert_eq!(s.fail("a.s0", a, kind, "x", &mut ch), Verdict::Accepted);
            assert_eq!(s.shards["a.s0"].state, READY);
        }
        // A second task failure is over the task budget: the job fails, and b with it.
        let a = attempt(&mut s, &mut ch);
        s.fail("a.s0", a, FailureKind::Task, "bad case file", &mut ch);
        assert_eq!(s.shards["a.s0"].state, FAILED);
        assert_eq!(s.jobs["a"].state, FAILED);
        assert_eq!(s.jobs["b"].state, FAILED);
        assert!(s.jobs["b"].error.contains("depends on job a"));
        assert_eq!(s.sweeps["sw"].state, FAILED);
        assert!(
            s.sweeps["sw"].error.contains("bad case file"),
            "{}",
            s.sweeps["sw"].error
        );
    }

    #[test]
    fn dependents_unblock_when_their_jobs_succeed() {
        let mut s = Scheduler::new();
        sweep(&mut s, "sw", (0, 0));
        s.add_job("sw", job("train", "m", 1, &[]));
        s.add_job("sw", job("eval", "m", 2, &["train"]));
        worker(&mut s, "w", &[], 4);
        let mut ch = Vec::new();
        let got = s.pick("w", 4, &mut ch);
        assert_eq!(got.len(), 1, "eval waits for train");
        s.succeed("train.s0", got[0].1, 1, 1.0, &mut ch);
        assert!(ch.contains(&Change::Unblocked { job: "eval".into() }));
        assert!(
            s.pick("w", 4, &mut ch).is_empty(),
            "not ready until the store finalised it"
        );
        s.mark_ready("eval");
        assert_eq!(s.pick("w", 4, &mut ch).len(), 2);
    }

    #[test]
    fn slow_workers_leave_the_tail_to_faster_idle_ones() {
        let mut s = Scheduler::new();
        sweep(&mut s, "sw", (0, 0));
        s.add_job("sw", job("a", "m", 2, &[]));
        worker(&mut s, "fast", &[], 1);
        worker(&mut s, "slow", &[], 1);
        s.workers.get_mut("fast").unwrap().units_per_second = Some(10.0);
        s.workers.get_mut("slow").unwrap().units_per_second = Some(1.0);
        let mut ch = Vec::new();
        // Two shards left, one idle worker 10x faster: the slow one may take one.
        assert_eq!(s.pick("slow", 1, &mut ch).len(), 1);
        // One left, the fast one idle: the slow one waits.
        assert!(s.pick("slow", 1, &mut ch).is_empty());
        assert_eq!(s.pick("fast", 1, &mut ch).len(), 1);
    }
}
