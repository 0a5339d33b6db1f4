//! The scheduler: the in-memory view of every live sweep, job, shard and worker, and the
//! decisions — which shard goes to which worker, which result is accepted, what happens after
//! a failure. It does no I/O: every operation returns the [`Change`]s to make durable, and the
//! core (`core/`) writes them to the store before telling anyone.
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

pub mod memory;
mod outcomes;

use crate::store::state::*;
use flotilla_contract::{Attempt, JobKind};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// A state change to make durable, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Assigned {
        shard: String,
        attempt: Attempt,
        worker: String,
    },
    Succeeded {
        shard: String,
        attempt: Attempt,
    },
    /// Back in the queue after a failure of `attempt`.
    Requeued {
        shard: String,
        attempt: Attempt,
        outcome: String,
        task_failures: u32,
        infra_failures: u32,
    },
    ShardFailed {
        shard: String,
        attempt: Attempt,
        error: String,
        task_failures: u32,
        infra_failures: u32,
    },
    ShardCancelled {
        shard: String,
    },
    Job {
        job: String,
        state: JobState,
        error: String,
    },
    /// Every job this one depends on succeeded: complete its shard specs from their results
    /// and make it ready (in the same transaction).
    Unblocked {
        job: String,
    },
    Sweep {
        sweep: String,
        state: SweepState,
        error: String,
    },
    /// Every shard of a distributed training job's current round succeeded: after the commit
    /// the coordinator applies the round (nothing to write here).
    RoundReady {
        job: String,
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
    pub state: SweepState,
    pub error: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub jobs: Vec<String>,
    pub retry_task: u32,
    pub retry_infra: u32,
}

/// What a job is, as planned and as stored: the part of a job that [`NewJob`] hands to the
/// scheduler and [`JobMem`] keeps.
#[derive(Debug, Clone)]
pub struct JobHead {
    pub id: String,
    pub seq: i64,
    pub kind: JobKind,
    pub label: String,
    /// The model the job's shards load (preference for workers that have it loaded).
    pub model: String,
    pub state: JobState,
    pub error: String,
    pub depends_on: Vec<String>,
}

/// A job while the coordinator runs: its head, and where its shards stand.
#[derive(Debug, Clone)]
pub struct JobMem {
    pub head: JobHead,
    pub sweep_id: String,
    pub dependents: Vec<String>,
    pub shards: Vec<String>,
    pub ready: VecDeque<String>,
    pub done: u32,
    pub running: u32,
    pub failed: u32,
    /// A distributed training job: where its rounds stand (set as rounds are applied).
    pub training: Option<flotilla_proto::v1::TrainProgress>,
    /// The longest prompt of its shards, estimated in tokens (a judge job takes its generate
    /// job's); 0 when not known.
    pub prompt_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct ShardMem {
    pub id: String,
    pub job_id: String,
    pub state: ShardState,
    pub attempt: Attempt,
    pub worker: Option<String>,
    pub task_failures: u32,
    pub infra_failures: u32,
    pub units: u64,
    pub prefer: Option<String>,
    /// Its longest prompt, estimated in tokens (0: not known).
    pub prompt_tokens: u64,
}

impl ShardMem {
    /// A shard of `job_id` as planned or stored, not running anywhere.
    pub fn new(job_id: &str, s: NewShard) -> Self {
        Self {
            id: s.id,
            job_id: job_id.to_string(),
            state: s.state,
            attempt: s.attempt,
            worker: None,
            task_failures: s.task_failures,
            infra_failures: s.infra_failures,
            units: s.units,
            prefer: s.prefer,
            prompt_tokens: s.prompt_tokens,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerMem {
    pub id: String,
    pub capabilities: flotilla_proto::v1::Capabilities,
    pub models_loaded: Vec<String>,
    /// Pushed models (`coordinator:NAME`) on its disk, by its last ask.
    pub models_held: Vec<String>,
    pub running: HashSet<String>,
    pub completed: u64,
    /// Exponentially weighted units per second over its results; None until one arrives.
    pub units_per_second: Option<f64>,
    /// Prefill speed its engine measured (tokens/s), by its last ask; None until it has one.
    pub prefill_tokens_per_s: Option<f64>,
    pub last_seen: Instant,
    pub last_seen_unix_ms: i64,
    /// Free slots announced by its last ask and not filled yet.
    pub waiting: u32,
    /// Free memory by its last ask (or its capabilities); 0 when unknown.
    pub memory_free_bytes: u64,
    /// Why it takes no work now, by its last ask (`--when-idle`); empty when it does.
    pub paused: String,
    pub connected: bool,
    /// Which connection (stream) this is; a reconnect gets a new one.
    pub connection: u64,
}

impl WorkerMem {
    pub fn new(id: &str, capabilities: flotilla_proto::v1::Capabilities, connection: u64) -> Self {
        Self {
            id: id.to_string(),
            models_loaded: capabilities.models_loaded.clone(),
            models_held: Vec::new(),
            memory_free_bytes: capabilities.memory_free_bytes,
            paused: String::new(),
            capabilities,
            running: HashSet::new(),
            completed: 0,
            units_per_second: None,
            prefill_tokens_per_s: None,
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
    pub head: JobHead,
    pub shards: Vec<NewShard>,
}

#[derive(Debug, Clone)]
pub struct NewShard {
    pub id: String,
    pub state: ShardState,
    pub attempt: Attempt,
    pub task_failures: u32,
    pub infra_failures: u32,
    pub units: u64,
    /// The worker this shard is sized for (a sync training share); others leave it to that
    /// worker while it is connected with a free slot. Kept in memory only.
    pub prefer: Option<String>,
    /// Its longest prompt, estimated in tokens ([`memory::prompt_tokens`]; 0: not known).
    pub prompt_tokens: u64,
}

#[derive(Default)]
pub struct Scheduler {
    pub sweeps: HashMap<String, SweepMem>,
    /// Live sweeps in submission order.
    pub order: Vec<String>,
    pub jobs: HashMap<String, JobMem>,
    pub shards: HashMap<String, ShardMem>,
    pub workers: HashMap<String, WorkerMem>,
    /// The last [`RECENT_FAILURES`] failed attempts, oldest first (the dashboard's list).
    pub recent_failures: std::collections::VecDeque<FailureRecord>,
}

/// How many failed attempts the scheduler remembers for the dashboard.
pub const RECENT_FAILURES: usize = 100;

/// One failed attempt, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub at_unix_ms: i64,
    pub sweep_id: String,
    pub shard_id: String,
    pub attempt: u32,
    pub worker_id: String,
    pub kind: FailureKind,
    pub message: String,
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
        let head = job.head;
        let mut mem = JobMem {
            head: head.clone(),
            sweep_id: sweep_id.to_string(),
            dependents: Vec::new(),
            shards: Vec::new(),
            ready: VecDeque::new(),
            done: 0,
            running: 0,
            failed: 0,
            training: None,
            prompt_tokens: 0,
        };
        for s in job.shards {
            match s.state {
                ShardState::Succeeded => mem.done += 1,
                // Only a round closed at its timeout cancels shards of a live job: they count
                // as settled (scheduler::outcomes::close_round_early).
                ShardState::Cancelled if !head.state.is_final() => mem.done += 1,
                ShardState::Failed => mem.failed += 1,
                ShardState::Ready if !head.state.is_final() && head.state != JobState::Blocked => {
                    mem.ready.push_back(s.id.clone())
                }
                _ => {}
            }
            mem.shards.push(s.id.clone());
            mem.prompt_tokens = mem.prompt_tokens.max(s.prompt_tokens);
            self.shards.insert(s.id.clone(), ShardMem::new(&head.id, s));
        }
        // A job whose shards say nothing (a judge job, specified once its answers exist)
        // reads what the jobs before it read.
        if mem.prompt_tokens == 0 {
            mem.prompt_tokens = head
                .depends_on
                .iter()
                .filter_map(|d| self.jobs.get(d))
                .map(|d| d.prompt_tokens)
                .max()
                .unwrap_or(0);
        }
        for d in &head.depends_on {
            if let Some(dep) = self.jobs.get_mut(d) {
                dep.dependents.push(head.id.clone());
            }
        }
        if let Some(s) = self.sweeps.get_mut(sweep_id) {
            s.jobs.push(head.id.clone());
        }
        self.jobs.insert(head.id, mem);
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

    /// Whether another connected worker with a free slot should take document-length prompts
    /// before `worker`: it prefills at least twice as fast, by both workers' measured prefill
    /// speeds; while either has not measured one, when it is a GPU worker and `worker` is not.
    fn prefills_faster_idle(&self, worker: &WorkerMem) -> bool {
        self.workers.values().any(|w| {
            w.connected
                && w.id != worker.id
                && (w.running.len() as u32) < w.slots()
                && match (w.prefill_tokens_per_s, worker.prefill_tokens_per_s) {
                    (Some(theirs), Some(mine)) => theirs >= 2.0 * mine,
                    _ => memory::is_gpu(w) && !memory::is_gpu(worker),
                }
        })
    }

    /// Up to `n` shards for `worker_id`: `(shard, attempt, job)`. The shards are marked
    /// running under their new attempt numbers.
    pub fn pick(
        &mut self,
        worker_id: &str,
        n: u32,
        changes: &mut Vec<Change>,
    ) -> Vec<(String, Attempt, String)> {
        let mut out = Vec::new();
        let Some(worker) = self.workers.get(worker_id) else {
            return out;
        };
        if !worker.connected || n == 0 {
            return out;
        }
        let loaded: HashSet<&str> = worker.models_loaded.iter().map(String::as_str).collect();
        let held: HashSet<&str> = worker.models_held.iter().map(String::as_str).collect();
        let faster = self.faster_idle(worker);
        let documents_elsewhere = self.prefills_faster_idle(worker);
        let mut budget = worker.memory_free_bytes;
        let mut picked_models: HashSet<String> = HashSet::new();
        // Candidate jobs in sweep and DAG order; those with the model loaded first, then
        // those whose pushed model is on its disk (nothing to fetch).
        let mut candidates: Vec<(bool, bool, usize, String)> = Vec::new();
        let mut i = 0;
        for sid in &self.order {
            let Some(sweep) = self.sweeps.get(sid) else {
                continue;
            };
            if sweep.state.is_final() {
                continue;
            }
            for jid in &sweep.jobs {
                let job = &self.jobs[jid];
                if job.ready.is_empty()
                    || job.head.state.is_final()
                    || job.head.state == JobState::Blocked
                {
                    continue;
                }
                // Tail rule: leave the last shards to the faster idle workers (not a training
                // round's: its shares are sized for their workers already).
                if faster > 0 && job.head.kind != JobKind::TrainRound && job.ready.len() <= faster {
                    continue;
                }
                if documents_elsewhere && job.prompt_tokens >= memory::DOCUMENT_TOKENS {
                    continue;
                }
                let model = job.head.model.as_str();
                candidates.push((
                    !loaded.contains(model),
                    !held.contains(model),
                    i,
                    jid.clone(),
                ));
                i += 1;
            }
        }
        candidates.sort();
        // Shards sized for another worker that can take them now are left to it (only
        // training rounds size shards for workers).
        let kept: HashSet<String> = candidates
            .iter()
            .filter(|(_, _, _, jid)| self.jobs[jid].head.kind == JobKind::TrainRound)
            .flat_map(|(_, _, _, jid)| self.jobs[jid].ready.iter())
            .filter(|sid| {
                self.shards
                    .get(*sid)
                    .and_then(|s| s.prefer.as_deref())
                    .is_some_and(|p| {
                        p != worker_id
                            && self.workers.get(p).is_some_and(|w| {
                                w.connected && (w.running.len() as u32) < w.slots()
                            })
                    })
            })
            .cloned()
            .collect();
        'jobs: for (_, _, _, jid) in candidates {
            loop {
                if out.len() as u32 >= n {
                    break 'jobs;
                }
                // Memory: the model (unless loaded) and this prompt's KV cache must fit what
                // the worker has free, less what this pick has handed it already.
                let (model, tokens) = {
                    let j = &self.jobs[&jid];
                    (j.head.model.clone(), j.prompt_tokens)
                };
                let need = match self.workers.get(worker_id) {
                    Some(w) if budget > 0 => {
                        memory::need_bytes(w, &model, tokens, picked_models.contains(&model))
                    }
                    _ => None,
                };
                if let Some(need) = need {
                    if need > budget {
                        tracing::debug!(
                            worker = worker_id,
                            job = jid,
                            need,
                            free = budget,
                            "job does not fit the worker's free memory"
                        );
                        break;
                    }
                    budget -= need;
                }
                picked_models.insert(model);
                let job = self.jobs.get_mut(&jid).expect("candidate job exists");
                let Some(at) = job.ready.iter().position(|s| !kept.contains(s)) else {
                    break;
                };
                let Some(shard_id) = job.ready.remove(at) else {
                    break;
                };
                let shard = self.shards.get_mut(&shard_id).expect("queued shard exists");
                if shard.state != ShardState::Ready {
                    continue;
                }
                shard.state = ShardState::Running;
                shard.attempt = shard.attempt.next();
                shard.worker = Some(worker_id.to_string());
                job.running += 1;
                if job.head.state == JobState::Ready {
                    job.head.state = JobState::Running;
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
            if sweep.state == SweepState::Ready {
                sweep.state = SweepState::Running;
                changes.push(Change::Sweep {
                    sweep: s,
                    state: SweepState::Running,
                    error: String::new(),
                });
            }
        }
        out
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
                !s.state.is_final()
                    && s.jobs
                        .iter()
                        .any(|j| self.jobs.get(j).is_some_and(|j| !j.ready.is_empty()))
            })
        })
    }
}

#[cfg(test)]
mod tests;
