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

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{StoreError, StoreResult};
use crate::sweep::{file_key, AdapterEntry, AdapterSource, Cell, ModelEntry, Sweep};
use flotilla_contract::dataset::Task;
use flotilla_contract::judging::Scale;
use flotilla_contract::shard::{
    AdapterRef, GenerateShard, JudgeItem, JudgeModel, JudgeShard, TrainShard,
};
use flotilla_contract::{Error as ContractError, JobKind, JudgeSpec, ShardOutput, ShardSpec};
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
    /// A distributed train job (`train_round` shards, added round by round).
    TrainRound(crate::training::RunMeta),
    Generate {
        /// The train job whose adapter this job uses.
        train_job: Option<String>,
    },
    Judge {
        generate_job: String,
        judges: Vec<JudgeModel>,
        scale: Scale,
        explanation_tokens: usize,
        /// Sweep path of the dataset's rubric template, if it has one.
        #[serde(default)]
        rubric: Option<String>,
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
    pub kind: JobKind,
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
/// to its artifact. Per model: its training jobs first (so eval jobs can name them), then for
/// each adapter x variant x cell a generate job and the judge job after it.
pub fn plan(
    sweep_id: &str,
    sweep: &Sweep,
    cells: &[Cell],
    files: &BTreeMap<String, FileEntry>,
) -> CoordinatorResult<Vec<PlannedJob>> {
    let mut p = Planner {
        sweep_id,
        sweep,
        files,
        jobs: Vec::new(),
        next: 0,
    };
    let baseline_adapter = sweep.baseline_adapter().to_string();
    for m in &sweep.models {
        // A model behind an API (`openai:MODEL@URL`) takes no adapter: it runs as the base.
        let api = m.model.starts_with("openai:");
        let trained = if api {
            HashMap::new()
        } else {
            p.train_jobs(m)?
        };
        for a in &sweep.adapters {
            if api && a.source != AdapterSource::None {
                continue;
            }
            let adapter = p.adapter_use(a, &trained);
            for (vi, variant) in sweep.variants.iter().enumerate() {
                let variant = p.variant_use(variant)?;
                for cell in cells {
                    // Criteria cells judge the case text itself: once per model.
                    if cell.task == Task::Criteria && (vi > 0 || a.name != baseline_adapter) {
                        continue;
                    }
                    let label = format!(
                        "{} / {} / {} / {} {} {}",
                        m.name,
                        a.name,
                        variant.name,
                        cell.dataset,
                        cell.task.name(),
                        cell.language
                    );
                    let (gid, seqs) = p.generate_job(m, &adapter, &variant, cell, &label)?;
                    let rubric = sweep
                        .datasets
                        .iter()
                        .find(|d| d.name == cell.dataset)
                        .and_then(|d| d.rubric.as_deref());
                    p.judge_job(m, &label, gid, seqs, rubric)?;
                }
            }
        }
    }
    Ok(p.jobs)
}

/// The planning of one sweep: the jobs so far and the next job number.
struct Planner<'a> {
    sweep_id: &'a str,
    sweep: &'a Sweep,
    files: &'a BTreeMap<String, FileEntry>,
    jobs: Vec<PlannedJob>,
    next: i64,
}

/// An adapter as the generate jobs use it.
struct AdapterUse {
    adapter: Option<AdapterRef>,
    /// Its files, for an adapter folder given in the sweep.
    files: Vec<FileEntry>,
    /// The train job that produces it, for an adapter trained by the sweep.
    train_job: Option<String>,
}

/// A prompt variant as the generate jobs use it.
struct VariantUse {
    /// As the sweep writes it (labels).
    name: String,
    /// As the spec carries it (`custom:` with the template's sweep-path key).
    spec: String,
    template: Option<FileEntry>,
    /// The name the sweep gave it, if any (results use it in place of the spec).
    given_name: Option<String>,
}

impl Planner<'_> {
    fn new_id(&mut self) -> (String, i64) {
        self.next += 1;
        (format!("{}.j{}", self.sweep_id, self.next), self.next)
    }

    fn file(&self, key: &str) -> CoordinatorResult<FileEntry> {
        self.files.get(key).cloned().ok_or_else(|| {
            CoordinatorError::Invalid(format!("{key} was not uploaded with the sweep"))
        })
    }

    /// A pushed model's files (`coordinator:NAME`), which every shard loading it lists;
    /// none for any other model.
    fn pushed(&self, model: &str) -> Vec<FileEntry> {
        match model.strip_prefix(crate::models::PREFIX) {
            Some(name) => self.under(&crate::models::files_dir(name)),
            None => Vec::new(),
        }
    }

    fn under(&self, dir: &str) -> Vec<FileEntry> {
        let prefix = format!("{}/", file_key(dir));
        self.files
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// One train job per adapter with a `train:` block; returns adapter name -> job id.
    fn train_jobs(&mut self, m: &ModelEntry) -> CoordinatorResult<HashMap<String, String>> {
        let mut trained = HashMap::new();
        for a in &self.sweep.adapters {
            let AdapterSource::Train(block) = &a.source else {
                continue;
            };
            let mut config = block.clone();
            let mut shard_files = self.pushed(&m.model);
            for key in ["data", "eval_data"] {
                if let Some(p) = block.get(key).and_then(|v| v.as_str()) {
                    let k = file_key(p);
                    shard_files.push(self.file(&k)?);
                    config[key] = k.into();
                }
            }
            if config.get("seed").is_none() {
                config["seed"] = self.sweep.seed.into();
            }
            let (id, seq) = self.new_id();
            trained.insert(a.name.clone(), id.clone());
            let label = format!("train {} on {}", a.name, m.name);
            if block.get("distributed").is_some_and(|d| !d.is_null()) {
                let run = crate::training::RunMeta {
                    model: m.model.clone(),
                    model_name: m.name.clone(),
                    adapter: a.name.clone(),
                    config,
                    files: shard_files,
                };
                let shards = crate::training::round_shards(&id, &run, 0, None, &[], &[])
                    .map_err(|e| CoordinatorError::Invalid(e.to_string()))?
                    .into_iter()
                    .map(|s| s.shard)
                    .collect();
                self.jobs.push(PlannedJob {
                    id,
                    seq,
                    kind: JobKind::TrainRound,
                    label: format!("{label} (distributed)"),
                    model: m.model.clone(),
                    depends_on: Vec::new(),
                    meta: JobMeta::TrainRound(run),
                    shards,
                });
                continue;
            }
            let spec = TrainShard {
                model: m.model.clone(),
                adapter_name: a.name.clone(),
                config,
            };
            let units = block.get("steps").and_then(|s| s.as_u64()).unwrap_or(1);
            self.jobs.push(PlannedJob {
                id: id.clone(),
                seq,
                kind: JobKind::Train,
                label,
                model: m.model.clone(),
                depends_on: Vec::new(),
                meta: JobMeta::Train {
                    model: m.name.clone(),
                    adapter: a.name.clone(),
                },
                shards: vec![PlannedShard {
                    id: format!("{id}.s1"),
                    seq: 1,
                    spec_json: ShardSpec::Train(spec).to_json(),
                    files: shard_files,
                    units,
                }],
            });
        }
        Ok(trained)
    }

    fn adapter_use(&self, a: &AdapterEntry, trained: &HashMap<String, String>) -> AdapterUse {
        match &a.source {
            AdapterSource::None => AdapterUse {
                adapter: None,
                files: Vec::new(),
                train_job: None,
            },
            AdapterSource::Dir(d) => AdapterUse {
                adapter: Some(AdapterRef {
                    name: a.name.clone(),
                    dir: file_key(d),
                }),
                files: self.under(d),
                train_job: None,
            },
            AdapterSource::Train(_) => {
                let tj = trained[&a.name].clone();
                AdapterUse {
                    adapter: Some(AdapterRef {
                        name: a.name.clone(),
                        dir: format!("adapters/{tj}"),
                    }),
                    files: Vec::new(),
                    train_job: Some(tj),
                }
            }
        }
    }

    fn variant_use(&self, variant: &str) -> CoordinatorResult<VariantUse> {
        let label = self.sweep.variant_label(variant);
        let given_name = self.sweep.variant_names.get(variant).cloned();
        Ok(match variant.strip_prefix("custom:") {
            Some(t) => VariantUse {
                name: label,
                spec: format!("custom:{}", file_key(t)),
                template: Some(self.file(&file_key(t))?),
                given_name,
            },
            None => VariantUse {
                name: label,
                spec: variant.to_string(),
                template: None,
                given_name,
            },
        })
    }

    /// The generate job of one cell, cut into shards of `shard_size` cases; returns its id and
    /// its shards' numbers.
    fn generate_job(
        &mut self,
        m: &ModelEntry,
        adapter: &AdapterUse,
        variant: &VariantUse,
        cell: &Cell,
        label: &str,
    ) -> CoordinatorResult<(String, Vec<i64>)> {
        let (gid, gseq) = self.new_id();
        let mut retrieval = self.sweep.retrieval.clone();
        retrieval.embedder = self.sweep.model_spec(&retrieval.embedder);
        let mut shards = Vec::new();
        for (k, chunk) in cell.cases.chunks(self.sweep.shard_size).enumerate() {
            let mut shard_files = adapter.files.clone();
            shard_files.extend(variant.template.clone());
            shard_files.extend(self.pushed(&m.model));
            for c in chunk {
                for d in &c.documents {
                    let f = self.file(&d.to_string_lossy())?;
                    if !shard_files.contains(&f) {
                        shard_files.push(f);
                    }
                }
            }
            let spec = GenerateShard {
                model: m.model.clone(),
                model_label: m.name.clone(),
                adapter: adapter.adapter.clone(),
                variant: variant.spec.clone(),
                variant_label: variant.given_name.clone(),
                cases: chunk.to_vec(),
                sampling: self.sweep.sampling.clone(),
                truncation: self.sweep.truncation,
                retrieval: retrieval.clone(),
            };
            let seq = k as i64 + 1;
            shards.push(PlannedShard {
                id: format!("{gid}.s{seq}"),
                seq,
                spec_json: ShardSpec::Generate(spec).to_json(),
                files: shard_files,
                units: chunk.len() as u64,
            });
        }
        let seqs = shards.iter().map(|s| s.seq).collect();
        self.jobs.push(PlannedJob {
            id: gid.clone(),
            seq: gseq,
            kind: JobKind::Generate,
            label: label.to_string(),
            model: m.model.clone(),
            depends_on: adapter.train_job.iter().cloned().collect(),
            meta: JobMeta::Generate {
                train_job: adapter.train_job.clone(),
            },
            shards,
        });
        Ok((gid, seqs))
    }

    /// The judge job after generate job `gid`, with the same cut: judge shard k judges
    /// generate shard k's answers. Its specs are completed by [`finalize`].
    fn judge_job(
        &mut self,
        m: &ModelEntry,
        label: &str,
        gid: String,
        seqs: Vec<i64>,
        rubric: Option<&str>,
    ) -> CoordinatorResult<()> {
        // A dataset's rubric template travels with each of its judge shards.
        let rubric = rubric.map(file_key);
        let mut rubric_files = match &rubric {
            Some(k) => vec![self.file(k)?],
            None => Vec::new(),
        };
        let mut judges = Vec::new();
        // The model a judge job loads: its first local judge (for model affinity).
        let mut judge_model = None;
        for j in &self.sweep.judge.judges {
            let spec: JudgeSpec = j
                .parse()
                .map_err(|e: ContractError| CoordinatorError::Invalid(e.to_string()))?;
            // A judge given as a path loads from beside the sweep file, as models do.
            let model = match &spec {
                JudgeSpec::Model(p) => self.sweep.model_spec(p),
                _ => spec.resolve(&m.model),
            };
            if !spec.is_endpoint() && judge_model.is_none() {
                judge_model = Some(model.clone());
            }
            for f in self.pushed(&model) {
                if !rubric_files.contains(&f) {
                    rubric_files.push(f);
                }
            }
            judges.push(JudgeModel {
                name: j.clone(),
                model,
            });
        }
        let (jid, jseq) = self.new_id();
        self.jobs.push(PlannedJob {
            id: jid.clone(),
            seq: jseq,
            kind: JobKind::Judge,
            label: format!("judge {label}"),
            model: judge_model.unwrap_or_default(),
            depends_on: vec![gid.clone()],
            meta: JobMeta::Judge {
                generate_job: gid,
                judges,
                scale: self.sweep.judge.scale,
                explanation_tokens: self.sweep.judge.explanation_tokens,
                rubric,
            },
            shards: seqs
                .into_iter()
                .map(|seq| PlannedShard {
                    id: format!("{jid}.s{seq}"),
                    seq,
                    spec_json: String::new(),
                    files: rubric_files.clone(),
                    units: 0,
                })
                .collect(),
        });
        Ok(())
    }
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
            // The trained adapter's files, under adapters/<train job>/: a distributed run's
            // final round, or the one train shard's upload.
            let artifacts = match crate::training::final_adapter(conn, &train_job)? {
                Some(files) => files,
                None => {
                    let artifacts: String = conn.query_row(
                        "SELECT r.artifacts_json FROM results r JOIN shards s ON s.id = r.shard_id
                         WHERE s.job_id = ?1",
                        params![train_job],
                        |r| r.get(0),
                    )?;
                    serde_json::from_str(&artifacts).map_err(|e| {
                        sql_err(format!("train job {train_job}: bad artifacts: {e}"))
                    })?
                }
            };
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
            rubric: rubric_template,
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
                let ShardSpec::Generate(gspec) = ShardSpec::from_json(gspec.as_bytes())
                    .map_err(|e| sql_err(format!("generate spec for {id}: {e}")))?
                else {
                    return Err(sql_err(format!("the spec for {id} is not a generate spec")));
                };
                let ShardOutput::Generate(gresult) = ShardOutput::from_json(gresult.as_bytes())
                    .map_err(|e| sql_err(format!("generate result for {id}: {e}")))?
                else {
                    return Err(sql_err(format!(
                        "the result for {id} is not a generate result"
                    )));
                };
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
                    rubric: rubric_template.clone(),
                };
                conn.execute(
                    "UPDATE shards SET spec_json = ?2, units = ?3 WHERE id = ?1",
                    params![id, ShardSpec::Judge(spec).to_json(), units as i64],
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}
