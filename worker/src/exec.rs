//! Running one shard on this machine, by kind: `generate` (answers, no verdicts), `judge`
//! (verdicts on generated answers), `train` (a LoRA adapter), `noop` (dispatch benchmarks).
//!
//! This is blocking model work; the agent runs it on a blocking thread. The shard's files
//! are already laid out under `root` at their sweep paths; paths in specs are made local on
//! the way in, and made sweep paths again on the way out, so a result does not depend on
//! which worker (or which folder) produced it.

use super::models::{AdapterKey, ModelCache};
use candle_core::Device;
use flotilla_bench::api_model::EndpointModel;
use flotilla_bench::dataset::{Case, Task};
use flotilla_bench::prompts::Variant;
use flotilla_bench::retrieval::Retriever;
use flotilla_bench::runner::{judge_result, Answerer, CaseResult, EvalSettings, Runner};
use flotilla_bench::setup::JudgePanel;
use flotilla_contract::provenance::{file_hash, Machine, Origin};
use flotilla_contract::shard::{
    GenerateResult, GenerateShard, JudgeResult, JudgeShard, NoopResult, NoopShard, TrainResult,
    TrainRoundResult, TrainRoundShard, TrainShard,
};
use flotilla_contract::{JudgeSpec, ShardOutput, ShardSpec};
use flotilla_engine::error::Error;
use flotilla_proto::v1::FileRef;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a shard did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardError {
    /// The input is bad (unreadable spec, model missing, bad training config): retrying on
    /// another worker will not help much; the task budget decides.
    Task(String),
    /// This machine failed (device error, disk, network): another worker may succeed.
    Infrastructure(String),
    /// The coordinator cancelled the attempt.
    Cancelled,
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardError::Task(m) => write!(f, "{m}"),
            ShardError::Infrastructure(m) => write!(f, "{m}"),
            ShardError::Cancelled => write!(f, "cancelled"),
        }
    }
}

impl From<Error> for ShardError {
    fn from(e: Error) -> Self {
        match e {
            // A model that is missing or unusable, bad settings, a template that does not
            // render: the shard's input is at fault.
            Error::Template(_) => ShardError::Task(e.to_string()),
            // The device ran out of memory: this machine cannot hold the model and this
            // shard's prompts; another one may.
            Error::Candle(_) if is_out_of_memory(&e.to_string()) => {
                ShardError::Infrastructure(format!(
                    "the device ran out of memory ({e}); the model and this shard's prompts do \
                     not fit in this worker's free memory, so the shard goes back to the queue"
                ))
            }
            // The device or the disk failed under us.
            Error::Candle(_) => ShardError::Infrastructure(e.to_string()),
            Error::Contract(e) => e.into(),
        }
    }
}

/// Whether a device error says it ran out of memory (CUDA's `CUDA_ERROR_OUT_OF_MEMORY`,
/// cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`, Metal's and the allocator's "out of memory").
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out_of_memory")
        || m.contains("out of memory")
        || m.contains("alloc_failed")
        || m.contains("failed to allocate")
}

impl From<flotilla_contract::Error> for ShardError {
    fn from(e: flotilla_contract::Error) -> Self {
        use flotilla_contract::Error as C;
        match e {
            C::File { .. } | C::Input(_) => ShardError::Task(e.to_string()),
            C::Io { .. } => ShardError::Infrastructure(e.to_string()),
        }
    }
}

/// What a shard needs besides its spec.
pub struct ShardContext<'a> {
    pub worker_id: &'a str,
    pub models: &'a ModelCache,
    pub device: &'a Device,
    /// The device as the worker was told (`cpu`, `cuda:0`), for provenance.
    pub device_name: &'a str,
    /// Where the shard's files are, at their sweep paths.
    pub root: &'a Path,
    /// The files laid out under `root` (for the identity of an adapter).
    pub files: &'a [FileRef],
    /// A scratch folder for what the shard writes (a trained adapter).
    pub scratch: &'a Path,
    /// Where document chunk embeddings are cached between shards (none: in memory only).
    pub embeddings_cache: Option<&'a Path>,
    pub cancel: &'a AtomicBool,
    /// Called with (done, total) as work units finish.
    pub progress: &'a (dyn Fn(u32, u32) + Sync),
    /// Where pushed models are laid out (none: a shard naming one fails).
    pub pushed_models: Option<&'a Path>,
}

impl ShardContext<'_> {
    /// What to load for `spec`: a pushed model (`coordinator:NAME`) is laid out from the
    /// shard's files into one place on this disk (the model cache then loads it from there,
    /// once for every shard of it) and that place returned; any other spec as it is.
    fn model(&self, spec: &str) -> Result<String, ShardError> {
        let Some(name) = spec.strip_prefix("coordinator:") else {
            return Ok(spec.to_string());
        };
        let dir = self.pushed_models.ok_or_else(|| {
            ShardError::Infrastructure(format!("model {spec}: this worker keeps no pushed models"))
        })?;
        let path = crate::artifacts::pushed_model(dir, name, self.files, self.root)
            .map_err(|e| ShardError::Infrastructure(format!("model {spec}: {e}")))?
            .display()
            .to_string();
        self.models.set_local(spec, &path);
        Ok(path)
    }

    fn check_cancel(&self) -> Result<(), ShardError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(ShardError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A sweep path made local.
    fn local(&self, sweep_path: &str) -> Result<PathBuf, ShardError> {
        super::artifacts::sweep_path(sweep_path)
            .map(|p| self.root.join(p))
            .map_err(|e| ShardError::Task(e.to_string()))
    }

    /// A local path made a sweep path again (unchanged if it is not under `root`).
    fn sweep(&self, local: &Path) -> PathBuf {
        local
            .strip_prefix(self.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| local.to_path_buf())
    }
}

/// What a successful shard produced.
#[derive(Debug)]
pub struct Completed {
    /// What `ShardResult.output` carries.
    pub output: ShardOutput,
    /// Work units done: cases, judged answers, training tokens.
    pub units: u64,
    /// Files to upload before reporting, with the names they are reported under.
    pub uploads: Vec<(String, PathBuf)>,
}

/// Runs the shard whose spec (`Assignment.spec`, a tagged [`ShardSpec`]) is `spec_json`. A
/// spec that does not read, or of a kind this worker does not know, is a task failure.
pub fn execute(spec_json: &[u8], ctx: &ShardContext) -> Result<Completed, ShardError> {
    match ShardSpec::from_json(spec_json)? {
        ShardSpec::Noop(spec) => noop(spec, ctx),
        ShardSpec::Generate(spec) => generate(spec, ctx),
        ShardSpec::Judge(spec) => judge(spec, ctx),
        ShardSpec::Train(spec) => train(spec, ctx),
        ShardSpec::TrainRound(spec) => train_round(spec, ctx),
    }
}

fn noop(spec: NoopShard, ctx: &ShardContext) -> Result<Completed, ShardError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(spec.sleep_ms);
    while std::time::Instant::now() < deadline {
        ctx.check_cancel()?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
    }
    ctx.check_cancel()?;
    if let Some(message) = spec.fail {
        return Err(ShardError::Task(message));
    }
    (ctx.progress)(1, 1);
    Ok(Completed {
        output: ShardOutput::Noop(NoopResult {
            worker_id: ctx.worker_id.to_string(),
        }),
        units: spec.units,
        uploads: Vec::new(),
    })
}

/// The identity of the adapter folder `dir` (a sweep path): a hash of the names and hashes
/// of its files, so two adapters with the same name never share a cache entry.
fn adapter_identity(files: &[FileRef], dir: &str) -> String {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut parts: Vec<String> = files
        .iter()
        .filter(|f| f.path.starts_with(&prefix))
        .map(|f| {
            let sha = f.artifact.as_ref().map(|a| a.sha256.as_str()).unwrap_or("");
            format!("{}={sha}", f.path)
        })
        .collect();
    parts.sort();
    flotilla_client::hash::sha256_hex(parts.join("\n").as_bytes())
}

/// The span of loading (or finding loaded) a model for a shard.
fn load_span(model: &str) -> tracing::Span {
    tracing::info_span!(target: flotilla_client::telemetry::TARGET, "load model", model)
}

fn generate(spec: GenerateShard, ctx: &ShardContext) -> Result<Completed, ShardError> {
    let adapter = match &spec.adapter {
        Some(a) => Some(AdapterKey {
            id: adapter_identity(ctx.files, &a.dir),
            dir: ctx.local(&a.dir)?,
        }),
        None => None,
    };
    // The model under test: loaded here, or behind an OpenAI-compatible endpoint.
    let api = EndpointModel::parse(&spec.model)
        .transpose()
        .map_err(ShardError::Task)?;
    if api.is_some() && adapter.is_some() {
        return Err(ShardError::Task(format!(
            "model {} is behind an API, which takes no LoRA adapter",
            spec.model
        )));
    }
    if api.is_none() {
        ctx.model(&spec.model)?;
    }
    let model = match &api {
        Some(_) => None,
        None => Some(
            load_span(&spec.model)
                .in_scope(|| ctx.models.language(&spec.model, adapter.as_ref()))?,
        ),
    };
    let variant = match Variant::parse(&spec.variant).map_err(ShardError::from)? {
        Variant::Custom { template } => Variant::Custom {
            template: ctx.local(&template)?.display().to_string(),
        },
        v => v,
    };
    let cases = spec
        .cases
        .iter()
        .map(|c| {
            let documents = c
                .documents
                .iter()
                .map(|d| ctx.local(&d.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Case {
                documents,
                ..c.clone()
            })
        })
        .collect::<Result<Vec<_>, ShardError>>()?;
    // RAG cases need the embedder; in bm25 mode only its tokenizer (to size the chunks).
    let rag = cases.iter().any(|c| c.task == Task::Rag);
    let embedder = if rag && spec.retrieval.chunks.mode.uses_embedder() {
        Some(
            load_span(&spec.retrieval.embedder)
                .in_scope(|| ctx.models.embedding(&spec.retrieval.embedder))?,
        )
    } else {
        None
    };
    let retriever = match embedder.as_deref() {
        Some(e) => Some(Retriever::new(
            e,
            spec.retrieval.chunks,
            ctx.embeddings_cache.map(Path::to_path_buf),
        )),
        None if rag => Some(Retriever::lexical(
            &spec.retrieval.embedder,
            spec.retrieval.chunks,
            ctx.embeddings_cache.map(Path::to_path_buf),
        )?),
        None => None,
    };
    let settings = EvalSettings {
        model_label: spec.model_label.clone(),
        adapter_label: spec
            .adapter
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| "base".into()),
        variants: vec![variant],
        top_k: spec.retrieval.top_k,
        truncation: spec.truncation,
        sampling: spec.sampling.clone(),
        rubric: None,
    };
    let answerer = match (&model, &api) {
        (Some(m), _) => Answerer::Local(m),
        (None, Some(e)) => Answerer::Endpoint(e),
        (None, None) => {
            return Err(ShardError::Task(format!(
                "model {}: nothing to run",
                spec.model
            )))
        }
    };
    let mut runner = Runner::new(answerer, retriever.as_ref(), Vec::new(), settings);
    let total = cases.len() as u32;
    let mut results: Vec<CaseResult> = Vec::with_capacity(cases.len());
    (ctx.progress)(0, total);
    for (i, case) in cases.iter().enumerate() {
        ctx.check_cancel()?;
        results.extend(runner.generate(std::slice::from_ref(case), |_| {}));
        (ctx.progress)(i as u32 + 1, total);
    }
    for r in &mut results {
        for hit in &mut r.hits {
            hit.document = ctx.sweep(&hit.document);
        }
        if let Some(label) = &spec.variant_label {
            r.variant = label.clone();
        } else if r.variant.starts_with("custom:") {
            r.variant = spec.variant.clone();
        }
        if let Some(e) = &r.error {
            r.error = Some(e.replace(&format!("{}/", ctx.root.display()), ""));
        }
    }
    // Provenance: the files this shard's answers depend on (hashes are cached per file).
    let mut generate_files = vec![match (&model, &api) {
        (Some(m), _) => file_hash("model", &spec.model, &m.info.path),
        (None, e) => flotilla_contract::provenance::FileHash {
            role: "model".into(),
            name: spec.model.clone(),
            path: e.as_ref().map(|e| e.base_url.clone()).unwrap_or_default(),
            ..Default::default()
        },
    }];
    if let (Some(a), Some(key)) = (&spec.adapter, &adapter) {
        let mut h = file_hash("adapter", &a.name, &key.dir);
        h.path = a.dir.clone();
        generate_files.push(h);
    }
    if let Some(e) = embedder.as_deref() {
        generate_files.push(file_hash("embedder", &spec.retrieval.embedder, &e.path));
    }
    Ok(Completed {
        units: results.len() as u64,
        output: ShardOutput::Generate(GenerateResult {
            cases: results,
            origin: Some(Origin {
                machine: Machine::this(ctx.worker_id, ctx.device_name),
                files: generate_files,
            }),
        }),
        uploads: Vec::new(),
    })
}

fn judge(spec: JudgeShard, ctx: &ShardContext) -> Result<Completed, ShardError> {
    // The sweep's judge names, already resolved by the coordinator (`self` is the model under
    // test), read through the contract's one parser.
    let named = spec
        .judges
        .iter()
        .map(|j| {
            let parsed = j
                .model
                .parse::<JudgeSpec>()
                .map_err(|e| ShardError::Task(format!("judge {}: {e}", j.name)))?;
            Ok((j.name.clone(), parsed))
        })
        .collect::<Result<Vec<_>, ShardError>>()?;
    for j in &spec.judges {
        if j.model.starts_with("coordinator:") {
            ctx.model(&j.model)?;
        }
    }
    let panel = JudgePanel::resolve(&named, spec.scale, spec.explanation_tokens, None, |model| {
        load_span(model).in_scope(|| ctx.models.language(model, None))
    })?;
    let judges = panel.judges();
    let rubric = match &spec.rubric {
        Some(path) => {
            let local = ctx.local(path)?;
            Some(
                std::fs::read_to_string(&local)
                    .map_err(|e| ShardError::Task(format!("rubric template {path}: {e}")))?,
            )
        }
        None => None,
    };
    let total = spec.items.len() as u32;
    let mut results = Vec::with_capacity(spec.items.len());
    (ctx.progress)(0, total);
    for (i, item) in spec.items.iter().enumerate() {
        ctx.check_cancel()?;
        let mut r = item.result.clone();
        judge_result(&judges, &mut r, item.criteria.as_deref(), rubric.as_deref());
        results.push(r);
        (ctx.progress)(i as u32 + 1, total);
    }
    Ok(Completed {
        units: results.len() as u64,
        output: ShardOutput::Judge(JudgeResult {
            cases: results,
            origin: Some(Origin {
                machine: Machine::this(ctx.worker_id, ctx.device_name),
                files: panel.files(),
            }),
        }),
        uploads: Vec::new(),
    })
}

fn train(spec: TrainShard, ctx: &ShardContext) -> Result<Completed, ShardError> {
    use flotilla_train::{TrainConfig, TrainEvent};
    let source = PathBuf::from(format!("adapter {}", spec.adapter_name));
    let config = TrainConfig::from_json_value(&spec.config, &source, ctx.root)?;
    let out = ctx.scratch.join("train");
    ctx.check_cancel()?;
    let mut on_event = |event: &TrainEvent| {
        if let TrainEvent::Step(step) = event {
            (ctx.progress)(step.step as u32, step.total_steps as u32);
        }
        // Returning false stops training between steps: the shard was cancelled.
        !ctx.cancel.load(Ordering::Relaxed)
    };
    let model = ctx.model(&spec.model)?;
    let trained = flotilla_train::train(&config, &model, &out, false, ctx.device, &mut on_event);
    ctx.check_cancel()?;
    let summary = trained?;
    ctx.check_cancel()?;
    let mut uploads = Vec::new();
    let entries = std::fs::read_dir(&summary.adapter)
        .map_err(|e| ShardError::Infrastructure(format!("{}: {e}", summary.adapter.display())))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_file() {
            uploads.push((e.file_name().to_string_lossy().into_owned(), path));
        }
    }
    uploads.sort();
    let mut metrics = serde_json::to_value(&summary).expect("summary serializes");
    if let Some(m) = metrics.as_object_mut() {
        // A local path on this worker: meaningless elsewhere.
        m.remove("adapter");
    }
    Ok(Completed {
        units: summary.tokens as u64,
        output: ShardOutput::Train(TrainResult { metrics }),
        uploads,
    })
}

/// One worker's part of a distributed training round (`flotilla_train::rounds`). The model
/// and data stay loaded for the run's next round; the contribution is uploaded as
/// `contribution.safetensors`, compressed as the run says; round 0 also uploads the initial
/// adapter's files, from which the coordinator starts.
fn train_round(spec: TrainRoundShard, ctx: &ShardContext) -> Result<Completed, ShardError> {
    use flotilla_contract::tensors::TensorSet;
    use flotilla_train::rounds::RoundTrainer;
    use flotilla_train::TrainConfig;
    let source = PathBuf::from(format!("adapter {}", spec.adapter_name));
    let config = TrainConfig::from_json_value(&spec.config, &source, ctx.root)?;
    let compression = config
        .distributed
        .as_ref()
        .map(|d| d.compression)
        .unwrap_or_default();
    // The run's identity: the same model and config (sweep paths, so the same on every
    // worker and every round).
    let key = format!("{}\n{}", spec.model, spec.config);
    ctx.check_cancel()?;
    let global = match &spec.adapter {
        Some(dir) => {
            let file = ctx.local(dir)?.join("adapter_model.safetensors");
            let bytes = std::fs::read(&file)
                .map_err(|e| ShardError::Infrastructure(format!("{}: {e}", file.display())))?;
            Some(TensorSet::decode(&bytes, &file.display().to_string())?)
        }
        None => None,
    };
    let mut slot = ctx.models.round_trainer();
    let trainer = match slot.take() {
        Some(t) if t.key == key => slot.insert(t),
        old => {
            // Free the previous run's trainer before loading the next one.
            drop(old);
            let model = ctx.model(&spec.model)?;
            let loaded = load_span(&spec.model)
                .in_scope(|| RoundTrainer::new(&config, &model, key, ctx.device))?;
            slot.insert(loaded)
        }
    };
    let total = spec.micro_batches.len() as u32;
    (ctx.progress)(0, total);
    let out = trainer.run(&spec, global.as_ref())?;
    ctx.check_cancel()?;
    let dir = ctx.scratch.join("round");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ShardError::Infrastructure(format!("{}: {e}", dir.display())))?;
    let mut uploads = Vec::new();
    let mut contribution_bytes = 0;
    if !out.contribution.is_empty() {
        let bytes = out.contribution.encode(compression)?;
        contribution_bytes = bytes.len() as u64;
        let file = dir.join("contribution.safetensors");
        std::fs::write(&file, bytes)
            .map_err(|e| ShardError::Infrastructure(format!("{}: {e}", file.display())))?;
        uploads.push(("contribution.safetensors".to_string(), file));
    }
    if spec.adapter.is_none() {
        let init = dir.join("initial");
        let _ = std::fs::remove_dir_all(&init);
        // The adapter as the seed made it, before this round's training moved it.
        trainer.save_initial(&init)?;
        for name in ["adapter_config.json", "adapter_model.safetensors"] {
            uploads.push((format!("initial/{name}"), init.join(name)));
        }
    }
    (ctx.progress)(total, total);
    Ok(Completed {
        units: out.tokens,
        output: ShardOutput::TrainRound(TrainRoundResult {
            loss: out.loss,
            target_tokens: out.target_tokens,
            tokens: out.tokens,
            eval_loss: out.eval_loss,
            contribution_bytes,
        }),
        uploads,
    })
}

#[cfg(test)]
mod tests;
