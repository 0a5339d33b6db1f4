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

use crate::artifacts::ArtifactStore;
use crate::plan::{self, FileEntry, JobMeta, PlannedJob};
use crate::scheduler::{
    Change, FailureKind, NewJob, NewShard, Scheduler, SweepMem, Verdict, WorkerMem,
};
use crate::store::{self, now_ms, state::*, Store, StoreError, StoreResult};
use crate::sweep::{Retries, Sweep};
pub use crate::writes::{apply, ResultRow};
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
    next_connection: AtomicU64,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not wedge the coordinator.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Core {
    /// Open the data folder and rebuild memory from the database. Attempts that were running
    /// when the previous coordinator stopped are requeued; their late results are refused.
    pub async fn open(
        data_dir: &Path,
        heartbeat: Duration,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Arc<Core>> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| anyhow::anyhow!("--data-dir {}: {e}", data_dir.display()))?;
        let store = Store::open(&data_dir.join("coordinator.db"))?;
        let artifacts = ArtifactStore::open(&data_dir.join("artifacts"))?;
        let (changed, _) = watch::channel(0);
        let core = Arc::new(Core {
            id: format!("coordinator-{}-{}", std::process::id(), now_ms()),
            sched: Mutex::new(Scheduler::new()),
            senders: Mutex::new(HashMap::new()),
            store,
            artifacts,
            data_dir: data_dir.to_path_buf(),
            changed,
            kick: Notify::new(),
            next_connection: AtomicU64::new(1),
            heartbeat,
            heartbeat_timeout,
        });
        core.load().await?;
        Ok(core)
    }

    async fn load(&self) -> anyhow::Result<()> {
        type Loaded = (Vec<(SweepMem, String)>, Vec<(String, NewJob)>, usize);
        let (sweeps, jobs, requeued): Loaded = self
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
                    params![READY, RUNNING],
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
                                state: r.get(3)?,
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
                    "SELECT id, job_id, state, attempt, task_failures, infra_failures, units
                     FROM shards ORDER BY job_id, seq",
                )?;
                for row in stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(1)?,
                        NewShard {
                            id: r.get(0)?,
                            state: r.get(2)?,
                            attempt: r.get::<_, i64>(3)? as u32,
                            task_failures: r.get::<_, i64>(4)? as u32,
                            infra_failures: r.get::<_, i64>(5)? as u32,
                            units: r.get::<_, i64>(6)? as u64,
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
                                id: r.get(0)?,
                                seq: r.get(2)?,
                                kind: r.get(3)?,
                                label: r.get(4)?,
                                model: r.get(5)?,
                                state: r.get(6)?,
                                error: r.get(8)?,
                                depends_on: serde_json::from_str(&deps).unwrap_or_default(),
                                shards: Vec::new(),
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let jobs = jobs
                    .into_iter()
                    .map(|(s, mut j)| {
                        j.shards = shards.remove(&j.id).unwrap_or_default();
                        (s, j)
                    })
                    .collect();
                Ok((sweeps, jobs, requeued))
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
        if requeued > 0 {
            tracing::info!(requeued, "attempts running before the restart are requeued");
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

    /// Wake the dispatcher (new work may be ready).
    pub fn wake(&self) {
        self.kick.notify_one();
    }

    /// A receiver that changes whenever any sweep does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    // ---- workers ------------------------------------------------------------------------

    /// A worker said hello on a new stream; returns its connection number. An older stream of
    /// the same worker is dropped first (its shards requeued).
    pub async fn connect(&self, hello: pb::Hello, tx: WorkerTx) -> Result<u64, Status> {
        if hello.worker_id.trim().is_empty() {
            return Err(Status::invalid_argument("hello.worker_id is empty"));
        }
        let id = hello.worker_id.clone();
        self.disconnect(&id, None, "the worker connected again")
            .await;
        let conn = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let caps = hello.capabilities.unwrap_or_default();
        lock(&self.senders).insert(id.clone(), (conn, tx));
        lock(&self.sched).connect(WorkerMem::new(&id, caps, conn));
        tracing::info!(worker = %id, conn, "worker connected");
        self.changed.send_modify(|v| *v += 1);
        Ok(conn)
    }

    /// Is this still the worker's live stream?
    pub fn is_current(&self, worker: &str, conn: u64) -> bool {
        lock(&self.senders)
            .get(worker)
            .is_some_and(|(c, _)| *c == conn)
    }

    /// Drop a worker's stream (`conn`: only that one; None: whichever is live) and requeue
    /// its running shards.
    pub async fn disconnect(&self, worker: &str, conn: Option<u64>, reason: &str) {
        let fut = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            if !s.drop_worker(worker, conn, reason, &mut changes) {
                return;
            }
            {
                let mut senders = lock(&self.senders);
                if senders
                    .get(worker)
                    .is_some_and(|(c, _)| conn.is_none_or(|x| x == *c))
                {
                    senders.remove(worker);
                }
            }
            tracing::info!(worker, reason, requeued = changes.len(), "worker dropped");
            let fut = self.persist(changes.clone(), Vec::new());
            (fut, changes)
        };
        match fut.0.await {
            Ok(()) => self.committed(&fut.1),
            Err(e) => tracing::error!(error = %e, "cannot record a dropped worker"),
        }
    }

    pub fn touch(&self, worker: &str) {
        lock(&self.sched).touch(worker);
    }

    /// A worker asks for work with `free` slots: assign what there is; remember the rest, so
    /// work that turns up later is pushed to it. The decision is taken now (in the order
    /// messages arrive); the returned future waits for the commit and sends the assignments.
    pub fn ask(
        self: &Arc<Self>,
        worker: &str,
        conn: u64,
        free: u32,
        models_loaded: Vec<String>,
    ) -> Option<Pending<()>> {
        {
            let mut s = lock(&self.sched);
            let w = s.workers.get_mut(worker)?;
            if w.connection != conn {
                return None;
            }
            // Never more than the slots it announced: a confused worker cannot take the queue.
            w.waiting = free.min(w.capabilities.slots.max(1));
            if !models_loaded.is_empty() {
                w.models_loaded = models_loaded;
            }
            s.touch(worker);
        }
        self.assign(worker)
    }

    /// Fill `worker`'s waiting slots: decide now, send after the commit.
    fn assign(self: &Arc<Self>, worker: &str) -> Option<Pending<()>> {
        let (picks, fut, changes, tx) = {
            let mut s = lock(&self.sched);
            let n = s.workers.get(worker)?.waiting;
            let mut changes = Vec::new();
            let picks = s.pick(worker, n, &mut changes);
            if picks.is_empty() {
                return None;
            }
            if let Some(w) = s.workers.get_mut(worker) {
                w.waiting = w.waiting.saturating_sub(picks.len() as u32);
            }
            let kinds: Vec<(String, String)> = picks
                .iter()
                .map(|(_, _, j)| {
                    let job = &s.jobs[j];
                    (job.kind.clone(), job.sweep_id.clone())
                })
                .collect();
            let ids: Vec<String> = picks.iter().map(|p| p.0.clone()).collect();
            let ch = changes.clone();
            let fut = self.store.submit(move |c| {
                apply(c, &ch, &[])?;
                let mut stmt =
                    c.prepare_cached("SELECT spec_json, files_json FROM shards WHERE id = ?1")?;
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    let (spec, files): (String, String) =
                        stmt.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    out.push((spec, files));
                }
                Ok(out)
            });
            let tx = lock(&self.senders).get(worker).map(|(_, tx)| tx.clone());
            (
                picks.into_iter().zip(kinds).collect::<Vec<_>>(),
                fut,
                changes,
                tx,
            )
        };
        let core = self.clone();
        Some(Box::pin(async move {
            let specs = match fut.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record assignments");
                    return;
                }
            };
            core.committed(&changes);
            // A worker gone meanwhile had these shards requeued by its disconnect.
            let Some(tx) = tx else { return };
            for (((shard, attempt, job), (kind, sweep)), (spec, files)) in
                picks.into_iter().zip(specs)
            {
                let files: Vec<FileEntry> = serde_json::from_str(&files).unwrap_or_default();
                let msg = pb::Assignment {
                    shard_id: shard,
                    attempt: attempt.to_string(),
                    job_id: job,
                    sweep_id: sweep,
                    kind,
                    spec_json: spec.into_bytes(),
                    files: files.into_iter().map(file_ref).collect(),
                };
                let _ = tx.send(Ok(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Assign(msg)),
                }));
            }
        }))
    }

    /// Push work to workers that asked and got nothing; runs until the coordinator stops.
    pub async fn dispatch_loop(self: Arc<Self>) {
        loop {
            self.kick.notified().await;
            let waiting = lock(&self.sched).waiting_workers();
            for w in waiting {
                if !lock(&self.sched).has_ready_work() {
                    break;
                }
                if let Some(send) = self.assign(&w) {
                    tokio::spawn(send);
                }
            }
        }
    }

    /// Drop workers that sent nothing for longer than the heartbeat timeout; runs until the
    /// coordinator stops.
    pub async fn reap_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat.max(Duration::from_millis(50)));
        loop {
            tick.tick().await;
            self.reap().await;
        }
    }

    pub async fn reap(&self) {
        let now = Instant::now();
        let late: Vec<(String, u64)> = lock(&self.sched)
            .workers
            .values()
            .filter(|w| w.connected && now.duration_since(w.last_seen) > self.heartbeat_timeout)
            .map(|w| (w.id.clone(), w.connection))
            .collect();
        for (w, conn) in late {
            if let Some((_, tx)) = lock(&self.senders).get(&w) {
                let _ = tx.send(Err(Status::deadline_exceeded(
                    "no heartbeat within the timeout; this stream is closed and its shards requeued",
                )));
            }
            self.disconnect(&w, Some(conn), "missed heartbeats").await;
        }
    }

    /// A result from a worker: fenced now, acknowledged by the returned future after the
    /// commit.
    pub fn result(self: &Arc<Self>, r: pb::ShardResult) -> Pending<pb::Ack> {
        let (id, token) = (r.shard_id.clone(), r.attempt.clone());
        let ack = move |accepted: bool, reason: String| pb::Ack {
            shard_id: id.clone(),
            attempt: token.clone(),
            accepted,
            reason,
        };
        let ready = |a: pb::Ack| -> Pending<pb::Ack> { Box::pin(std::future::ready(a)) };
        let Ok(attempt) = r.attempt.parse::<u32>() else {
            return ready(ack(
                false,
                format!("`{}` is not an attempt token", r.attempt),
            ));
        };
        let mut artifacts = Vec::new();
        for a in &r.artifacts {
            let art = a.artifact.clone().unwrap_or_default();
            if !self.artifacts.exists(&art.sha256) {
                return ready(ack(
                    false,
                    format!(
                        "artifact {} ({}) was not uploaded before the result",
                        art.sha256, a.path
                    ),
                ));
            }
            artifacts.push(FileEntry {
                path: a.path.clone(),
                sha256: art.sha256,
                size: art.size,
            });
        }
        let json = match String::from_utf8(r.result_json.clone()) {
            Ok(j) => j,
            Err(e) => return ready(ack(false, format!("result_json is not UTF-8: {e}"))),
        };
        let row = ResultRow {
            shard: r.shard_id.clone(),
            attempt,
            json,
            artifacts,
            seconds: r.seconds,
            units: r.units,
        };
        let (verdict, fut, changes) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            let v = s.succeed(&r.shard_id, attempt, r.units, r.seconds, &mut changes);
            let fut = (v == Verdict::Accepted).then(|| self.persist(changes.clone(), vec![row]));
            (v, fut, changes)
        };
        self.settle(verdict, fut, changes, Box::new(ack))
    }

    /// A failure report from a worker: decided now, acknowledged after the commit.
    pub fn failure(self: &Arc<Self>, f: pb::ShardFailure) -> Pending<pb::Ack> {
        let shard = f.shard_id.clone();
        let (id, token) = (f.shard_id.clone(), f.attempt.clone());
        let ack = move |accepted: bool, reason: String| pb::Ack {
            shard_id: id.clone(),
            attempt: token.clone(),
            accepted,
            reason,
        };
        let Ok(attempt) = f.attempt.parse::<u32>() else {
            let a = ack(false, format!("`{}` is not an attempt token", f.attempt));
            return Box::pin(std::future::ready(a));
        };
        let kind = if f.kind == pb::FailureKind::Infrastructure as i32 {
            FailureKind::Infrastructure
        } else {
            FailureKind::Task
        };
        let (verdict, fut, changes) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            let v = s.fail(&shard, attempt, kind, &f.message, &mut changes);
            let fut = (v == Verdict::Accepted).then(|| self.persist(changes.clone(), Vec::new()));
            (v, fut, changes)
        };
        self.settle(verdict, fut, changes, Box::new(ack))
    }

    /// The acknowledgement of a verdict, once its changes are committed.
    fn settle(
        self: &Arc<Self>,
        verdict: Verdict,
        fut: Option<impl std::future::Future<Output = StoreResult<()>> + Send + 'static>,
        changes: Vec<Change>,
        ack: Box<dyn Fn(bool, String) -> pb::Ack + Send>,
    ) -> Pending<pb::Ack> {
        let core = self.clone();
        Box::pin(async move {
            match (verdict, fut) {
                (Verdict::Accepted, Some(fut)) => match fut.await {
                    Ok(()) => {
                        core.committed(&changes);
                        ack(true, String::new())
                    }
                    Err(e) => ack(false, format!("not stored: {e}")),
                },
                (Verdict::Duplicate, _) => ack(true, "duplicate: already stored".into()),
                (Verdict::Refused(why), _) => ack(false, why),
                (Verdict::Accepted, None) => ack(false, "not stored".into()),
            }
        })
    }

    // ---- sweeps -------------------------------------------------------------------------

    /// Store planned jobs as a new sweep and queue its work.
    pub async fn add_sweep(
        &self,
        sweep_id: String,
        seq: i64,
        name: String,
        source_path: String,
        yaml: String,
        record: SweepRecord,
        files: Vec<FileEntry>,
        jobs: Vec<PlannedJob>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mem = SweepMem {
            id: sweep_id.clone(),
            seq,
            name: name.clone(),
            state: READY,
            error: String::new(),
            created_ms: now,
            updated_ms: now,
            jobs: Vec::new(),
            retry_task: record.retries.task,
            retry_infra: record.retries.infrastructure,
        };
        let new_jobs: Vec<NewJob> = jobs
            .iter()
            .map(|j| {
                let blocked = !j.depends_on.is_empty();
                NewJob {
                    id: j.id.clone(),
                    seq: j.seq,
                    kind: j.kind.clone(),
                    label: j.label.clone(),
                    model: j.model.clone(),
                    state: if blocked { BLOCKED } else { READY },
                    error: String::new(),
                    depends_on: j.depends_on.clone(),
                    shards: j
                        .shards
                        .iter()
                        .map(|s| NewShard {
                            id: s.id.clone(),
                            state: if blocked { BLOCKED } else { READY },
                            attempt: 0,
                            task_failures: 0,
                            infra_failures: 0,
                            units: s.units,
                        })
                        .collect(),
                }
            })
            .collect();
        let record_json = serde_json::to_string(&record).expect("sweep records serialise");
        let id = sweep_id.clone();
        self.store
            .call(move |c| {
                c.execute(
                    "INSERT INTO sweeps (id, seq, name, source_path, yaml, sweep_json, state,
                        error, created_ms, updated_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,'',?8,?8)",
                    params![id, seq, name, source_path, yaml, record_json, READY, now],
                )?;
                for f in &files {
                    c.execute(
                        "INSERT OR REPLACE INTO sweep_files (sweep_id, path, sha256, size)
                         VALUES (?1,?2,?3,?4)",
                        params![id, f.path, f.sha256, f.size as i64],
                    )?;
                }
                for j in &jobs {
                    let blocked = !j.depends_on.is_empty();
                    let st = if blocked { BLOCKED } else { READY };
                    c.execute(
                        "INSERT INTO jobs (id, sweep_id, seq, kind, label, model, state,
                            depends_on, error, meta_json) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,'',?9)",
                        params![
                            j.id,
                            id,
                            j.seq,
                            j.kind,
                            j.label,
                            j.model,
                            st,
                            serde_json::to_string(&j.depends_on).expect("ids serialise"),
                            serde_json::to_string(&j.meta).expect("meta serialises"),
                        ],
                    )?;
                    let mut stmt = c.prepare_cached(
                        "INSERT INTO shards (id, job_id, sweep_id, seq, state, spec_json,
                            files_json, units, attempt, task_failures, infra_failures,
                            worker_id, error) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,0,0,0,'','')",
                    )?;
                    for s in &j.shards {
                        stmt.execute(params![
                            s.id,
                            j.id,
                            id,
                            s.seq,
                            st,
                            s.spec_json,
                            serde_json::to_string(&s.files).expect("files serialise"),
                            s.units as i64,
                        ])?;
                    }
                }
                Ok(())
            })
            .await?;
        {
            let mut s = lock(&self.sched);
            s.add_sweep(mem);
            for j in new_jobs {
                s.add_job(&sweep_id, j);
            }
        }
        tracing::info!(sweep = %sweep_id, "sweep queued");
        self.changed.send_modify(|v| *v += 1);
        self.kick.notify_one();
        Ok(())
    }

    /// A new sweep number.
    pub async fn next_sweep_seq(&self) -> StoreResult<i64> {
        self.store.call(|c| store::next_counter(c, "sweep")).await
    }

    /// A sweep of no-op shards (dispatch benchmarks, protocol tests): one job, one shard per
    /// spec.
    pub async fn submit_noop(
        &self,
        name: &str,
        specs: Vec<flotilla_contract::shard::NoopShard>,
        retries: Retries,
    ) -> Result<String, StoreError> {
        if specs.is_empty() {
            return Err(StoreError::Other(
                "a no-op sweep needs at least one shard".into(),
            ));
        }
        let seq = self.next_sweep_seq().await?;
        let sweep_id = format!("{}-{seq}", slug(name));
        let job_id = format!("{sweep_id}.j1");
        let shards = specs
            .iter()
            .enumerate()
            .map(|(i, s)| plan::PlannedShard {
                id: format!("{job_id}.s{}", i + 1),
                seq: i as i64 + 1,
                spec_json: serde_json::to_string(s).expect("noop specs serialise"),
                files: Vec::new(),
                units: s.units.max(1),
            })
            .collect();
        let job = PlannedJob {
            id: job_id,
            seq: 1,
            kind: flotilla_contract::shard::KIND_NOOP.into(),
            label: format!("{} no-op shards", specs.len()),
            model: String::new(),
            depends_on: Vec::new(),
            meta: JobMeta::Noop,
            shards,
        };
        self.add_sweep(
            sweep_id.clone(),
            seq,
            name.to_string(),
            String::new(),
            String::new(),
            SweepRecord {
                retries,
                sweep: None,
            },
            Vec::new(),
            vec![job],
        )
        .await?;
        Ok(sweep_id)
    }

    pub fn status(&self, sweep_id: &str) -> Option<pb::SweepStatus> {
        let s = lock(&self.sched);
        status_of(&s, sweep_id)
    }

    pub fn list(&self) -> Vec<pb::SweepStatus> {
        let s = lock(&self.sched);
        s.order.iter().filter_map(|id| status_of(&s, id)).collect()
    }

    /// Cancel a sweep; running shards get a `Cancel` on their worker's stream.
    pub async fn cancel(&self, sweep_id: &str) -> Result<Option<pb::SweepStatus>, Status> {
        let (running, fut, changes) = {
            let mut s = lock(&self.sched);
            if !s.sweeps.contains_key(sweep_id) {
                return Ok(None);
            }
            let mut changes = Vec::new();
            let running = s.cancel_sweep(sweep_id, &mut changes);
            let fut = self.persist(changes.clone(), Vec::new());
            (running, fut, changes)
        };
        fut.await.map_err(internal)?;
        self.committed(&changes);
        let senders = lock(&self.senders);
        for (shard, attempt, worker) in running {
            if let Some((_, tx)) = senders.get(&worker) {
                let _ = tx.send(Ok(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Cancel(pb::Cancel {
                        shard_id: shard,
                        attempt: attempt.to_string(),
                        reason: "the sweep was cancelled".into(),
                    })),
                }));
            }
        }
        drop(senders);
        Ok(self.status(sweep_id))
    }

    /// Connected and recently seen workers, for `ListWorkers`.
    pub fn workers(&self) -> Vec<pb::WorkerInfo> {
        let s = lock(&self.sched);
        let mut out: Vec<pb::WorkerInfo> = s
            .workers
            .values()
            .map(|w| pb::WorkerInfo {
                worker_id: w.id.clone(),
                capabilities: Some(w.capabilities.clone()),
                connected: w.connected,
                running: w.running.len() as u32,
                shards_completed: w.completed,
                units_per_second: w.units_per_second.unwrap_or(0.0),
                last_seen_unix_ms: w.last_seen_unix_ms,
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
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

/// The proto's sweep state for a stored one.
pub fn sweep_state(state: i64) -> pb::SweepState {
    match state {
        READY | BLOCKED => pb::SweepState::Queued,
        RUNNING => pb::SweepState::Running,
        SUCCEEDED => pb::SweepState::Succeeded,
        FAILED => pb::SweepState::Failed,
        CANCELLED => pb::SweepState::Cancelled,
        _ => pb::SweepState::Unspecified,
    }
}

fn status_of(s: &Scheduler, sweep_id: &str) -> Option<pb::SweepStatus> {
    let sweep = s.sweeps.get(sweep_id)?;
    let mut st = pb::SweepStatus {
        sweep_id: sweep.id.clone(),
        name: sweep.name.clone(),
        state: sweep_state(sweep.state) as i32,
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
            job_id: j.id.clone(),
            kind: j.kind.clone(),
            label: j.label.clone(),
            state: j.state as i32,
            shards_total: total,
            shards_done: j.done,
            shards_running: j.running,
            shards_failed: j.failed,
            depends_on: j.depends_on.clone(),
            error: j.error.clone(),
        });
    }
    Some(st)
}
