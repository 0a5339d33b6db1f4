//! The shard contract: [`ShardSpec`] (what a shard must do) inside `Assignment.spec` and
//! [`ShardOutput`] (what it produced) inside `ShardResult.output` of the `Work` stream
//! (proto/flotilla/v1/cluster.proto), each JSON of one enum tagged by `kind` with one variant
//! per [`JobKind`]: train, generate, judge, noop.
//!
//! The coordinator (`flotilla-coordinator`, `plan.rs`) writes the specs and stores them as they
//! travel; the worker process matches on the spec and answers with the output of the same
//! kind. Both sides use these types, so the compiler finds every place a new kind must be
//! handled.
//!
//! **Paths.** Every path inside a spec (case documents, training data, a custom prompt
//! template, an adapter folder) is a *sweep path*: the path as the sweep file names it,
//! relative to the sweep file's folder, `/`-separated. `Assignment.files` maps each sweep path
//! the shard needs to an artifact (sha256 + size) to download from the coordinator; the worker
//! keeps a local copy per hash and substitutes the local path before running. A folder (a
//! documents folder, an adapter) is every file whose sweep path starts with `folder/`.
//!
//! **Models** are model specs as `flotilla_contract::model_ref::resolve` takes them (`smollm2`, a
//! GGUF path, an HF folder, `hf:org/name[@rev]`), resolved on the worker: a model missing on
//! the worker is a task failure (`FAILURE_KIND_TASK`) naming the model.

use crate::case_result::{CaseResult, ChunkSettings, Truncation};
use crate::dataset::Case;
use crate::error::{Error, Result};
use crate::judging::Scale;
use crate::sampling::SamplingParams;
use crate::state::JobKind;
use serde::{Deserialize, Serialize};

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
    /// How documents are cut into chunks (in the embedder's tokens), how chunks are ranked
    /// (`mode`: hybrid, dense, bm25; bm25 loads only the embedder's tokenizer) and the
    /// context budget in the generator's tokens (`context_tokens`).
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
    /// The name results give the variant, when the sweep named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_label: Option<String>,
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
    /// The worker and the files it read (model, adapter, embedder), for provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<crate::provenance::Origin>,
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
    /// Sweep path of a Jinja rubric template (among the shard's files) the judges use in
    /// place of flotilla's per-task rubrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric: Option<String>,
}

/// The judged results, in the order of the spec: each input `CaseResult` with `verdicts` and
/// `score` (`jury_score` of the verdicts) filled in. A result whose generation failed
/// (`error` set) is passed through unjudged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeResult {
    pub cases: Vec<CaseResult>,
    /// The worker and the judges' model files, for provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<crate::provenance::Origin>,
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

/// One worker's part of one round of a distributed training run (`distributed:` in the
/// `train:` block; docs/TRAINING.md). A round is one optimizer step (sync) or `inner_steps`
/// local steps (diloco); the coordinator adds a round's shards when the previous round is
/// applied.
///
/// The training data is one seeded stream of micro-batches (`batch_size` rows each), the same
/// stream a single worker draws: micro-batch `k` is the `k`-th one it would draw. A shard names
/// the micro-batches it computes, so N workers compute exactly the one-worker batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRoundShard {
    /// Base model spec.
    pub model: String,
    pub adapter_name: String,
    /// The `train:` block as JSON, as for [`TrainShard`] (paths are sweep paths).
    pub config: serde_json::Value,
    /// The round (0-based): the optimizer step for sync, the outer step for diloco.
    pub round: u32,
    /// Sweep path of the current global adapter (a PEFT folder: `adapter_config.json` and
    /// `adapter_model.safetensors`); none in round 0, where every worker starts from the
    /// adapter the config's seed initialises (and uploads it, for the coordinator).
    pub adapter: Option<String>,
    /// The global micro-batch indices to compute. sync: this worker's share of the step;
    /// diloco: `inner_steps x grad_accum` of them, `grad_accum` per local step. Empty: an
    /// evaluation-only shard (the held-out loss of `adapter`).
    pub micro_batches: Vec<u64>,
    /// The position of this shard's first micro-batch within its optimizer step (sync):
    /// dropout masks are seeded by (step, position) as on one worker.
    pub first_position: u32,
    /// diloco: the global inner step of this round's first local step (for the learning-rate
    /// schedule).
    pub first_inner_step: u64,
    /// Also compute the held-out loss of `adapter` (before any training in this shard).
    pub eval: bool,
}

/// What a round shard produced. Its tensors are uploaded first as the artifact
/// `contribution.safetensors` (and, in round 0, the initial adapter's two files); see
/// `flotilla_contract::tensors` for the encodings.
///
/// sync: the *sum* over its micro-batches of the gradient of the summed token loss (not yet
/// divided: the coordinator divides by the target tokens of the whole step). diloco: the
/// delta `global - local` after its local steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRoundResult {
    /// Summed negative log-likelihood over its target tokens (sync), or the mean loss over its
    /// local steps (diloco).
    pub loss: f64,
    /// Target (loss-bearing) tokens it computed.
    pub target_tokens: u64,
    /// All tokens it processed (rows x sequence length).
    pub tokens: u64,
    /// Held-out loss of the incoming adapter, when asked.
    pub eval_loss: Option<f64>,
    /// Bytes of the contribution file.
    pub contribution_bytes: u64,
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

/// What a no-op shard answers (an empty answer reads too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    TrainRound(TrainRoundShard),
    Generate(GenerateShard),
    Judge(JudgeShard),
    Noop(NoopShard),
}

impl ShardSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            ShardSpec::Train(_) => JobKind::Train,
            ShardSpec::TrainRound(_) => JobKind::TrainRound,
            ShardSpec::Generate(_) => JobKind::Generate,
            ShardSpec::Judge(_) => JobKind::Judge,
            ShardSpec::Noop(_) => JobKind::Noop,
        }
    }

    /// The spec as the wire and the state database carry it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("shard specs always serialise")
    }

    /// Reads a spec from the wire. The error names the kind when it can be read (`the generate
    /// shard's spec is not valid: ...`), and an unknown kind as such (a worker older than its
    /// coordinator).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        from_tagged(bytes, "spec")
    }
}

/// Reads a `kind`-tagged document, naming the kind in every error.
fn from_tagged<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let kind = sniff_kind(bytes);
    if let Some(k) = &kind {
        if k.parse::<JobKind>().is_err() {
            return Err(Error::input(format!(
                "this worker does not know shard kind {k:?} (it knows train, train_round, \
                 generate, judge, noop); is it older than the coordinator?"
            )));
        }
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Error::input(match kind {
            Some(k) => format!("the {k} shard's {what} is not valid: {e}"),
            None => format!("a shard's {what} is not valid: {e}"),
        })
    })
}

/// The value of the top-level `kind` key, found even in a document that does not parse
/// (for the error message).
fn sniff_kind(bytes: &[u8]) -> Option<String> {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(bytes) {
        return m.get("kind").and_then(|k| k.as_str()).map(str::to_string);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let after = &text[text.find("\"kind\"")? + 6..];
    let after = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(after[..after.find('"')?].to_string())
}

/// What a shard produced, matching its [`ShardSpec`]'s kind: what `ShardResult.output`
/// carries and the state database stores per result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShardOutput {
    Train(TrainResult),
    TrainRound(TrainRoundResult),
    Generate(GenerateResult),
    Judge(JudgeResult),
    Noop(NoopResult),
}

impl ShardOutput {
    pub fn kind(&self) -> JobKind {
        match self {
            ShardOutput::Train(_) => JobKind::Train,
            ShardOutput::TrainRound(_) => JobKind::TrainRound,
            ShardOutput::Generate(_) => JobKind::Generate,
            ShardOutput::Judge(_) => JobKind::Judge,
            ShardOutput::Noop(_) => JobKind::Noop,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("shard outputs always serialise")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        from_tagged(bytes, "output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case_result::Metrics;
    use crate::dataset::Task;

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

    fn case() -> Case {
        Case {
            id: "c1".into(),
            task: Task::Rag,
            language: "ja".into(),
            query: "何?".into(),
            reference_answer: Some("答え".into()),
            documents: vec!["docs/a.txt".into()],
            criteria: None,
            gold_passages: vec!["passage".into()],
            tags: vec!["t".into()],
            answer_regex: Some("答".into()),
        }
    }

    fn case_result() -> CaseResult {
        CaseResult {
            case_id: "c1".into(),
            task: Task::Rag,
            language: "ja".into(),
            model: "m".into(),
            adapter: "base".into(),
            variant: "query_last".into(),
            query: "何?".into(),
            reference_answer: Some("答え".into()),
            prompt: "p".into(),
            raw_answer: "a".into(),
            answer: "a".into(),
            hits: Vec::new(),
            recall_at_k: Some(0.5),
            context_recall: Some(0.5),
            truncation: None,
            parse_error: None,
            parse_retried: false,
            parse_failed: false,
            sample: 0,
            context: String::new(),
            retry_prompt_tokens: 0,
            retry_completion_tokens: 0,
            verdicts: Vec::new(),
            score: Some(7.0),
            metrics: Metrics::default(),
            prompt_tokens: 10,
            completion_tokens: 3,
            latency_s: 0.25,
            error: None,
        }
    }

    /// One of every kind, specs and outputs, through the wire's JSON and back; each carries
    /// its kind's tag.
    #[test]
    fn every_kind_round_trips_tagged() {
        let specs = [
            ShardSpec::Train(TrainShard {
                model: "smollm2".into(),
                adapter_name: "lora".into(),
                config: serde_json::json!({"data": "train.jsonl", "seed": 7}),
            }),
            ShardSpec::TrainRound(TrainRoundShard {
                model: "smollm2".into(),
                adapter_name: "lora".into(),
                config: serde_json::json!({"data": "train.jsonl", "steps": 4}),
                round: 3,
                adapter: Some("adapters/j1/round-000003".into()),
                micro_batches: vec![6, 7],
                first_position: 0,
                first_inner_step: 0,
                eval: true,
            }),
            ShardSpec::Generate(GenerateShard {
                model: "smollm2".into(),
                model_label: "small".into(),
                variant_label: Some("polite".into()),
                adapter: Some(AdapterRef {
                    name: "lora".into(),
                    dir: "adapters/j1".into(),
                }),
                variant: "custom:t.jinja".into(),
                cases: vec![case()],
                sampling: SamplingParams::default(),
                truncation: Truncation::HeadTail,
                retrieval: RetrievalSettings {
                    embedder: "minilm".into(),
                    top_k: 3,
                    chunks: ChunkSettings::default(),
                },
            }),
            ShardSpec::Judge(JudgeShard {
                judges: vec![JudgeModel {
                    name: "self".into(),
                    model: "smollm2".into(),
                }],
                scale: Scale::FLOW,
                explanation_tokens: 64,
                items: vec![JudgeItem {
                    result: case_result(),
                    criteria: Some("rubric".into()),
                }],
                rubric: Some("rubrics/faithful.jinja".into()),
            }),
            ShardSpec::Noop(NoopShard {
                units: 2,
                sleep_ms: 1,
                fail: Some("x".into()),
            }),
        ];
        let mut kinds = Vec::new();
        for spec in specs {
            let json = spec.to_json();
            let tag = format!("\"kind\":\"{}\"", spec.kind());
            assert!(json.contains(&tag), "{json}");
            assert_eq!(ShardSpec::from_json(json.as_bytes()).unwrap(), spec);
            kinds.push(spec.kind());
        }
        assert_eq!(kinds, JobKind::ALL);

        let outputs = [
            ShardOutput::Train(TrainResult {
                metrics: serde_json::json!({"final_loss": 1.5}),
            }),
            ShardOutput::TrainRound(TrainRoundResult {
                loss: 12.5,
                target_tokens: 40,
                tokens: 64,
                eval_loss: Some(2.25),
                contribution_bytes: 4096,
            }),
            ShardOutput::Generate(GenerateResult {
                cases: vec![case_result()],
                origin: Some(crate::provenance::Origin {
                    machine: crate::provenance::Machine::this("w1", "cpu"),
                    files: Vec::new(),
                }),
            }),
            ShardOutput::Judge(JudgeResult {
                cases: vec![case_result()],
                origin: None,
            }),
            ShardOutput::Noop(NoopResult {
                worker_id: "w1".into(),
            }),
        ];
        let mut kinds = Vec::new();
        for out in outputs {
            let json = out.to_json();
            assert_eq!(ShardOutput::from_json(json.as_bytes()).unwrap(), out);
            kinds.push(out.kind());
        }
        assert_eq!(kinds, JobKind::ALL);
    }

    #[test]
    fn bad_specs_name_their_kind_and_unknown_kinds_are_refused() {
        let err = ShardSpec::from_json(br#"{"kind":"generate","model":"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the generate shard's spec is not valid"),
            "{err}"
        );
        let err = ShardSpec::from_json(br#"{"kind":"paint"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"paint\"") && err.contains("older"), "{err}");
        let err = ShardOutput::from_json(b"[]").unwrap_err().to_string();
        assert!(err.contains("shard's output is not valid"), "{err}");
    }
}
