//! The Work streams: workers connecting and dropping (where leases expire with a stream),
//! asks answered with assignments, heartbeats reaped, results and failures fenced and
//! acknowledged only after their commit.

use super::*;
use crate::error::{CoordinatorError, CoordinatorResult};
use flotilla_client::telemetry;

impl Core {
    /// A worker said hello on a new stream; returns its connection number. An older stream of
    /// the same worker is dropped first (its shards requeued).
    pub async fn connect(&self, hello: pb::Hello, tx: WorkerTx) -> CoordinatorResult<u64> {
        if hello.worker_id.trim().is_empty() {
            return Err(CoordinatorError::Invalid("hello.worker_id is empty".into()));
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
        ask: pb::WorkRequest,
    ) -> Option<Pending<()>> {
        let pb::WorkRequest {
            free_slots: free,
            models_loaded,
            memory_free_bytes,
            paused,
            models_held,
            prefill_tokens_per_s,
        } = ask;
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
            w.models_held = models_held;
            w.paused = paused;
            if prefill_tokens_per_s > 0.0 && prefill_tokens_per_s.is_finite() {
                w.prefill_tokens_per_s = Some(prefill_tokens_per_s);
            }
            if memory_free_bytes > 0 {
                w.memory_free_bytes = memory_free_bytes;
                w.capabilities.memory_free_bytes = memory_free_bytes;
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
            let kinds: Vec<(JobKind, String)> = picks
                .iter()
                .map(|(_, _, j)| {
                    let job = &s.jobs[j];
                    (job.head.kind, job.sweep_id.clone())
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
        let worker = worker.to_string();
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
                let traceparent =
                    trace_assignment(&core, &sweep, &job, &shard, attempt.0, kind, &worker);
                let msg = pb::Assignment {
                    shard_id: shard,
                    attempt: attempt.0,
                    job_id: job,
                    sweep_id: sweep,
                    spec: spec.into_bytes(),
                    files: files.into_iter().map(file_ref).collect(),
                    traceparent: traceparent.unwrap_or_default(),
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
        let (id, attempt) = (r.shard_id.clone(), r.attempt);
        let ack = move |accepted: bool, reason: String| pb::Ack {
            shard_id: id.clone(),
            attempt,
            accepted,
            reason,
        };
        let ready = |a: pb::Ack| -> Pending<pb::Ack> { Box::pin(std::future::ready(a)) };
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
        // Typed before it is stored: what is in the database always reads back.
        let json = match ShardOutput::from_json(&r.output) {
            Ok(output) => output.to_json(),
            Err(e) => return ready(ack(false, e.to_string())),
        };
        let row = ResultRow {
            shard: r.shard_id.clone(),
            attempt: Attempt(attempt),
            json,
            artifacts,
            seconds: r.seconds,
            units: r.units,
        };
        let (verdict, fut, changes) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            let v = s.succeed(
                &r.shard_id,
                Attempt(attempt),
                r.units,
                r.seconds,
                &mut changes,
            );
            let fut = (v == Verdict::Accepted).then(|| self.persist(changes.clone(), vec![row]));
            (v, fut, changes)
        };
        self.settle(verdict, fut, changes, Box::new(ack))
    }

    /// A failure report from a worker: decided now, acknowledged after the commit.
    pub fn failure(self: &Arc<Self>, f: pb::ShardFailure) -> Pending<pb::Ack> {
        let shard = f.shard_id.clone();
        let (id, attempt) = (f.shard_id.clone(), f.attempt);
        let ack = move |accepted: bool, reason: String| pb::Ack {
            shard_id: id.clone(),
            attempt,
            accepted,
            reason,
        };
        let kind = if f.kind == pb::FailureKind::Infrastructure as i32 {
            FailureKind::Infrastructure
        } else {
            FailureKind::Task
        };
        let (verdict, fut, changes) = {
            let mut s = lock(&self.sched);
            let mut changes = Vec::new();
            let v = s.fail(&shard, Attempt(attempt), kind, &f.message, &mut changes);
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
}

/// The span of one assignment (a child of the sweep's submission); its context travels to the
/// worker in the assignment, whose work on the shard continues the trace. `None` when traces
/// are not exported.
fn trace_assignment(
    core: &Core,
    sweep: &str,
    job: &str,
    shard: &str,
    attempt: u32,
    kind: JobKind,
    worker: &str,
) -> Option<String> {
    if !telemetry::enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "assign shard",
        sweep,
        job,
        shard,
        attempt,
        kind = kind.as_str(),
        worker
    );
    if let Some(parent) = core.sweep_trace(sweep) {
        telemetry::set_parent(&span, &parent);
    }
    telemetry::traceparent(&span)
}
