//! `flotilla eval`: a model over benchmark cases, in-process, with judges and statistics;
//! writes the results folder and prints the tables.

use crate::args::{CaseFiles, RetrievalArgs};
use crate::output::{bar, print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_bench::api_model::EndpointModel;
use flotilla_bench::dataset::{load_dataset, Case, Task};
use flotilla_bench::pairwise::PairVerdict;
use flotilla_bench::report::{build_report, markdown, write_outputs};
use flotilla_bench::retrieval::Retriever;
use flotilla_bench::runner::{Answerer, CaseResult, EvalSettings, Judge, Runner};
use flotilla_bench::setup::JudgePanel;
use flotilla_contract::provenance::{file_hash, now_ms, rfc3339, FileHash, Machine, Provenance};
use flotilla_contract::{JudgeSpec, Scale, Truncation, Variant};
use flotilla_engine::loader::flotilla_home;
use flotilla_engine::{device, EmbeddingModel, LanguageModel, LoadOptions, SamplingParams};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The model under test: a GGUF file, HF directory, hf:org/name, a demo alias, or a
    /// model behind an OpenAI-compatible endpoint, `openai:MODEL@BASE_URL` (key from
    /// FLOTILLA_API_KEY, if set; at most FLOTILLA_API_CONCURRENCY requests at once, default 4).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub input: CaseFiles,
    /// Only these tasks (rag, document, criteria); repeatable. (A sweep's `tasks`.)
    #[arg(long)]
    pub task: Vec<Task>,
    /// Only cases in these languages (`en`, `ja`, ...); repeatable. (A sweep's `languages`.)
    #[arg(long)]
    pub language: Vec<String>,
    /// At most this many cases per task and language, the first in file order. (A sweep's
    /// `datasets[].limit`.)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Prompt variants (query_first, query_last, structured, structured_constrained,
    /// custom:FILE.jinja); repeatable; the first is the baseline of the comparisons.
    #[arg(long, default_values_t = vec![Variant::QueryLast])]
    pub variant: Vec<Variant>,
    /// Judges (repeat for a jury): `self` (the model under test), a model path or alias, or
    /// an OpenAI-compatible endpoint `openai:MODEL@BASE_URL` (API key from
    /// FLOTILLA_JUDGE_API_KEY, if set).
    #[arg(long, default_values_t = vec![JudgeSpec::SelfModel])]
    pub judge: Vec<JudgeSpec>,
    /// A Jinja rubric template for the judges in place of flotilla's per-task rubrics (a
    /// sweep's `datasets[].rubric`); variables in docs/EVAL.md.
    #[arg(long, value_name = "FILE.jinja")]
    pub rubric: Option<PathBuf>,
    /// Also compare each variant's answers with the first variant's, pairwise: each judge
    /// reads both answers twice, positions swapped, and picks the better or a tie
    /// (pairwise.jsonl; the report's pairwise table).
    #[arg(long)]
    pub pairwise: bool,
    /// Rating scale: 0-10, or 1-10 as Flow Benchmark Tools uses.
    #[arg(long, default_value = "0-10")]
    pub scale: Scale,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// What to do with a document longer than the context: head or head_tail.
    #[arg(long, default_value = "head_tail")]
    pub truncation: Truncation,
    /// Tokens each answer may have at most. (A sweep's `generation.max_tokens`.)
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy. (`generation.temperature`.)
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling; 1 turns it off. (`generation.top_p`.)
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens; 0 turns it off. (`generation.top_k`.)
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Repetition penalty; 1 turns it off. (`generation.repetition_penalty`.)
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Answers per case, sample i with seed + i; needs --temperature above 0. The report
    /// averages a case's samples first, so the case stays the unit. (`generation.samples`.)
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Tokens each local judge may write to explain its rating (the sweep's
    /// `judge.explanation_tokens`).
    #[arg(long, default_value_t = 96, alias = "judge-tokens")]
    pub explanation_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// LoRA adapters (PEFT directories) to evaluate, unmerged on the model; `base` is the model
    /// without one. Repeat to compare: `--adapter base --adapter runs/lora/adapter` runs both
    /// and reports the paired difference. Judges always use the base model.
    #[arg(long, default_values_t = vec!["base".to_string()])]
    pub adapter: Vec<String>,
    /// Results folder: results.json, flow_results.json, cases.jsonl, report.md, report.html (and
    /// pairwise.jsonl with --pairwise); docs/EVAL.md describes each.
    #[arg(long, default_value = "flotilla-results")]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A model under test as loaded: local (with or without an adapter) or behind an API.
enum UnderTest {
    Local(LanguageModel),
    Api(EndpointModel),
}

/// How an adapter directory is named in results: its folder name, or the run folder's name
/// when the adapter sits in `RUN/adapter` as `flotilla train` writes it.
fn adapter_label(dir: &std::path::Path) -> String {
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    match name(dir).as_deref() {
        Some("adapter") => dir
            .parent()
            .and_then(name)
            .map(|p| format!("{p}/adapter"))
            .unwrap_or_else(|| "adapter".into()),
        Some(n) => n.to_string(),
        None => dir.display().to_string(),
    }
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    let started_ms = flotilla_contract::provenance::now_ms();
    // Validate everything before loading a model (flags are parsed by the contract's types).
    let variants = a.variant.clone();
    for v in &variants {
        if let Variant::Custom { template } = v {
            anyhow::ensure!(
                std::path::Path::new(template).exists(),
                "--variant custom:{template}: no such file"
            );
        }
    }
    let rubric = match &a.rubric {
        Some(p) => {
            let source = std::fs::read_to_string(p)
                .with_context(|| format!("--rubric {}: cannot read it", p.display()))?;
            flotilla_bench::judge::check_rubric(&source)
                .map_err(|e| anyhow::anyhow!("--rubric {}: {e}", p.display()))?;
            Some(source)
        }
        None => None,
    };
    anyhow::ensure!(
        !a.pairwise || a.variant.len() >= 2,
        "--pairwise compares variants with the first: give at least two --variant"
    );
    let tasks = a.task.clone();
    let (scale, truncation) = (a.scale, a.truncation);
    let sampling = SamplingParams {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        repetition_penalty: a.repetition_penalty,
        samples: a.samples,
        seed: a.seed,
        ..Default::default()
    };
    sampling.validate().map_err(|e| {
        anyhow::anyhow!("--temperature/--top-p/--repetition-penalty/--samples: {e}")
    })?;
    let mut cases: Vec<Case> = Vec::new();
    for d in &a.input.cases {
        let ds = load_dataset(d, a.input.documents.as_deref())?;
        for e in &ds.errors {
            // Once, on stderr (a tracing warning too would print it twice).
            eprintln!("warning: skipped {e}");
        }
        cases.extend(ds.cases.into_iter().filter(|c| {
            (tasks.is_empty() || tasks.contains(&c.task))
                && (a.language.is_empty() || a.language.contains(&c.language))
        }));
    }
    if let Some(limit) = a.limit {
        // Per (task, language) cell, in file order, as a sweep's `limit`.
        let mut taken: std::collections::HashMap<(Task, String), u64> = Default::default();
        cases.retain(|c| {
            let n = taken.entry((c.task, c.language.clone())).or_default();
            *n += 1;
            *n <= limit
        });
    }
    anyhow::ensure!(
        !cases.is_empty(),
        "no cases to run in {:?}{}",
        a.input.cases,
        if tasks.is_empty() && a.language.is_empty() {
            String::new()
        } else {
            " with the --task / --language filters given".to_string()
        }
    );

    let device = device::parse_device(&a.device)?;
    let opts = LoadOptions::on(device);
    // The model under test: a local model, or one behind an OpenAI-compatible endpoint.
    let api = EndpointModel::parse(&a.model)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--model {e}"))?;
    if api.is_some() {
        anyhow::ensure!(
            a.adapter.iter().all(|ad| ad == "base"),
            "--adapter: --model {} is behind an API, which takes no LoRA adapters",
            a.model
        );
    }
    let pb = spinner(format!("loading {}", a.model));
    let model = match &api {
        Some(_) => None,
        None => Some(
            LanguageModel::load(&a.model, &opts).with_context(|| format!("--model {}", a.model))?,
        ),
    };
    // Each --judge resolved once: an endpoint, the model under test, or a model of its own.
    let under_test_model = model.clone().map(Arc::new);
    let named: Vec<(String, JudgeSpec)> = a
        .judge
        .iter()
        .map(|j| match (j, &api) {
            // `self` with a model behind an API is that endpoint judging.
            (JudgeSpec::SelfModel, Some(e)) => (
                j.to_string(),
                JudgeSpec::Endpoint {
                    model: e.model.clone(),
                    base_url: e.base_url.clone(),
                },
            ),
            // `--judge MODEL` naming the model under test is `self`: loaded once.
            (JudgeSpec::Model(m), None) if m == &a.model => (j.to_string(), JudgeSpec::SelfModel),
            _ => (j.to_string(), j.clone()),
        })
        .collect();
    let panel = JudgePanel::resolve(
        &named,
        scale,
        a.explanation_tokens,
        under_test_model.as_ref(),
        |m| {
            LanguageModel::load(m, &opts)
                .map(Arc::new)
                .map_err(|e| flotilla_engine::Error::input(format!("--judge {m}: {e}")))
        },
    )?;
    // RAG cases need the embedder; in bm25 mode only its tokenizer (to cut the chunks).
    let rag = cases.iter().any(|c| c.task == Task::Rag);
    let embedder = if rag && a.retrieval.mode.uses_embedder() {
        Some(
            EmbeddingModel::load(&a.retrieval.embedder, &opts)
                .with_context(|| format!("--embedder {}", a.retrieval.embedder))?,
        )
    } else {
        None
    };
    pb.finish_and_clear();
    let cache = Some(flotilla_home().join("cache").join("embeddings"));
    let retriever = match &embedder {
        Some(e) => Some(Retriever::new(e, a.retrieval.chunks(), cache)),
        None if rag => Some(
            Retriever::lexical(&a.retrieval.embedder, a.retrieval.chunks(), cache)
                .with_context(|| format!("--embedder {}", a.retrieval.embedder))?,
        ),
        None => None,
    };
    let judges = panel.judges();
    // The model under test once per --adapter (unmerged adapters share the base weights).
    let mut under_test: Vec<(String, UnderTest)> = Vec::new();
    match (&model, &api) {
        (Some(model), _) => {
            for ad in &a.adapter {
                if ad == "base" {
                    under_test.push(("base".into(), UnderTest::Local(model.clone())));
                } else {
                    let dir = std::path::Path::new(ad);
                    let lm = flotilla_train::load_with_adapter(model, dir)
                        .with_context(|| format!("--adapter {ad}"))?;
                    under_test.push((adapter_label(dir), UnderTest::Local(lm)));
                }
            }
        }
        (None, Some(e)) => under_test.push(("base".into(), UnderTest::Api(e.clone()))),
        (None, None) => anyhow::bail!("--model {}: nothing to evaluate", a.model),
    }
    let settings = EvalSettings {
        model_label: a.model.clone(),
        adapter_label: "base".into(),
        variants: variants.clone(),
        top_k: a.retrieval.top_k,
        truncation,
        sampling: sampling.clone(),
        rubric,
    };
    let total: usize = cases
        .iter()
        .map(|c| {
            if c.task == Task::Criteria {
                1
            } else {
                variants.len() * a.samples
            }
        })
        .sum();
    let pb = bar((total * under_test.len()) as u64, "eval");
    let mut results = Vec::new();
    for (label, m) in &under_test {
        let mut settings = settings.clone();
        settings.adapter_label = label.clone();
        let answerer = match m {
            UnderTest::Local(lm) => Answerer::Local(lm),
            UnderTest::Api(e) => Answerer::Endpoint(e),
        };
        let mut runner = Runner::new(answerer, retriever.as_ref(), judges.clone(), settings);
        results.extend(runner.run(&cases, |r| {
            pb.set_message(format!("{} {} {}", r.case_id, r.variant, r.adapter));
            pb.inc(1);
        }));
    }
    pb.finish_and_clear();
    let base_label = under_test[0].0.clone();
    let baseline = variants[0].name();
    let mut report = build_report(
        &results,
        a.seed,
        scale,
        &[
            ("variant", baseline.as_str()),
            ("adapter", base_label.as_str()),
        ],
    );
    let mut files = vec![match (&model, &api) {
        (Some(m), _) => file_hash("model", &a.model, &m.info.path),
        (None, e) => FileHash {
            role: "model".into(),
            name: a.model.clone(),
            path: e.as_ref().map(|e| e.base_url.clone()).unwrap_or_default(),
            ..Default::default()
        },
    }];
    files.extend(
        a.adapter
            .iter()
            .filter(|ad| *ad != "base")
            .map(|ad| file_hash("adapter", ad, std::path::Path::new(ad))),
    );
    if let Some(e) = &embedder {
        files.push(file_hash("embedder", &a.retrieval.embedder, &e.path));
    }
    files.extend(panel.files());
    report.provenance = Some(provenance(&a, &cases, files, started_ms));
    if a.pairwise {
        let verdicts = pairwise(&judges, &results, &baseline);
        report.pairwise = flotilla_contract::report::summarize_pairs(&verdicts, a.seed);
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("--out {}: cannot create it", a.out.display()))?;
        let path = a.out.join("pairwise.jsonl");
        let mut lines = String::new();
        for v in &verdicts {
            lines.push_str(&serde_json::to_string(v)?);
            lines.push('\n');
        }
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let files = write_outputs(&a.out, &report, &results)?;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if failed == results.len() {
        for r in &results {
            eprintln!(
                "case {} failed: {}",
                r.case_id,
                r.error.as_deref().unwrap_or_default()
            );
        }
        anyhow::bail!(
            "every case failed ({failed} of {}): see `error` in {}",
            results.len(),
            a.out.join("cases.jsonl").display()
        );
    }
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "out": a.out, "files": files, "warnings": report.warnings, "judges": report.judges,
            "configurations": report.configurations, "comparisons": report.comparisons,
            "pairwise": report.pairwise,
            "failed_cases": results.iter().filter(|r| r.error.is_some()).map(|r| serde_json::json!({"case_id": r.case_id, "error": r.error})).collect::<Vec<_>>(),
        }))?,
        OutputFormat::Text => {
            print!("{}", markdown(&report));
            for r in results.iter().filter(|r| r.error.is_some()) {
                eprintln!(
                    "case {} failed: {}",
                    r.case_id,
                    r.error.as_deref().unwrap_or_default()
                );
            }
            eprintln!("results written to {}", a.out.display());
        }
    }
    Ok(())
}

/// What results.json records of this run: the flags as resolved, every file read with its
/// sha256 (`files` holds the models', adapters' and judges'), this machine, and when.
fn provenance(a: &Args, cases: &[Case], mut files: Vec<FileHash>, started_ms: i64) -> Provenance {
    for c in &a.input.cases {
        files.push(file_hash("cases", &c.display().to_string(), c));
    }
    let mut documents: Vec<&PathBuf> = cases.iter().flat_map(|c| &c.documents).collect();
    documents.sort();
    documents.dedup();
    for d in documents {
        files.push(file_hash("document", &d.display().to_string(), d));
    }
    for v in &a.variant {
        if let Variant::Custom { template } = v {
            files.push(file_hash(
                "template",
                template,
                std::path::Path::new(template),
            ));
        }
    }
    if let Some(r) = &a.rubric {
        files.push(file_hash("rubric", &r.display().to_string(), r));
    }
    let settings = serde_json::json!({
        "model": a.model,
        "cases": a.input.cases,
        "documents": a.input.documents,
        "tasks": a.task,
        "languages": a.language,
        "limit": a.limit,
        "variants": a.variant.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "judges": a.judge.iter().map(|j| j.to_string()).collect::<Vec<_>>(),
        "scale": a.scale.to_string(),
        "rubric": a.rubric,
        "pairwise": a.pairwise,
        "retrieval": {"embedder": a.retrieval.embedder, "top_k": a.retrieval.top_k, "chunks": a.retrieval.chunks()},
        "truncation": a.truncation,
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "top_p": a.top_p,
        "top_k": a.top_k,
        "repetition_penalty": a.repetition_penalty,
        "samples": a.samples,
        "explanation_tokens": a.explanation_tokens,
        "seed": a.seed,
        "adapters": a.adapter,
        "device": a.device,
    });
    let mut p = Provenance {
        flotilla_version: env!("CARGO_PKG_VERSION").to_string(),
        command: "eval".into(),
        settings,
        seed: a.seed,
        judges: a.judge.iter().map(|j| j.to_string()).collect(),
        files,
        machines: vec![Machine::this("local", &a.device)],
        started_at: rfc3339(started_ms),
        finished_at: rfc3339(now_ms()),
        ..Default::default()
    };
    crate::provenance::stamp(&mut p, true);
    p
}

/// Pairwise verdicts: every generated answer of a variant other than `baseline` against the
/// baseline's answer to the same case (same adapter and sample), by every judge.
fn pairwise(judges: &[Judge], results: &[CaseResult], baseline: &str) -> Vec<PairVerdict> {
    let key = |r: &CaseResult| {
        (
            r.adapter.clone(),
            r.task,
            r.language.clone(),
            r.case_id.clone(),
            r.sample,
        )
    };
    let base: std::collections::HashMap<_, &CaseResult> = results
        .iter()
        .filter(|r| r.variant == baseline && r.error.is_none())
        .map(|r| (key(r), r))
        .collect();
    let pairs: Vec<(&CaseResult, &CaseResult)> = results
        .iter()
        .filter(|r| r.variant != baseline && r.error.is_none() && r.task != Task::Criteria)
        .filter_map(|b| base.get(&key(b)).map(|a| (*a, b)))
        .collect();
    let pb = bar((pairs.len() * judges.len()) as u64, "pairwise");
    let mut out = Vec::new();
    for j in judges {
        for (a, b) in &pairs {
            out.push(flotilla_bench::pairwise::compare(j, j.name(), a, b));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    out
}
