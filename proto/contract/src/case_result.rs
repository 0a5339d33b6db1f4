//! One evaluated case: what the benchmark engine records for a case under one configuration
//! (model x adapter x variant), and the settings that shape it (truncation, chunking,
//! retrieval). The coordinator stores and aggregates these; it never computes them.

use crate::dataset::Task;
use crate::error::{Error, Result};
use crate::judging::Verdict;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What to do with a document longer than the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the beginning.
    Head,
    /// Keep the beginning and the end, with a visible `[...]` between.
    HeadTail,
}

impl Truncation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "head" => Ok(Truncation::Head),
            "head_tail" => Ok(Truncation::HeadTail),
            other => Err(Error::input(format!(
                "--truncation {other}: expected head or head_tail"
            ))),
        }
    }
}

impl std::str::FromStr for Truncation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Truncation::parse(s)
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Truncation::Head => "head",
            Truncation::HeadTail => "head_tail",
        })
    }
}

/// A recorded truncation: never a silent cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruncationRecord {
    pub policy: Truncation,
    pub original_tokens: usize,
    pub kept_tokens: usize,
}

/// Everything about one case under one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case_id: String,
    pub task: Task,
    pub language: String,
    pub model: String,
    pub adapter: String,
    pub variant: String,
    /// Which answer to the case this is (0-based), when the run draws several per case
    /// (`samples`); the report averages a case's samples before anything else, so the case
    /// stays the unit of resampling.
    #[serde(default)]
    pub sample: usize,
    pub query: String,
    pub reference_answer: Option<String>,
    pub prompt: String,
    pub raw_answer: String,
    pub answer: String,
    /// The retrieved chunks that went into the prompt (after the context budget).
    pub hits: Vec<Hit>,
    /// Share of the gold passages among the top-k chunks retrieved (retrieval's quality).
    pub recall_at_k: Option<f64>,
    /// Share of the gold passages among the chunks that fit the context budget (what the
    /// model was shown; below `recall_at_k` when the budget cut retrieved chunks).
    #[serde(default)]
    pub context_recall: Option<f64>,
    pub truncation: Option<TruncationRecord>,
    /// Structured variants: why the first reply did not parse, if it did not.
    pub parse_error: Option<String>,
    pub parse_retried: bool,
    /// Structured variants: the retry did not parse either. Such an answer is a failure: it is
    /// not judged, it is rated at the scale's minimum, and its reference metrics are those of
    /// an empty answer (docs/EVAL.md).
    #[serde(default)]
    pub parse_failed: bool,
    /// What the model was given to answer from: the numbered retrieved passages (RAG) or the
    /// document as it fitted the context (document analysis). The judge reads it.
    #[serde(default)]
    pub context: String,
    pub verdicts: Vec<Verdict>,
    /// Mean of the valid judge ratings (None: no valid rating).
    pub score: Option<f64>,
    pub metrics: Metrics,
    /// Tokens of the first attempt (a structured retry's are counted apart).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Tokens of the structured retry, when there was one.
    #[serde(default)]
    pub retry_prompt_tokens: usize,
    #[serde(default)]
    pub retry_completion_tokens: usize,
    pub latency_s: f64,
    /// Set when the case could not run; nothing else is meaningful then.
    pub error: Option<String>,
}

/// Deterministic metrics of one answer (computed by `flotilla_bench::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub exact_match: bool,
    /// Set when the case gives a regex: whether the answer matches it.
    pub regex_match: Option<bool>,
    pub token_f1: f64,
    pub fabricated_urls: Vec<String>,
    pub fabricated_numbers: Vec<String>,
}

/// How documents are cut into chunks and how much of the retrieved chunks a prompt gets.
///
/// `size` and `overlap` count the **embedding model's own tokens** (its special tokens
/// excluded), so a chunk never runs past the embedder's window: a `size` above the window
/// (MiniLM: 256 tokens, 254 after `[CLS]`/`[SEP]`) is capped at it. `context_tokens` is the
/// budget of the retrieved context in the **generator's** tokens: chunks go into the prompt
/// best first while they fit, the first one that does not is cut visibly (`[...]`), the rest
/// are dropped. `mode` ranks the chunks (hybrid BM25 + dense by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSettings {
    pub size: usize,
    pub overlap: usize,
    #[serde(default)]
    pub mode: crate::retrieval::RetrievalMode,
    #[serde(default = "default_context_tokens")]
    pub context_tokens: usize,
}

fn default_context_tokens() -> usize {
    ChunkSettings::default().context_tokens
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            size: 200,
            overlap: 40,
            mode: crate::retrieval::RetrievalMode::Hybrid,
            context_tokens: 1024,
        }
    }
}

/// A retrieved chunk with its score and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub document: PathBuf,
    pub chunk: usize,
    pub score: f32,
    pub text: String,
}
