//! The sweep file: one YAML document naming the whole matrix to run — models x prompt
//! variants x adapters x datasets (tasks, languages) — with judge, generation, retrieval,
//! shard size, retries and seed. The format is documented in docs/SWEEPS.md.
//!
//! Reading a sweep happens in two steps, and both collect *every* problem (one
//! [`SweepError`] each, with file and line) before giving up:
//! 1. [`parse`]: the YAML's shape — unknown keys, wrong types, empty axes, unknown prompt
//!    variants, malformed model specs.
//! 2. [`Sweep::check`]: what the sweep points at — case files (loaded, every bad line
//!    reported), documents, training data, templates, adapter folders, and models (fully
//!    resolved on a laptop; only syntactically on a cluster's coordinator, whose host need not
//!    hold the models: a worker missing one reports a task failure naming it).
//!
//! Paths in a sweep are relative to the sweep file's folder. The CLI uploads every file the
//! sweep names ([`Sweep::local_files`]); the coordinator keeps its copy under sweep-path
//! *keys* ([`file_key`]) and checks the sweep again against that copy ([`FileRoot`]).

mod check;
mod parse;
mod preview;
pub mod yaml;

pub use check::{file_key, model_path, train_paths, Cell, FileRoot, ModelCheck};
pub use parse::parse;
pub use preview::{preview, Preview, PreviewJob, PreviewTotals};

use flotilla_contract::case_result::ChunkSettings;
use flotilla_contract::case_result::Truncation;
use flotilla_contract::dataset::Task;
use flotilla_contract::judging::Scale;
use flotilla_contract::shard::RetrievalSettings;
use flotilla_contract::variant::Variant;
use flotilla_contract::SamplingParams;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use yaml::{Node, Reader, Value};

/// One problem in a sweep file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single line (an empty file).
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for SweepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

/// Every problem found in a sweep file, in file order; shown one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct SweepErrors {
    pub errors: Vec<SweepError>,
}

impl std::fmt::Display for SweepErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{n} problem{} in the sweep",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl From<SweepError> for SweepErrors {
    fn from(e: SweepError) -> Self {
        SweepErrors { errors: vec![e] }
    }
}

/// A model under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The name in results (default: the spec itself).
    pub name: String,
    /// A model spec as `flotilla_contract::model_ref::resolve` takes it.
    pub model: String,
    pub line: usize,
}

/// Where an adapter comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterSource {
    /// No adapter: the base model.
    None,
    /// An existing PEFT folder (sweep path).
    Dir(String),
    /// A LoRA adapter trained by the sweep, one per model: the `train:` block as JSON (a
    /// `flotilla_contract::train_config::TrainConfig` without `model` and `out`).
    Train(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterEntry {
    /// `base` for none; the name in results (`CaseResult.adapter`).
    pub name: String,
    pub source: AdapterSource,
    pub line: usize,
}

/// A benchmark: a case file, its documents, and which of its cases to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetEntry {
    pub name: String,
    /// Sweep path of the case file (Flow or flotilla JSONL).
    pub cases: String,
    /// Sweep path of the documents folder (default: the case file's folder).
    pub documents: Option<String>,
    /// Tasks to run (default: the sweep's `tasks`).
    pub tasks: Vec<Task>,
    /// Languages to run (default: the sweep's `languages`; empty: all).
    pub languages: Vec<String>,
    /// At most this many cases per (task, language) cell, in file order.
    pub limit: Option<usize>,
    /// Sweep path of a Jinja rubric template the judges use for this dataset's cases in place
    /// of flotilla's per-task rubrics (docs/EVAL.md).
    #[serde(default)]
    pub rubric: Option<String>,
    pub line: usize,
}

/// The jury.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeEntry {
    /// `self` (the model under test, without adapter), a model spec, or
    /// `openai:MODEL@BASE_URL`.
    pub judges: Vec<String>,
    pub scale: Scale,
    pub explanation_tokens: usize,
    pub line: usize,
}

/// Separate retry budgets: bad input vs failed machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Extra attempts after a task failure (the input is bad: unreadable case, model missing).
    pub task: u32,
    /// Extra attempts after an infrastructure failure (worker died, stream dropped, out of
    /// memory).
    pub infrastructure: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            task: 1,
            infrastructure: 3,
        }
    }
}

/// A validated sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The file it was read from (for messages and results folders).
    pub source: PathBuf,
    pub name: String,
    pub seed: u64,
    pub models: Vec<ModelEntry>,
    /// Prompt variant names (`Variant::name`), the first is the comparisons' baseline.
    pub variants: Vec<String>,
    /// Names given to variants for the results (`{name: polite, variant: custom:p.jinja}`):
    /// spec -> name.
    #[serde(default)]
    pub variant_names: std::collections::BTreeMap<String, String>,
    pub adapters: Vec<AdapterEntry>,
    pub datasets: Vec<DatasetEntry>,
    pub judge: JudgeEntry,
    /// Sampling settings for answers; `seed` is the sweep's.
    pub sampling: SamplingParams,
    pub truncation: Truncation,
    pub retrieval: RetrievalSettings,
    /// Cases per generate / judge shard.
    pub shard_size: usize,
    pub retries: Retries,
}

impl Sweep {
    /// How results name the variant `spec`: its given name, else the spec itself.
    pub fn variant_label(&self, spec: &str) -> String {
        self.variant_names
            .get(spec)
            .cloned()
            .unwrap_or_else(|| spec.to_string())
    }

    /// The adapter every other adapter is compared against: `base` if the sweep has it,
    /// else the first.
    pub fn baseline_adapter(&self) -> &str {
        self.adapters
            .iter()
            .find(|a| a.source == AdapterSource::None)
            .unwrap_or(&self.adapters[0])
            .name
            .as_str()
    }

    /// The folder the sweep's relative paths start from (the sweep file's folder).
    pub fn dir(&self) -> &Path {
        self.source.parent().unwrap_or(Path::new(""))
    }

    /// A model spec from the sweep (a judge, the embedder) as a worker loads it: a relative
    /// path joined to the sweep's folder; demo aliases, `hf:` ids, `self` and `openai:`
    /// judges as written. (`models[].model` is already resolved so by [`parse`].)
    pub fn model_spec(&self, spec: &str) -> String {
        if spec == "self" || spec.starts_with("openai:") || spec.starts_with(crate::models::PREFIX)
        {
            return spec.to_string();
        }
        model_path(spec, self.dir())
    }

    /// Read, parse and check a sweep file on this machine (paths relative to its folder).
    pub fn load(path: &Path, models: ModelCheck) -> Result<Sweep, SweepErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| SweepError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the sweep file: {e}"),
        })?;
        Self::load_text(&text, path, models)
    }

    /// As [`Sweep::load`], for sweep text that stands for `path` (relative paths are read
    /// beside it).
    ///
    /// Every problem comes out of one call: the shape's (unknown keys, bad values) and, for
    /// whatever part of the file parsed, what it points at (missing files, bad case lines,
    /// models) — except a second complaint about a line whose shape is already wrong.
    pub fn load_text(text: &str, path: &Path, models: ModelCheck) -> Result<Sweep, SweepErrors> {
        let (sweep, mut errors) = parse::parse_all(text, path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if let Err(checked) = sweep.check(&FileRoot::local(dir), models) {
            let shape_lines: Vec<usize> = errors
                .iter()
                .filter(|e| e.line > 0 && e.file == sweep.source)
                .map(|e| e.line)
                .collect();
            errors.extend(
                checked
                    .errors
                    .into_iter()
                    .filter(|e| !(e.file == sweep.source && shape_lines.contains(&e.line))),
            );
        }
        if errors.is_empty() {
            return Ok(sweep);
        }
        // The sweep file's problems first, by line; then those of the files it names.
        errors.sort_by_key(|e| (e.file != sweep.source, e.line));
        Err(SweepErrors { errors })
    }
}
