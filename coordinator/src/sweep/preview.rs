//! What a valid sweep would become, without running anything (`flotilla sweep check`): the
//! sweep is checked and planned exactly as a coordinator plans it ([`crate::plan::plan`], on
//! the user's disk instead of the uploads), and the plan is summed up — jobs by kind, shards,
//! answers to generate, verdicts to give, training steps, and the files to upload.

use super::{file_key, Cell, FileRoot, Sweep, SweepError, SweepErrors};
use crate::plan::{self, FileEntry, JobMeta};
use flotilla_contract::dataset::{Case, Task};
use flotilla_contract::train_config::TrainConfig;
use flotilla_contract::{JobKind, ShardSpec};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The size of a training job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrainSize {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per step (batch size x gradient accumulation).
    pub sequences_per_step: u64,
    /// The longest a sequence may be, in the model's tokens.
    pub max_seq_len: u64,
}

/// One job of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewJob {
    pub id: String,
    /// `train`, `train_round`, `generate` or `judge`.
    pub kind: String,
    pub label: String,
    /// The model it loads (a judge job: its first local judge).
    pub model: String,
    pub depends_on: Vec<String>,
    /// Shards at the start (a distributed training job adds one round's shards at a time).
    pub shards: usize,
    /// A generate job: answers it produces (criteria cases produce none: their own text is
    /// judged). A judge job: the answers and criteria texts it judges.
    pub items: u64,
    /// A judge job: verdicts (items x judges).
    pub judgements: u64,
    pub train: Option<TrainSize>,
    /// Generate and judge jobs: the cases, with document paths as sweep-path keys (see
    /// [`Preview::files`]).
    #[serde(skip)]
    pub cases: Vec<Case>,
}

/// The plan summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PreviewTotals {
    pub jobs: usize,
    pub train_jobs: usize,
    pub generate_jobs: usize,
    pub judge_jobs: usize,
    pub shards: usize,
    /// Answers to generate.
    pub generations: u64,
    /// Verdicts to give: every answer and criteria text, once per judge.
    pub judgements: u64,
    /// Optimizer steps over all training jobs.
    pub train_steps: u64,
}

/// A sweep's plan, as `flotilla sweep check` shows it.
#[derive(Debug, Clone)]
pub struct Preview {
    pub jobs: Vec<PreviewJob>,
    pub totals: PreviewTotals,
    pub cells: Vec<Cell>,
    /// Every file the sweep names, by sweep-path key: the local file and its size.
    pub files: BTreeMap<String, (PathBuf, u64)>,
}

impl Preview {
    /// Bytes uploaded with the sweep.
    pub fn upload_bytes(&self) -> u64 {
        self.files.values().map(|(_, size)| size).sum()
    }
}

fn problem(sweep: &Sweep, message: String) -> SweepErrors {
    SweepError {
        file: sweep.source.clone(),
        line: 0,
        message,
    }
    .into()
}

/// Plan a sweep that [`Sweep::check`] passed on `root` (the user's disk), as a coordinator
/// would plan it, and sum the plan up.
pub fn preview(sweep: &Sweep, root: &FileRoot) -> Result<Preview, SweepErrors> {
    let cells = sweep.cells(root)?;
    let local = sweep
        .local_files(root)
        .map_err(|e| problem(sweep, format!("listing the files it names: {e}")))?;
    let mut files = BTreeMap::new();
    let mut entries = BTreeMap::new();
    for (sweep_path, path) in local {
        let size = std::fs::metadata(&path)
            .map_err(|e| problem(sweep, format!("{}: {e}", path.display())))?
            .len();
        let key = file_key(&sweep_path);
        // The plan only names files; their hashes matter once they are uploaded.
        entries.insert(
            key.clone(),
            FileEntry {
                path: key.clone(),
                sha256: String::new(),
                size,
            },
        );
        files.insert(key, (path, size));
    }
    let planned =
        plan::plan("check", sweep, &cells, &entries).map_err(|e| problem(sweep, e.to_string()))?;

    // The answers of each generate job, for the judge job after it (same cut, same cases).
    let mut generated: HashMap<String, Vec<Case>> = HashMap::new();
    let mut sampled: HashMap<String, u64> = HashMap::new();
    let mut jobs = Vec::new();
    let mut totals = PreviewTotals::default();
    for j in planned {
        let mut job = PreviewJob {
            id: j.id.clone(),
            kind: j.kind.as_str().to_string(),
            label: j.label.clone(),
            model: j.model.clone(),
            depends_on: j.depends_on.clone(),
            shards: j.shards.len(),
            items: 0,
            judgements: 0,
            train: None,
            cases: Vec::new(),
        };
        match (&j.kind, &j.meta) {
            (JobKind::Generate, _) => {
                // Answers per case (`generation.samples`); criteria cases have none to draw.
                let mut samples = 1u64;
                for s in &j.shards {
                    if let Ok(ShardSpec::Generate(g)) = ShardSpec::from_json(s.spec_json.as_bytes())
                    {
                        samples = g.sampling.samples.max(1) as u64;
                        job.cases.extend(g.cases);
                    }
                }
                job.items = job
                    .cases
                    .iter()
                    .filter(|c| c.task != Task::Criteria)
                    .count() as u64
                    * samples;
                sampled.insert(j.id.clone(), samples);
                totals.generate_jobs += 1;
                totals.generations += job.items;
                generated.insert(j.id.clone(), job.cases.clone());
            }
            (
                JobKind::Judge,
                JobMeta::Judge {
                    generate_job,
                    judges,
                    ..
                },
            ) => {
                job.cases = generated.get(generate_job).cloned().unwrap_or_default();
                let samples = sampled.get(generate_job).copied().unwrap_or(1);
                job.items = job
                    .cases
                    .iter()
                    .map(|c| if c.task == Task::Criteria { 1 } else { samples })
                    .sum();
                job.judgements = job.items * judges.len() as u64;
                totals.judge_jobs += 1;
                totals.judgements += job.judgements;
            }
            (JobKind::Train, _) | (JobKind::TrainRound, _) => {
                let config = match &j.meta {
                    JobMeta::TrainRound(run) => Some(run.config.clone()),
                    _ => j.shards.first().and_then(|s| {
                        match ShardSpec::from_json(s.spec_json.as_bytes()) {
                            Ok(ShardSpec::Train(t)) => Some(t.config),
                            _ => None,
                        }
                    }),
                };
                job.train = config.and_then(|c| train_size(&c));
                totals.train_jobs += 1;
                totals.train_steps += job.train.as_ref().map_or(0, |t| t.steps);
            }
            _ => {}
        }
        totals.jobs += 1;
        totals.shards += job.shards;
        jobs.push(job);
    }
    Ok(Preview {
        jobs,
        totals,
        cells,
        files,
    })
}

/// Steps and batch shape of a `train:` block (already validated by [`Sweep::check`]).
fn train_size(config: &serde_json::Value) -> Option<TrainSize> {
    let c: TrainConfig = serde_json::from_value(config.clone()).ok()?;
    Some(TrainSize {
        steps: c.steps as u64,
        sequences_per_step: (c.batch_size * c.grad_accum) as u64,
        max_seq_len: c.max_seq_len as u64,
    })
}
