//! Sweeps through the core: planned jobs stored and queued, no-op sweeps for benchmarks,
//! status, listing, cancel, and the worker table.

use super::*;
use crate::error::CoordinatorResult;

impl Core {
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
            state: SweepState::Ready,
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
                    head: JobHead {
                        id: j.id.clone(),
                        seq: j.seq,
                        kind: j.kind,
                        label: j.label.clone(),
                        model: j.model.clone(),
                        state: if blocked {
                            JobState::Blocked
                        } else {
                            JobState::Ready
                        },
                        error: String::new(),
                        depends_on: j.depends_on.clone(),
                    },
                    shards: j
                        .shards
                        .iter()
                        .map(|s| NewShard {
                            id: s.id.clone(),
                            state: if blocked {
                                ShardState::Blocked
                            } else {
                                ShardState::Ready
                            },
                            attempt: Attempt(0),
                            task_failures: 0,
                            infra_failures: 0,
                            units: s.units,
                            prefer: None,
                            prompt_tokens: crate::scheduler::memory::prompt_tokens(
                                &s.spec_json,
                                &|key| s.files.iter().find(|f| f.path == key).map(|f| f.size),
                            ),
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
                    params![
                        id,
                        seq,
                        name,
                        source_path,
                        yaml,
                        record_json,
                        SweepState::Ready.code(),
                        now
                    ],
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
                    let (job_state, shard_state) = if blocked {
                        (JobState::Blocked, ShardState::Blocked)
                    } else {
                        (JobState::Ready, ShardState::Ready)
                    };
                    c.execute(
                        "INSERT INTO jobs (id, sweep_id, seq, kind, label, model, state,
                            depends_on, error, meta_json) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,'',?9)",
                        params![
                            j.id,
                            id,
                            j.seq,
                            j.kind.as_str(),
                            j.label,
                            j.model,
                            job_state.code(),
                            serde_json::to_string(&j.depends_on).expect("ids serialise"),
                            serde_json::to_string(&j.meta).expect("meta serialises"),
                        ],
                    )?;
                    insert_shards(c, &id, &j.id, &j.shards, shard_state)?;
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
                spec_json: ShardSpec::Noop(s.clone()).to_json(),
                files: Vec::new(),
                units: s.units.max(1),
            })
            .collect();
        let job = PlannedJob {
            id: job_id,
            seq: 1,
            kind: JobKind::Noop,
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
    pub async fn cancel(&self, sweep_id: &str) -> CoordinatorResult<Option<pb::SweepStatus>> {
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
        fut.await?;
        self.committed(&changes);
        self.send_cancels(running, "the sweep was cancelled");
        Ok(self.status(sweep_id))
    }

    /// Tell workers to stop attempts that no longer count.
    pub(super) fn send_cancels(&self, running: Vec<(String, Attempt, String)>, reason: &str) {
        let senders = lock(&self.senders);
        for (shard, attempt, worker) in running {
            if let Some((_, tx)) = senders.get(&worker) {
                let _ = tx.send(Ok(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Cancel(pb::Cancel {
                        shard_id: shard,
                        attempt: attempt.0,
                        reason: reason.into(),
                    })),
                }));
            }
        }
    }

    /// Connected and recently seen workers, for `ListWorkers`.
    pub fn workers(&self) -> Vec<pb::WorkerInfo> {
        let s = lock(&self.sched);
        let mut out: Vec<pb::WorkerInfo> = s
            .workers
            .values()
            .map(|w| pb::WorkerInfo {
                worker_id: w.id.clone(),
                // As of its last ask: what it has loaded, and the pushed models on its disk.
                capabilities: Some({
                    let mut c = w.capabilities.clone();
                    c.models_loaded = w.models_loaded.clone();
                    for m in &w.models_held {
                        if !c.models_cached.contains(m) {
                            c.models_cached.push(m.clone());
                        }
                    }
                    c
                }),
                connected: w.connected,
                running: w.running.len() as u32,
                shards_completed: w.completed,
                units_per_second: w.units_per_second.unwrap_or(0.0),
                prefill_tokens_per_s: w.prefill_tokens_per_s.unwrap_or(0.0),
                last_seen_unix_ms: w.last_seen_unix_ms,
                paused: w.paused.clone(),
                running_shards: {
                    let mut r: Vec<String> = w.running.iter().cloned().collect();
                    r.sort();
                    r
                },
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }
}
