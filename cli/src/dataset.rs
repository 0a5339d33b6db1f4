//! `flotilla dataset`: build fine-tuning sets.
//!
//! `from-benchmark` turns benchmark cases into chat examples in the benchmark's own instruction
//! style: the system and user turns are exactly the messages `flotilla eval` builds for the case
//! under the chosen prompt variant (retrieved chunks for RAG, the whole document for document
//! analysis), and the assistant turn is the case's reference answer, written in the variant's
//! output format. A seeded held-out split (stratified by task and language) keeps some cases
//! out of training so that the fine-tune can be evaluated on questions it never saw.

use crate::args::{CaseFiles, RetrievalArgs};
use crate::output::{bar, print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_bench::dataset::{load_dataset, Case, Task};
use flotilla_bench::documents::{load_document, Document};
use flotilla_bench::prompts::{build, PromptInputs, Variant, ANSWER_MARKER, COMPLETED_MARKER};
use flotilla_bench::retrieval::{numbered_context, whole_text, Retriever};
use flotilla_bench::runner::Truncation;
use flotilla_engine::loader::flotilla_home;
use flotilla_engine::{device, ChatMessage, EmbeddingModel, LoadOptions};
use flotilla_train::data::split_holdout;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Turn benchmark cases into a chat fine-tuning set in the benchmark's prompt style,
    /// with a seeded held-out split.
    FromBenchmark(FromBenchmarkArgs),
}

#[derive(clap::Args)]
pub struct FromBenchmarkArgs {
    #[command(flatten)]
    pub input: CaseFiles,
    /// Only these tasks (rag, document); repeatable.
    #[arg(long)]
    pub task: Vec<Task>,
    /// The prompt variant whose messages the examples use (query_first, query_last,
    /// structured, structured_constrained, custom:FILE.jinja).
    #[arg(long, default_value = "query_last")]
    pub variant: Variant,
    /// Retrieval for RAG cases (as in `flotilla eval`).
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// Documents longer than this many characters are cut (document cases), by --truncation.
    #[arg(long, default_value_t = 24_000)]
    pub max_document_chars: usize,
    /// What to do with a document longer than --max-document-chars: head or head_tail.
    #[arg(long, default_value = "head_tail")]
    pub truncation: Truncation,
    /// Share of cases held out from training (0 keeps all; at least one case per task and
    /// language group of two or more is held out otherwise).
    #[arg(long, default_value_t = 0.25)]
    pub holdout: f64,
    /// Seed of the held-out split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: train.jsonl, heldout.jsonl, manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(command: Command, out: OutputFormat) -> anyhow::Result<()> {
    match command {
        Command::FromBenchmark(a) => from_benchmark(a, out),
    }
}

/// One output line: the case id and the conversation.
#[derive(Serialize)]
struct Example {
    id: String,
    messages: Vec<ChatMessage>,
    #[serde(skip)]
    group: (Task, String),
}

#[derive(Serialize)]
struct Skipped {
    id: String,
    reason: String,
}

fn from_benchmark(a: FromBenchmarkArgs, out: OutputFormat) -> anyhow::Result<()> {
    // Validate every flag before reading documents or loading the embedder.
    let variant = a.variant.clone();
    if let Variant::Custom { template } = &variant {
        anyhow::ensure!(
            Path::new(template).exists(),
            "--variant custom:{template}: no such file"
        );
    }
    let truncation = a.truncation;
    anyhow::ensure!(
        (0.0..1.0).contains(&a.holdout),
        "--holdout {}: expected a fraction in [0, 1)",
        a.holdout
    );
    anyhow::ensure!(
        a.retrieval.top_k > 0,
        "--retrieval-top-k must be at least 1"
    );
    anyhow::ensure!(
        a.max_document_chars >= 64,
        "--max-document-chars {}: too small to hold a document",
        a.max_document_chars
    );
    let tasks = a.task.clone();
    if let Some(t) = tasks.iter().find(|t| **t == Task::Criteria) {
        anyhow::bail!("--task {t}: expected rag or document");
    }

    let mut cases: Vec<Case> = Vec::new();
    let mut bad_lines = Vec::new();
    for path in &a.input.cases {
        let ds = load_dataset(path, a.input.documents.as_deref())
            .with_context(|| format!("--cases {}", path.display()))?;
        for e in &ds.errors {
            // Once, on stderr (a tracing warning too would print it twice).
            eprintln!("warning: skipped {e}");
            bad_lines.push(e.to_string());
        }
        cases.extend(
            ds.cases
                .into_iter()
                .filter(|c| tasks.is_empty() || tasks.contains(&c.task)),
        );
    }
    anyhow::ensure!(!cases.is_empty(), "no cases in {:?}", a.input.cases);

    let mut skipped = Vec::new();
    let usable: Vec<&Case> = cases
        .iter()
        .filter(|c| {
            let reason = match (c.task, &c.reference_answer) {
                (Task::Criteria, _) => "criteria case (graded, not answered)",
                (_, None) => "no reference answer",
                (_, Some(r)) if r.trim().is_empty() => "no reference answer",
                _ => return true,
            };
            skipped.push(Skipped {
                id: c.id.clone(),
                reason: reason.into(),
            });
            false
        })
        .collect();

    let opts = LoadOptions::on(device::parse_device(&a.device)?);
    let embedder = if usable.iter().any(|c| c.task == Task::Rag) {
        let pb = spinner(format!("loading {}", a.retrieval.embedder));
        let e = EmbeddingModel::load(&a.retrieval.embedder, &opts)
            .with_context(|| format!("--embedder {}", a.retrieval.embedder))?;
        pb.finish_and_clear();
        Some(e)
    } else {
        None
    };
    let retriever = embedder.as_ref().map(|e| {
        Retriever::new(
            e,
            a.retrieval.chunks(),
            Some(flotilla_home().join("cache").join("embeddings")),
        )
    });

    let mut documents: HashMap<PathBuf, Result<Document, String>> = HashMap::new();
    let mut examples = Vec::new();
    let mut truncated = Vec::new();
    let pb = bar(usable.len() as u64, "from-benchmark");
    for case in usable {
        pb.set_message(case.id.clone());
        pb.inc(1);
        let docs: Result<Vec<Document>, String> = case
            .documents
            .iter()
            .map(|p| {
                documents
                    .entry(p.clone())
                    .or_insert_with(|| load_document(p).map_err(|e| e.to_string()))
                    .clone()
            })
            .collect();
        let docs = match docs {
            Ok(d) => d,
            Err(reason) => {
                eprintln!("warning: skipped case {}: {reason}", case.id);
                skipped.push(Skipped {
                    id: case.id.clone(),
                    reason,
                });
                continue;
            }
        };
        let context = match case.task {
            Task::Rag => {
                let retriever = retriever
                    .as_ref()
                    .context("RAG cases need an embedding model (--embedder)")?;
                let hits = retriever
                    .retrieve(&case.query, &docs, a.retrieval.top_k)
                    .with_context(|| format!("case {}: retrieval", case.id))?;
                numbered_context(&hits)
            }
            _ => {
                let whole = whole_text(&docs);
                let (text, cut) = fit_chars(&whole, a.max_document_chars, truncation);
                if cut {
                    truncated.push(case.id.clone());
                }
                text
            }
        };
        let inputs = PromptInputs {
            question: &case.query,
            context: &context,
            language: &case.language,
        };
        let built =
            build(&variant, &inputs, false).with_context(|| format!("case {}: prompt", case.id))?;
        let reference = case.reference_answer.as_deref().unwrap_or_default().trim();
        let mut messages = built.messages;
        messages.push(ChatMessage::new(
            "assistant",
            assistant_turn(&variant, reference),
        ));
        examples.push(Example {
            id: case.id.clone(),
            messages,
            group: (case.task, case.language.clone()),
        });
    }
    pb.finish_and_clear();
    anyhow::ensure!(
        !examples.is_empty(),
        "none of the {} cases in {:?} can become an example ({} skipped: no reference answer, criteria, or unreadable documents)",
        cases.len(),
        a.input.cases,
        skipped.len()
    );

    let (train, heldout) = stratified_split(examples, a.holdout, a.seed);
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let train_path = a.out.join("train.jsonl");
    let heldout_path = a.out.join("heldout.jsonl");
    let manifest_path = a.out.join("manifest.json");
    write_jsonl(&train_path, &train)?;
    write_jsonl(&heldout_path, &heldout)?;
    // The held-out cases themselves, in the benchmark's format with absolute document paths,
    // so `flotilla eval --cases OUT/heldout-cases.jsonl` measures an adapter on exactly the
    // cases it never saw.
    let heldout_cases_path = a.out.join("heldout-cases.jsonl");
    {
        let held: std::collections::HashSet<&str> = heldout.iter().map(|e| e.id.as_str()).collect();
        let mut text = String::new();
        for c in cases.iter().filter(|c| held.contains(c.id.as_str())) {
            let mut c = c.clone();
            for d in c.documents.iter_mut() {
                if let Ok(abs) = d.canonicalize() {
                    *d = abs;
                }
            }
            text.push_str(&serde_json::to_string(&c)?);
            text.push('\n');
        }
        std::fs::write(&heldout_cases_path, text)
            .with_context(|| format!("cannot write {}", heldout_cases_path.display()))?;
    }

    let mut groups: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for (split, list) in [("train", &train), ("heldout", &heldout)] {
        for e in list.iter() {
            let key = format!("{}/{}", e.group.0.name(), e.group.1);
            *groups.entry(key).or_default().entry(split).or_default() += 1;
        }
    }
    let manifest = serde_json::json!({
        "source": a.input.cases,
        "documents": a.input.documents,
        "variant": variant.name(),
        "retrieval": {"embedder": a.retrieval.embedder, "top_k": a.retrieval.top_k, "chunk_size": a.retrieval.chunk_size, "chunk_overlap": a.retrieval.chunk_overlap},
        "max_document_chars": a.max_document_chars,
        "truncation": a.truncation,
        "holdout": a.holdout,
        "seed": a.seed,
        "counts": {
            "cases": cases.len(),
            "examples": train.len() + heldout.len(),
            "train": train.len(),
            "heldout": heldout.len(),
            "skipped": skipped.len(),
            "bad_lines": bad_lines.len(),
        },
        "groups": groups,
        "heldout_ids": heldout.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        "skipped": skipped,
        "truncated": truncated,
        "bad_lines": bad_lines,
    });
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    tracing::info!(
        train = train.len(),
        heldout = heldout.len(),
        "fine-tuning set written"
    );

    match out {
        OutputFormat::Json => {
            let mut v = manifest;
            v["out"] = serde_json::json!(a.out);
            v["files"] =
                serde_json::json!([train_path, heldout_path, heldout_cases_path, manifest_path]);
            print_json(&v)?;
        }
        OutputFormat::Text => {
            println!(
                "{} train and {} held-out examples ({} variant) from {} cases; {} skipped",
                train.len(),
                heldout.len(),
                variant.name(),
                cases.len(),
                skipped.len()
            );
            for s in &skipped {
                println!("  skipped {}: {}", s.id, s.reason);
            }
            if !truncated.is_empty() {
                println!(
                    "  documents cut to {} characters: {}",
                    a.max_document_chars,
                    truncated.join(", ")
                );
            }
            println!("written to {}", a.out.display());
        }
    }
    Ok(())
}

/// The reference answer as the variant expects the model to write it: plain, or between the
/// structured variants' answer and completion markers.
fn assistant_turn(variant: &Variant, reference: &str) -> String {
    if variant.is_structured() {
        format!("{ANSWER_MARKER}\n{reference}\n\n{COMPLETED_MARKER}")
    } else {
        reference.to_string()
    }
}

/// Cut `text` to at most `max` characters the way eval cuts a document that does not fit the
/// context (eval counts tokens of the model under test; a set built without a model counts
/// characters). Returns the text and whether it was cut.
fn fit_chars(text: &str, max: usize, policy: Truncation) -> (String, bool) {
    let n = text.chars().count();
    if n <= max {
        return (text.to_string(), false);
    }
    let head = |k: usize| text.chars().take(k).collect::<String>();
    let kept = match policy {
        Truncation::Head => head(max),
        Truncation::HeadTail => {
            let half = (max - 8) / 2;
            let tail: String = text.chars().skip(n - half).collect();
            format!("{}\n[...]\n{}", head(half), tail)
        }
    };
    (kept, true)
}

/// Hold out `fraction` of each (task, language) group, seeded, so every group the benchmark
/// measures is represented in both halves when it has two cases or more. Both halves keep the
/// benchmark's order.
fn stratified_split(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut groups: BTreeMap<(Task, String), Vec<(usize, Example)>> = BTreeMap::new();
    for (i, e) in examples.into_iter().enumerate() {
        groups.entry(e.group.clone()).or_default().push((i, e));
    }
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (_, items) in groups {
        let (t, h) = split_holdout(items, fraction, seed);
        train.extend(t);
        heldout.extend(h);
    }
    train.sort_by_key(|(i, _)| *i);
    heldout.sort_by_key(|(i, _)| *i);
    (
        train.into_iter().map(|(_, e)| e).collect(),
        heldout.into_iter().map(|(_, e)| e).collect(),
    )
}

fn write_jsonl(path: &Path, examples: &[Example]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for e in examples {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
