//! The coordinator's core: the scheduler's memory, the store, the artifact folder and the
//! live worker streams, glued so that every decision is durable before anyone hears of it.
//!
//! The pattern of every operation: lock the scheduler, decide (it returns [`Change`]s),
//! queue the changes to the store *while still holding the lock* (so the database sees them
//! in the same order as memory), unlock, wait for the commit, then tell workers and watchers.
//! A worker is therefore never given a shard, nor a result acknowledged, that a crash could
//! take back.
//!
//! Where leases expire: [`Core::reap`] drops workers that missed heartbeats; the registry
//! watch (`server.rs`) drops workers whose etcd key vanished; a dropped stream drops its
//! worker (`service.rs`). All three requeue the worker's running shards as infrastructure
//! failures.

mod rounds;
mod sweeps;
mod work;

use crate::artifacts::ArtifactStore;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::plan::{self, FileEntry, JobMeta, PlannedJob};
use crate::scheduler::{
    Change, FailureKind, JobHead, NewJob, NewShard, Scheduler, SweepMem, Verdict, WorkerMem,
};
use crate::store::{self, now_ms, state::*, stored, Store, StoreError, StoreResult};
use crate::sweep::{Retries, Sweep};
pub use crate::writes::{apply, insert_shards, ResultRow};
use flotilla_contract::{Attempt, JobKind, ShardOutput, ShardSpec};
use flotilla_proto::v1 as pb;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

/// Work decided and queued, finishing after the commit.
pub type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The outgoing half of a worker's Work stream.
pub type WorkerTx = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, Status>>;

/// What is stored with a sweep besides its YAML.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    pub retries: Retries,
    /// The parsed sweep; None for no-op sweeps.
    pub sweep: Option<Sweep>,
}

pub struct Core {
    pub id: String,
    sched: Mutex<Scheduler>,
    senders: Mutex<HashMap<String, (u64, WorkerTx)>>,
    pub store: Store,
    pub artifacts: ArtifactStore,
    pub data_dir: PathBuf,
    changed: watch::Sender<u64>,
    kick: Notify,
    /// Distributed training jobs with a round to apply (`rounds.rs`).
    rounds_tx: mpsc::UnboundedSender<String>,
    rounds_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    next_connection: AtomicU64,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<crate::metrics::CoordinatorMetrics>,
    /// Each sweep's trace context (W3C traceparent of its submission), while traces are
    /// exported; in memory only (after a restart, assignments start traces of their own).
    traces: Mutex<HashMap<String, String>>,
    /// When this coordinator started (the dashboard's uptime).
    pub started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not wedge the coordinator.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    /// Open the data folder and rebuild memory from the database. Attempts that were running
    /// when the previous coordinator stopped are requeued; their late results are refused.
    pub async fn open(
        data_dir: &Path,
        heartbeat: Duration,
        heartbeat_timeout: Duration,
    ) -> CoordinatorResult<Arc<Core>> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            CoordinatorError::Internal(format!("--data-dir {}: {e}", data_dir.display()))
        })?;
        let metrics = Arc::new(crate::metrics::CoordinatorMetrics::new());
        let store = Store::open_with(
            &data_dir.join("coordinator.db"),
            Some(metrics.sqlite_commit_seconds.clone()),
        )?;
        let artifacts = ArtifactStore::open(&data_dir.join("artifacts"))?;
        let (changed, _) = watch::channel(0);
        let (rounds_tx, rounds_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            id: format!("coordinator-{}-{}", std::process::id(), now_ms()),
            sched: Mutex::new(Scheduler::new()),
            senders: Mutex::new(HashMap::new()),
            store,
            artifacts,
            data_dir: data_dir.to_path_buf(),
            changed,
            kick: Notify::new(),
            rounds_tx,
            rounds_rx: Mutex::new(Some(rounds_rx)),
            next_connection: AtomicU64::new(1),
            heartbeat,
            heartbeat_timeout,
            metrics,
            traces: Mutex::new(HashMap::new()),
            started: Instant::now(),
        });
        core.load().await?;
        Ok(core)
    }

    async fn load(&self) -> CoordinatorResult<()> {
        type Loaded = (
            Vec<(SweepMem, String)>,
            Vec<(String, NewJob)>,
            usize,
            Vec<(String, Option<pb::TrainProgress>)>,
        );
        let (sweeps, jobs, requeued, training): Loaded = self
            .store
            .call(|c| {
                // Attempts cut short by the restart: back to the queue.
                let requeued = c.execute(
                    "UPDATE attempts SET ended_ms = ?1, outcome = 'coordinator restarted'
                     WHERE ended_ms IS NULL",
                    params![now_ms()],
                )?;
                c.execute(
                    "UPDATE shards SET state = ?1, worker_id = '' WHERE state = ?2",
                    params![ShardState::Ready.code(), ShardState::Running.code()],
                )?;
                let mut stmt = c.prepare(
                    "SELECT id, seq, name, state, error, created_ms, updated_ms, sweep_json
                     FROM sweeps ORDER BY seq",
                )?;
                let sweeps = stmt
                    .query_map([], |r| {
                        let json: String = r.get(7)?;
                        Ok((
                            SweepMem {
                                id: r.get(0)?,
                                seq: r.get(1)?,
                                name: r.get(2)?,
                                state: stored(r, 3, SweepState::from_code)?,
                                error: r.get(4)?,
                                created_ms: r.get(5)?,
                                updated_ms: r.get(6)?,
                                jobs: Vec::new(),
                                retry_task: 0,
                                retry_infra: 0,
                            },
                            json,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut shards: HashMap<String, Vec<NewShard>> = HashMap::new();
                let mut stmt = c.prepare(
                    "SELECT id, job_id, state, attempt, task_failures, infra_failures, units,
                            spec_json, files_json
                     FROM shards ORDER BY job_id, seq",
                )?;
                for row in stmt.query_map([], |r| {
                    let spec: String = r.get(7)?;
                    let files: String = r.get(8)?;
                    let files: Vec<serde_json::Value> =
                        serde_json::from_str(&files).unwrap_or_default();
                    let size = |key: &str| {
                        files
                            .iter()
                            .find(|f| f["path"].as_str() == Some(key))
                            .and_then(|f| f["size"].as_u64())
                    };
                    Ok((
                        r.get::<_, String>(1)?,
                        NewShard {
                            prompt_tokens: crate::scheduler::memory::prompt_tokens(&spec, &size),
                            id: r.get(0)?,
                            state: stored(r, 2, ShardState::from_code)?,
                            attempt: Attempt(r.get::<_, i64>(3)? as u32),
                            task_failures: r.get::<_, i64>(4)? as u32,
                            infra_failures: r.get::<_, i64>(5)? as u32,
                            units: r.get::<_, i64>(6)? as u64,
                            prefer: None,
                        },
                    ))
                })? {
                    let (job, shard) = row?;
                    shards.entry(job).or_default().push(shard);
                }
                let mut stmt = c.prepare(
                    "SELECT j.id, j.sweep_id, j.seq, j.kind, j.label, j.model, j.state,
                            j.depends_on, j.error
                     FROM jobs j JOIN sweeps s ON s.id = j.sweep_id ORDER BY s.seq, j.seq",
                )?;
                let jobs = stmt
                    .query_map([], |r| {
                        let deps: String = r.get(7)?;
                        Ok((
                            r.get::<_, String>(1)?,
                            NewJob {
                                head: JobHead {
                                    id: r.get(0)?,
                                    seq: r.get(2)?,
                                    kind: r.get::<_, String>(3)?.parse().map_err(
                                        |e: flotilla_contract::Error| {
                                            rusqlite::Error::FromSqlConversionFailure(
                                                3,
                                                rusqlite::types::Type::Text,
                                                Box::new(e),
                                            )
                                        },
                                    )?,
                                    label: r.get(4)?,
                                    model: r.get(5)?,
                                    state: stored(r, 6, JobState::from_code)?,
                                    error: r.get(8)?,
                                    depends_on: serde_json::from_str(&deps).unwrap_or_default(),
                                },
                                shards: Vec::new(),
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let jobs = jobs
                    .into_iter()
                    .map(|(s, mut j)| {
                        j.shards = shards.remove(&j.head.id).unwrap_or_default();
                        (s, j)
                    })
                    .collect::<Vec<_>>();
                // Where each distributed training run stands, for `sweep watch`.
                let mut training = Vec::new();
                for (_, j) in &jobs {
                    if j.head.kind == JobKind::TrainRound {
                        // A display figure: a run whose rows cannot be read still loads.
                        let p = crate::training::progress(c, &j.head.id).unwrap_or_else(|e| {
                            tracing::warn!(job = %j.head.id, error = %e, "training progress");
                            None
                        });
                        training.push((j.head.id.clone(), p));
                    }
                }
                Ok((sweeps, jobs, requeued, training))
            })
            .await?;
        let mut s = lock(&self.sched);
        for (mut sweep, json) in sweeps {
            if let Ok(rec) = serde_json::from_str::<SweepRecord>(&json) {
                sweep.retry_task = rec.retries.task;
                sweep.retry_infra = rec.retries.infrastructure;
            }
            s.add_sweep(sweep);
        }
        for (sweep, job) in jobs {
            s.add_job(&sweep, job);
        }
        for (job, progress) in training {
            s.set_training(&job, progress);
        }
        if requeued > 0 {
            tracing::info!(requeued, "attempts running before the restart are requeued");
        }
        // Rounds whose shards all succeeded before the restart but were not applied.
        for job in s.rounds_pending() {
            let _ = self.rounds_tx.send(job);
        }
        Ok(())
    }

    /// Queue the changes (call with the scheduler locked).
    fn persist(
        &self,
        changes: Vec<Change>,
        results: Vec<ResultRow>,
    ) -> impl std::future::Future<Output = StoreResult<()>> {
        self.store.submit(move |c| apply(c, &changes, &results))
    }

    /// After a commit: queue jobs whose specs are now complete, wake waiting workers and
    /// watchers.
    fn committed(&self, changes: &[Change]) {
        self.metrics.record(changes);
        let mut wake = false;
        {
            let mut s = lock(&self.sched);
            for ch in changes {
                match ch {
                    Change::Unblocked { job } => {
                        s.mark_ready(job);
                        wake = true;
                    }
                    Change::Requeued { .. } => wake = true,
                    Change::RoundReady { job } => {
                        let _ = self.rounds_tx.send(job.clone());
                    }
                    Change::Sweep { sweep, .. } => {
                        if let Some(m) = s.sweeps.get_mut(sweep) {
                            m.updated_ms = now_ms();
                        }
                    }
                    _ => {}
                }
            }
        }
        if wake {
            self.kick.notify_one();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// The metrics exposition, gauges read now.
    pub fn render_metrics(&self) -> String {
        let s = lock(&self.sched);
        self.metrics.render(&s)
    }

    /// Wake the dispatcher (new work may be ready).
    /// The last failed attempts, oldest first.
    pub fn recent_failures(&self) -> Vec<crate::scheduler::FailureRecord> {
        lock(&self.sched).recent_failures.iter().cloned().collect()
    }

    /// Remember the trace a sweep's submission belongs to.
    pub fn set_sweep_trace(&self, sweep_id: &str, traceparent: String) {
        lock(&self.traces).insert(sweep_id.to_string(), traceparent);
    }

    /// The trace context a sweep's assignments continue, if its submission was traced.
    pub fn sweep_trace(&self, sweep_id: &str) -> Option<String> {
        lock(&self.traces).get(sweep_id).cloned()
    }

    pub fn wake(&self) {
        self.kick.notify_one();
    }

    /// A receiver that changes whenever any sweep does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A sweep name as an id prefix: lower-case letters, digits and dashes.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "sweep".into()
    } else {
        s.chars().take(40).collect()
    }
}

pub fn file_ref(f: FileEntry) -> pb::FileRef {
    pb::FileRef {
        path: f.path,
        artifact: Some(pb::ArtifactRef {
            sha256: f.sha256,
            size: f.size,
        }),
    }
}

fn status_of(s: &Scheduler, sweep_id: &str) -> Option<pb::SweepStatus> {
    let sweep = s.sweeps.get(sweep_id)?;
    let mut st = pb::SweepStatus {
        sweep_id: sweep.id.clone(),
        name: sweep.name.clone(),
        state: sweep.state.to_wire() as i32,
        error: sweep.error.clone(),
        created_unix_ms: sweep.created_ms,
        updated_unix_ms: sweep.updated_ms,
        ..Default::default()
    };
    for jid in &sweep.jobs {
        let j = &s.jobs[jid];
        let total = j.shards.len() as u32;
        st.shards_total += total;
        st.shards_done += j.done;
        st.shards_running += j.running;
        st.shards_failed += j.failed;
        st.jobs.push(pb::JobStatus {
            job_id: j.head.id.clone(),
            kind: j.head.kind.as_str().into(),
            label: j.head.label.clone(),
            state: pb::JobState::from(j.head.state) as i32,
            shards_total: total,
            shards_done: j.done,
            shards_running: j.running,
            shards_failed: j.failed,
            depends_on: j.head.depends_on.clone(),
            error: j.head.error.clone(),
            training: j.training,
        });
    }
    Some(st)
}
