//! `flotilla eval`: a model over benchmark cases, in-process, with judges and statistics;
//! writes the results folder and prints the tables.

use crate::args::{CaseFiles, RetrievalArgs};
use crate::output::{bar, print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_bench::dataset::{load_dataset, Case, Task};
use flotilla_bench::report::{build_report, markdown, write_outputs};
use flotilla_bench::retrieval::Retriever;
use flotilla_bench::runner::{EvalSettings, Runner};
use flotilla_bench::setup::JudgePanel;
use flotilla_contract::{JudgeSpec, Scale, Truncation, Variant};
use flotilla_engine::loader::flotilla_home;
use flotilla_engine::{device, EmbeddingModel, LanguageModel, LoadOptions, SamplingParams};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The model under test (GGUF, HF directory, hf:org/name, or a demo alias).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub input: CaseFiles,
    /// Only these tasks (rag, document, criteria); repeatable.
    #[arg(long)]
    pub task: Vec<Task>,
    /// Prompt variants (query_first, query_last, structured, structured_constrained,
    /// custom:FILE.jinja); repeatable; the first is the baseline of the comparisons.
    #[arg(long, default_values_t = vec![Variant::QueryLast])]
    pub variant: Vec<Variant>,
    /// Judges (repeat for a jury): `self` (the model under test), a model path or alias, or
    /// an OpenAI-compatible endpoint `openai:MODEL@BASE_URL` (API key from
    /// FLOTILLA_JUDGE_API_KEY, if set).
    #[arg(long, default_values_t = vec![JudgeSpec::SelfModel])]
    pub judge: Vec<JudgeSpec>,
    /// Rating scale: 0-10, or 1-10 as Flow Benchmark Tools uses.
    #[arg(long, default_value = "0-10")]
    pub scale: Scale,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// What to do with a document longer than the context: head or head_tail.
    #[arg(long, default_value = "head_tail")]
    pub truncation: Truncation,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
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
    /// Results folder.
    #[arg(long, default_value = "flotilla-results")]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    let tasks = a.task.clone();
    let (scale, truncation) = (a.scale, a.truncation);
    let mut cases: Vec<Case> = Vec::new();
    for d in &a.input.cases {
        let ds = load_dataset(d, a.input.documents.as_deref())?;
        for e in &ds.errors {
            tracing::warn!("{e}");
            eprintln!("warning: skipped {e}");
        }
        cases.extend(
            ds.cases
                .into_iter()
                .filter(|c| tasks.is_empty() || tasks.contains(&c.task)),
        );
    }
    anyhow::ensure!(!cases.is_empty(), "no cases to run in {:?}", a.input.cases);

    let device = device::parse_device(&a.device)?;
    let opts = LoadOptions { device };
    let pb = spinner(format!("loading {}", a.model));
    let model =
        LanguageModel::load(&a.model, &opts).with_context(|| format!("--model {}", a.model))?;
    // Each --judge resolved once: an endpoint, the model under test, or a model of its own.
    let under_test_model = Arc::new(model.clone());
    let named: Vec<(String, JudgeSpec)> = a
        .judge
        .iter()
        .map(|j| match j {
            // `--judge MODEL` naming the model under test is `self`: loaded once.
            JudgeSpec::Model(m) if m == &a.model => (j.to_string(), JudgeSpec::SelfModel),
            _ => (j.to_string(), j.clone()),
        })
        .collect();
    let panel = JudgePanel::resolve(
        &named,
        scale,
        a.explanation_tokens,
        Some(&under_test_model),
        |m| {
            LanguageModel::load(m, &opts)
                .map(Arc::new)
                .map_err(|e| flotilla_engine::Error::input(format!("--judge {m}: {e}")))
        },
    )?;
    let embedder = if cases.iter().any(|c| c.task == Task::Rag) {
        Some(
            EmbeddingModel::load(&a.retrieval.embedder, &opts)
                .with_context(|| format!("--embedder {}", a.retrieval.embedder))?,
        )
    } else {
        None
    };
    pb.finish_and_clear();
    let retriever = embedder.as_ref().map(|e| {
        Retriever::new(
            e,
            a.retrieval.chunks(),
            Some(flotilla_home().join("cache").join("embeddings")),
        )
    });
    let judges = panel.judges();
    // The model under test once per --adapter (unmerged adapters share the base weights).
    let mut under_test: Vec<(String, LanguageModel)> = Vec::new();
    for ad in &a.adapter {
        if ad == "base" {
            under_test.push(("base".into(), model.clone()));
        } else {
            let dir = std::path::Path::new(ad);
            let lm = flotilla_train::load_with_adapter(&model, dir)
                .with_context(|| format!("--adapter {ad}"))?;
            under_test.push((adapter_label(dir), lm));
        }
    }
    let settings = EvalSettings {
        model_label: a.model.clone(),
        adapter_label: "base".into(),
        variants: variants.clone(),
        top_k: a.retrieval.top_k,
        truncation,
        sampling: SamplingParams {
            max_tokens: a.max_tokens,
            seed: a.seed,
            ..Default::default()
        },
    };
    let total: usize = cases
        .iter()
        .map(|c| {
            if c.task == Task::Criteria {
                1
            } else {
                variants.len()
            }
        })
        .sum();
    let pb = bar((total * under_test.len()) as u64, "eval");
    let mut results = Vec::new();
    for (label, lm) in &under_test {
        let mut settings = settings.clone();
        settings.adapter_label = label.clone();
        let mut runner = Runner::new(lm, retriever.as_ref(), judges.clone(), settings);
        results.extend(runner.run(&cases, |r| {
            pb.set_message(format!("{} {} {}", r.case_id, r.variant, r.adapter));
            pb.inc(1);
        }));
    }
    pb.finish_and_clear();
    let base_label = under_test[0].0.clone();
    let baseline = variants[0].name();
    let report = build_report(
        &results,
        a.seed,
        scale,
        &[
            ("variant", baseline.as_str()),
            ("adapter", base_label.as_str()),
        ],
    );
    let files = write_outputs(&a.out, &report, &results)?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "out": a.out, "files": files,
            "configurations": report.configurations, "comparisons": report.comparisons,
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
