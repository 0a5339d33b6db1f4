//! Where a sweep becomes work: the jobs DAG and the shards of each job.
//!
//! - `train`: one per (model, adapter with a `train:` block); a single shard that runs on one
//!   worker and uploads the adapter.
//! - `generate`: one per (model, adapter, variant, dataset cell); its cases cut into shards of
//!   `shard_size`. A generate job with a trained adapter depends on that train job. Criteria
//!   cells (the case text judged against a rubric, nothing generated) run once per model, under
//!   the first variant and the baseline adapter.
//! - `judge`: one per generate job, depending on it, with the same cut: judge shard k judges
//!   generate shard k's answers, possibly on another worker.
//!
//! Specs that need results of earlier jobs (a trained adapter's files; the answers to judge)
//! are completed by [`finalize`] inside the transaction that records the last result they
//! depend on, so a job is never ready with an incomplete spec.

use crate::store::{StoreError, StoreResult};
use crate::sweep::{file_key, AdapterSource, Cell, Sweep};
use flotilla_contract::dataset::Task;
use flotilla_contract::judging::Scale;
use flotilla_contract::shard::{
    AdapterRef, GenerateResult, GenerateShard, JudgeItem, JudgeModel, JudgeShard, TrainShard,
    KIND_GENERATE, KIND_JUDGE, KIND_TRAIN,
};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A file a shard needs: the sweep-path key and the artifact holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// What [`finalize`] and the results need to know about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobMeta {
    Train {
        model: String,
        adapter: String,
    },
    Generate {
        /// The train job whose adapter this job uses.
        train_job: Option<String>,
    },
    Judge {
        generate_job: String,
        judges: Vec<JudgeModel>,
        scale: Scale,
        explanation_tokens: usize,
    },
    Noop,
}

#[derive(Debug, Clone)]
pub struct PlannedShard {
    pub id: String,
    pub seq: i64,
    /// Empty for shards completed by [`finalize`].
    pub spec_json: String,
    pub files: Vec<FileEntry>,
    pub units: u64,
}

#[derive(Debug, Clone)]
pub struct PlannedJob {
    pub id: String,
    pub seq: i64,
    pub kind: String,
    pub label: String,
    pub model: String,
    pub depends_on: Vec<String>,
    pub meta: JobMeta,
    pub shards: Vec<PlannedShard>,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("spec types serialise")
}

/// Turn a checked sweep and its cells into jobs. `files` maps every uploaded sweep-path key
/// to its artifact.
pub fn plan(
    sweep_id: &str,
    sweep: &Sweep,
    cells: &[Cell],
    files: &BTreeMap<String, FileEntry>,
) -> Result<Vec<PlannedJob>, String> {
    let mut jobs: Vec<PlannedJob> = Vec::new();
    let file = |key: &str| -> Result<FileEntry, String> {
        files
            .get(key)
            .cloned()
            .ok_or_else(|| format!("{key} was not uploaded with the sweep"))
    };
    let under = |dir: &str| -> Vec<FileEntry> {
        let prefix = format!("{}/", file_key(dir));
        files
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, f)| f.clone())
            .collect()
    };
    let baseline_adapter = sweep.baseline_adapter().to_string();
    let mut next = 0i64;
    let mut new_id = || {
        next += 1;
        (format!("{sweep_id}.j{next}"), next)
    };
    for m in &sweep.models {
        // Training first, so eval jobs can name their train job.
        let mut trained: HashMap<String, String> = HashMap::new();
        for a in &sweep.adapters {
            let AdapterSource::Train(block) = &a.source else {
                continue;
            };
            let mut config = block.clone();
            let mut shard_files = Vec::new();
            for key in ["data", "eval_data"] {
                if let Some(p) = block.get(key).and_then(|v| v.as_str()) {
                    let k = file_key(p);
                    shard_files.push(file(&k)?);
                    config[key] = k.into();
                }
            }
            if config.get("seed").is_none() {
                config["seed"] = sweep.seed.into();
            }
            let (id, seq) = new_id();
            let spec = TrainShard {
                model: m.model.clone(),
                adapter_name: a.name.clone(),
                config,
            };
            let units = block.get("steps").and_then(|s| s.as_u64()).unwrap_or(1);
            trained.insert(a.name.clone(), id.clone());
            jobs.push(PlannedJob {
                id: id.clone(),
                seq,
                kind: KIND_TRAIN.into(),
                label: format!("train {} on {}", a.name, m.name),
                model: m.model.clone(),
                depends_on: Vec::new(),
                meta: JobMeta::Train {
                    model: m.name.clone(),
                    adapter: a.name.clone(),
                },
                shards: vec![PlannedShard {
                    id: format!("{id}.s1"),
                    seq: 1,
                    spec_json: to_json(&spec),
                    files: shard_files,
                    units,
                }],
            });
        }
        for a in &sweep.adapters {
            let (adapter, adapter_files, train_job) = match &a.source {
                AdapterSource::None => (None, Vec::new(), None),
                AdapterSource::Dir(d) => (
                    Some(AdapterRef {
                        name: a.name.clone(),
                        dir: file_key(d),
                    }),
                    under(d),
                    None,
                ),
                AdapterSource::Train(_) => {
                    let tj = trained[&a.name].clone();
                    (
                        Some(AdapterRef {
                            name: a.name.clone(),
                            dir: format!("adapters/{tj}"),
                        }),
                        Vec::new(),
                        Some(tj),
                    )
                }
            };
            for (vi, variant) in sweep.variants.iter().enumerate() {
                let (variant_spec, template) = match variant.strip_prefix("custom:") {
                    Some(t) => (format!("custom:{}", file_key(t)), Some(file(&file_key(t))?)),
                    None => (variant.clone(), None),
                };
                for cell in cells {
                    if cell.task == Task::Criteria && (vi > 0 || a.name != baseline_adapter) {
                        continue;
                    }
                    let cell_label =
                        format!("{} {} {}", cell.dataset, cell.task.name(), cell.language);
                    let label = format!("{} / {} / {} / {}", m.name, a.name, variant, cell_label);
                    let (gid, gseq) = new_id();
                    let mut gshards = Vec::new();
                    let mut jshards = Vec::new();
                    for (k, chunk) in cell.cases.chunks(sweep.shard_size).enumerate() {
                        let mut shard_files = adapter_files.clone();
                        shard_files.extend(template.clone());
                        for c in chunk {
                            for d in &c.documents {
                                let f = file(&d.to_string_lossy())?;
                                if !shard_files.contains(&f) {
                                    shard_files.push(f);
                                }
                            }
                        }
                        let spec = GenerateShard {
                            model: m.model.clone(),
                            model_label: m.name.clone(),
                            adapter: adapter.clone(),
                            variant: variant_spec.clone(),
                            cases: chunk.to_vec(),
                            sampling: sweep.sampling.clone(),
                            truncation: sweep.truncation,
                            retrieval: sweep.retrieval.clone(),
                        };
                        let seq = k as i64 + 1;
                        gshards.push(PlannedShard {
                            id: format!("{gid}.s{seq}"),
                            seq,
                            spec_json: to_json(&spec),
                            files: shard_files,
                            units: chunk.len() as u64,
                        });
                        jshards.push(seq);
                    }
                    jobs.push(PlannedJob {
                        id: gid.clone(),
                        seq: gseq,
                        kind: KIND_GENERATE.into(),
                        label: label.clone(),
                        model: m.model.clone(),
                        depends_on: train_job.iter().cloned().collect(),
                        meta: JobMeta::Generate {
                            train_job: train_job.clone(),
                        },
                        shards: gshards,
                    });
                    let judges: Vec<JudgeModel> = sweep
                        .judge
                        .judges
                        .iter()
                        .map(|j| JudgeModel {
                            name: j.clone(),
                            model: if j == "self" {
                                m.model.clone()
                            } else {
                                j.clone()
                            },
                        })
                        .collect();
                    let judge_model = judges
                        .iter()
                        .find(|j| !j.model.starts_with("openai:"))
                        .map(|j| j.model.clone())
                        .unwrap_or_default();
                    let (jid, jseq) = new_id();
                    jobs.push(PlannedJob {
                        id: jid.clone(),
                        seq: jseq,
                        kind: KIND_JUDGE.into(),
                        label: format!("judge {label}"),
                        model: judge_model,
                        depends_on: vec![gid.clone()],
                        meta: JobMeta::Judge {
                            generate_job: gid.clone(),
                            judges,
                            scale: sweep.judge.scale,
                            explanation_tokens: sweep.judge.explanation_tokens,
                        },
                        shards: jshards
                            .into_iter()
                            .map(|seq| PlannedShard {
                                id: format!("{jid}.s{seq}"),
                                seq,
                                spec_json: String::new(),
                                files: Vec::new(),
                                units: 0,
                            })
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(jobs)
}

fn sql_err(what: String) -> StoreError {
    StoreError::Other(what)
}

/// Complete the specs of `job_id`, whose dependencies all succeeded, from their stored
/// results. Runs inside the store's transaction.
pub fn finalize(conn: &Connection, job_id: &str) -> StoreResult<()> {
    let meta: String = conn.query_row(
        "SELECT meta_json FROM jobs WHERE id = ?1",
        params![job_id],
        |r| r.get(0),
    )?;
    let meta: JobMeta =
        serde_json::from_str(&meta).map_err(|e| sql_err(format!("job {job_id}: bad meta: {e}")))?;
    match meta {
        JobMeta::Generate {
            train_job: Some(train_job),
        } => {
            // The trained adapter's files, under adapters/<train job>/.
            let artifacts: String = conn.query_row(
                "SELECT r.artifacts_json FROM results r JOIN shards s ON s.id = r.shard_id
                 WHERE s.job_id = ?1",
                params![train_job],
                |r| r.get(0),
            )?;
            let artifacts: Vec<FileEntry> = serde_json::from_str(&artifacts)
                .map_err(|e| sql_err(format!("train job {train_job}: bad artifacts: {e}")))?;
            let mut stmt = conn.prepare("SELECT id, files_json FROM shards WHERE job_id = ?1")?;
            let rows: Vec<(String, String)> = stmt
                .query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, files) in rows {
                let mut files: Vec<FileEntry> = serde_json::from_str(&files)
                    .map_err(|e| sql_err(format!("shard {id}: bad files: {e}")))?;
                for a in &artifacts {
                    files.push(FileEntry {
                        path: format!("adapters/{train_job}/{}", a.path),
                        sha256: a.sha256.clone(),
                        size: a.size,
                    });
                }
                conn.execute(
                    "UPDATE shards SET files_json = ?2 WHERE id = ?1",
                    params![id, to_json(&files)],
                )?;
            }
        }
        JobMeta::Judge {
            generate_job,
            judges,
            scale,
            explanation_tokens,
        } => {
            let mut stmt = conn.prepare(
                "SELECT j.id, g.spec_json, r.result_json FROM shards j
                 JOIN shards g ON g.job_id = ?2 AND g.seq = j.seq
                 JOIN results r ON r.shard_id = g.id
                 WHERE j.job_id = ?1",
            )?;
            let rows: Vec<(String, String, String)> = stmt
                .query_map(params![job_id, generate_job], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            for (id, gspec, gresult) in rows {
                let gspec: GenerateShard = serde_json::from_str(&gspec)
                    .map_err(|e| sql_err(format!("generate spec for {id}: {e}")))?;
                let gresult: GenerateResult = serde_json::from_str(&gresult)
                    .map_err(|e| sql_err(format!("generate result for {id}: {e}")))?;
                let rubric: HashMap<&str, Option<String>> = gspec
                    .cases
                    .iter()
                    .map(|c| (c.id.as_str(), c.criteria.clone()))
                    .collect();
                let items: Vec<JudgeItem> = gresult
                    .cases
                    .into_iter()
                    .map(|r| JudgeItem {
                        criteria: rubric.get(r.case_id.as_str()).cloned().flatten(),
                        result: r,
                    })
                    .collect();
                let units = items.len() as u64;
                let spec = JudgeShard {
                    judges: judges.clone(),
                    scale,
                    explanation_tokens,
                    items,
                };
                conn.execute(
                    "UPDATE shards SET spec_json = ?2, units = ?3 WHERE id = ?1",
                    params![id, to_json(&spec), units as i64],
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}
