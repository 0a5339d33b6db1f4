//! Shard specs and results: the JSON documents inside `Assignment.spec_json` and
//! `ShardResult.result_json` of the `Work` stream (proto/flotilla/v1/cluster.proto).
//!
//! The coordinator (`flotilla-coordinator`, `plan.rs`) writes the specs; the worker process
//! runs them and answers with the matching result. Both sides use these types, so this file is
//! the contract between them. The kind of a shard is `Assignment.kind`: one of [`KIND_TRAIN`],
//! [`KIND_GENERATE`], [`KIND_JUDGE`], [`KIND_NOOP`].
//!
//! **Paths.** Every path inside a spec (case documents, training data, a custom prompt
//! template, an adapter folder) is a *sweep path*: the path as the sweep file names it,
//! relative to the sweep file's folder, `/`-separated. `Assignment.files` maps each sweep path
//! the shard needs to an artifact (sha256 + size) to download from the coordinator; the worker
//! keeps a local copy per hash and substitutes the local path before running. A folder (a
//! documents folder, an adapter) is every file whose sweep path starts with `folder/`.
//!
//! **Models** are model specs as `flotilla_worker::loader::resolve` takes them (`smollm2`, a
//! GGUF path, an HF folder, `hf:org/name[@rev]`), resolved on the worker: a model missing on
//! the worker is a task failure (`FAILURE_KIND_TASK`) naming the model.

use crate::case_result::{CaseResult, ChunkSettings, Truncation};
use crate::dataset::Case;
use crate::error::{Error, Result};
use crate::judging::Scale;
use crate::sampling::SamplingParams;
use crate::state::JobKind;
use serde::{Deserialize, Serialize};

/// `Assignment.kind` of a LoRA training shard ([`TrainShard`] -> [`TrainResult`]).
pub const KIND_TRAIN: &str = "train";
/// `Assignment.kind` of a generation shard ([`GenerateShard`] -> [`GenerateResult`]).
pub const KIND_GENERATE: &str = "generate";
/// `Assignment.kind` of a judging shard ([`JudgeShard`] -> [`JudgeResult`]).
pub const KIND_JUDGE: &str = "judge";
/// `Assignment.kind` of a no-op shard for dispatch benchmarks ([`NoopShard`] -> [`NoopResult`]).
pub const KIND_NOOP: &str = "noop";

/// An adapter to apply to the model: a PEFT folder (`adapter_config.json` +
/// `adapter_model.safetensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRef {
    /// The sweep's name for the adapter; also `CaseResult.adapter`.
    pub name: String,
    /// Sweep path of the PEFT folder. For an adapter trained by the sweep this is
    /// `adapters/<train job id>`, and its files are the ones the train shard uploaded.
    pub dir: String,
}

/// Retrieval for RAG cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalSettings {
    /// Embedding model spec (default `minilm`).
    pub embedder: String,
    /// Chunks retrieved per question.
    pub top_k: usize,
    /// How documents are cut into chunks before embedding.
    pub chunks: ChunkSettings,
}

/// Generate answers for some cases under one configuration (model x adapter x variant);
/// no judging (that is a [`JudgeShard`] of its own, possibly on another worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateShard {
    /// Model spec to load.
    pub model: String,
    /// The model's name in results (`CaseResult.model`): the sweep's label for it.
    pub model_label: String,
    /// The adapter to apply, or none (`CaseResult.adapter` is then `base`).
    pub adapter: Option<AdapterRef>,
    /// Prompt variant as `flotilla_worker::bench::prompts::Variant::parse` takes it;
    /// `custom:PATH` names a sweep path.
    pub variant: String,
    /// The cases, inline; `Case.documents` hold sweep paths.
    pub cases: Vec<Case>,
    /// Sampling settings; `seed` is the sweep's seed (the same for every shard, so results do
    /// not depend on how cases were cut into shards).
    pub sampling: SamplingParams,
    /// What to do with a document longer than the model's context.
    pub truncation: Truncation,
    /// Retrieval settings; used by RAG cases only.
    pub retrieval: RetrievalSettings,
}

/// What a generate shard produced: one result per case, in the order of the spec, with empty
/// `verdicts` and no `score`. A case that could not run carries its `error` (the shard still
/// succeeds); only a shard that cannot run at all (model missing) is a shard failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResult {
    pub cases: Vec<CaseResult>,
}

/// A judge of a jury.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeModel {
    /// The name written into `Verdict.judge` (the sweep's spelling, e.g. `self`, `smollm2`).
    pub name: String,
    /// Model spec of a local judge, or `openai:MODEL@BASE_URL` for an OpenAI-compatible
    /// endpoint (API key from the worker's `FLOTILLA_JUDGE_API_KEY`). The sweep's `self` is
    /// already replaced by the model under test (without its adapter).
    pub model: String,
}

/// One answer to judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeItem {
    /// The generate result to judge (verdicts empty).
    pub result: CaseResult,
    /// The rubric, for criteria cases (judged as `JudgeInput::Criteria` over `result.query`);
    /// otherwise the answer is judged against `result.reference_answer`.
    pub criteria: Option<String>,
}

/// Judge generated answers with a jury.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeShard {
    pub judges: Vec<JudgeModel>,
    pub scale: Scale,
    /// Tokens allowed for each judge's explanation.
    pub explanation_tokens: usize,
    pub items: Vec<JudgeItem>,
}

/// The judged results, in the order of the spec: each input `CaseResult` with `verdicts` and
/// `score` (`jury_score` of the verdicts) filled in. A result whose generation failed
/// (`error` set) is passed through unjudged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeResult {
    pub cases: Vec<CaseResult>,
}

/// Train a LoRA adapter on one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainShard {
    /// Base model spec.
    pub model: String,
    /// The sweep's adapter name.
    pub adapter_name: String,
    /// The adapter's `train:` block as written in the sweep, as JSON: a
    /// `flotilla_worker::train::config::TrainConfig` (read it with
    /// `TrainConfig::from_json_value`). Paths in it (training data) are sweep paths. If the
    /// block gives no `seed`, the sweep's seed was written into it.
    pub config: serde_json::Value,
}

/// What a train shard produced. The adapter's files (`adapter_config.json`,
/// `adapter_model.safetensors`) are uploaded as artifacts first and listed in
/// `ShardResult.artifacts` with their file names as paths; the coordinator files them under
/// the sweep path `adapters/<train job id>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    /// Training figures (final loss, loss curve, tokens, seconds), as the trainer reports them.
    pub metrics: serde_json::Value,
}

/// A shard that does nothing: for `flotilla bench dispatch` and protocol tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoopShard {
    /// Units of work to report (for throughput accounting).
    #[serde(default)]
    pub units: u64,
    /// Sleep this long before answering (0: answer at once).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail with this message as a task failure instead of succeeding (tests of retries).
    #[serde(default)]
    pub fail: Option<String>,
}

/// What a no-op shard answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoopResult {
    /// The worker that ran it.
    pub worker_id: String,
}

/// What a shard must do: one variant per kind of work. This is what `Assignment.spec` carries
/// (JSON, tagged by `kind`) and what the state database stores per shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardSpec {
    Train(TrainShard),
    Generate(GenerateShard),
    Judge(JudgeShard),
    Noop(NoopShard),
}

impl ShardSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            ShardSpec::Train(_) => JobKind::Train,
            ShardSpec::Generate(_) => JobKind::Generate,
            ShardSpec::Judge(_) => JobKind::Judge,
            ShardSpec::Noop(_) => JobKind::Noop,
        }
    }

    /// The spec as the wire and the state database carry it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("shard specs always serialise")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::input(format!("shard spec: {e}")))
    }
}

/// What a shard produced, matching its [`ShardSpec`]'s kind: what `ShardResult.output`
/// carries and the state database stores per result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardOutput {
    Train(TrainResult),
    Generate(GenerateResult),
    Judge(JudgeResult),
    Noop(NoopResult),
}

impl ShardOutput {
    pub fn kind(&self) -> JobKind {
        match self {
            ShardOutput::Train(_) => JobKind::Train,
            ShardOutput::Generate(_) => JobKind::Generate,
            ShardOutput::Judge(_) => JobKind::Judge,
            ShardOutput::Noop(_) => JobKind::Noop,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("shard outputs always serialise")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::input(format!("shard output: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_json() {
        let spec = NoopShard {
            units: 3,
            sleep_ms: 0,
            fail: None,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<NoopShard>(&json).unwrap(), spec);
        // Old or minimal specs still read.
        assert_eq!(
            serde_json::from_str::<NoopShard>("{}").unwrap(),
            NoopShard::default()
        );
    }
}
