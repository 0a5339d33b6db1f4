//! Sweep files: the shipped examples pass validation; broken files get one error per problem
//! with its line; a submitted sweep becomes the jobs DAG, and its results aggregate into the
//! report.

mod common;

use common::*;
use flotilla_contract::case_result::CaseResult;
use flotilla_contract::judging::Verdict;
use flotilla_contract::shard::{GenerateResult, GenerateShard, JudgeResult, TrainResult};
use flotilla_contract::{ShardOutput, ShardSpec};
use flotilla_coordinator::client::SubmitSweep;
use flotilla_coordinator::sweep::{self, FileRoot, ModelCheck, Sweep};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::worker_message::Kind as In;
use std::path::Path;

#[test]
fn the_seed_study_validates_without_its_models_on_this_machine() {
    let path = examples().join("seed-study.yaml");
    let s = Sweep::load(&path, ModelCheck::Syntax).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.models.len(), 3);
    assert!(s.models.iter().all(|m| m.model.starts_with("hf:")));
    // Checked against local models, only the missing models are reported.
    let e = Sweep::load(&path, ModelCheck::Local).unwrap_err();
    assert!(e.errors.iter().all(|e| e.message.contains("hf:")), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
name: broken
models:
  - smollm3
  - hf:Qwen
variants: [query_first, query_middle]
adapters: []
datasets:
  - cases: missing/cases.jsonl
    tasks: [rag, summary]
    limt: 2
judge:
  scale: 10-0
generation:
  max_tokens: -1
colour: blue
";
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, yaml).unwrap();
    let e = Sweep::load(&path, ModelCheck::Syntax).unwrap_err();
    let text = e.to_string();
    let expect = [
        (3, "unknown model `smollm3`"),
        (4, "not a hub id"),
        (5, "unknown prompt variant `query_middle`"),
        (6, "`adapters` is empty"),
        // What the parsed part points at is checked in the same pass.
        (8, "case file missing/cases.jsonl does not exist"),
        (9, "unknown task `summary`"),
        (10, "unknown key `limt`"),
        (12, "judge.scale"),
        (14, "generation.max_tokens"),
        (15, "unknown key `colour`"),
    ];
    for (line, needle) in expect {
        assert!(
            e.errors
                .iter()
                .any(|x| x.line == line && x.message.contains(needle)),
            "no error at line {line} containing {needle:?} in:\n{text}"
        );
        assert!(text.contains(&format!("broken.yaml:{line}: ")), "{text}");
    }
    assert_eq!(e.errors.len(), expect.len(), "{text}");

    // Shape is fine, but files and cases are not: those are reported together too.
    let yaml = "\
models: [smollm2]
variants: [query_last, custom:nope.jinja]
adapters:
  - base
  - name: mine
    path: adapters/mine
datasets:
  - cases: cases.jsonl
";
    std::fs::write(
        dir.path().join("cases.jsonl"),
        "{\"task\": \"rag\", \"query\": \"q\"}\nnot json\n",
    )
    .unwrap();
    std::fs::write(&path, yaml).unwrap();
    let e = Sweep::load(&path, ModelCheck::Syntax).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("template nope.jinja does not exist"),
        "{text}"
    );
    assert!(text.contains("broken.yaml:5: adapter `mine`"), "{text}");
    assert!(
        text.contains("cases.jsonl:1: a rag case needs at least one document"),
        "{text}"
    );
    assert!(text.contains("cases.jsonl:2: not valid JSON"), "{text}");
}

#[test]
fn variants_can_be_named_for_the_results() {
    let yaml = "models: [smollm2]\nvariants:\n  - query_first\n  - name: polite\n    variant: query_last\n\
                datasets:\n  - cases: c.jsonl\n";
    let s = sweep::parse(yaml, Path::new("s.yaml")).unwrap();
    assert_eq!(s.variants, ["query_first", "query_last"]);
    assert_eq!(s.variant_label("query_last"), "polite");
    assert_eq!(s.variant_label("query_first"), "query_first");
    let bad = "models: [smollm2]\nvariants:\n  - name: a\n    variant: query_middle\n  - {variant: query_last}\n  - name: query_first\n    variant: query_first\n  - query_first\n\
               datasets:\n  - cases: c.jsonl\n";
    let e = sweep::parse(bad, Path::new("s.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.yaml:3:") && e.contains("query_middle"), "{e}");
    assert!(e.contains("s.yaml:5:") && e.contains("name"), "{e}");
    assert!(
        e.contains("s.yaml:8: variant `query_first` is listed twice"),
        "{e}"
    );
}

#[test]
fn several_samples_per_case_need_a_temperature() {
    let base = "models: [smollm2]\nvariants: [query_first]\ndatasets:\n  - cases: c.jsonl\n";
    let e = sweep::parse(
        &format!("{base}generation:\n  samples: 3\n"),
        Path::new("s.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("s.yaml:6: `generation.samples: 3` needs `generation.temperature` above 0"),
        "{e}"
    );
    let s = sweep::parse(
        &format!("{base}generation:\n  temperature: 0.7\n  samples: 3\n"),
        Path::new("s.yaml"),
    )
    .unwrap();
    assert_eq!(s.sampling.samples, 3);
}

#[test]
fn syntax_errors_and_empty_files_are_one_clear_error() {
    let e = sweep::parse("models: [smollm2\n", Path::new("s.yaml")).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(e.to_string().contains("s.yaml:2: not valid YAML"), "{e}");
    let e = sweep::parse("", Path::new("s.yaml")).unwrap_err();
    assert!(
        e.to_string().contains("s.yaml: the sweep file is empty"),
        "{e}"
    );
}

#[test]
fn a_sweep_that_only_trains_may_leave_out_datasets_and_variants() {
    let s = sweep::parse(
        "name: t\nmodels: [smollm2]\nadapters:\n  - name: lora\n    train: {data: d.jsonl, steps: 2}\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert!(s.datasets.is_empty());
    assert_eq!(s.variants, ["query_first"]);
    let e = sweep::parse(
        "name: t\nmodels: [smollm2]\nvariants: [query_first]\n",
        Path::new("t.yaml"),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("t.yaml:1: the sweep needs `datasets`"),
        "{e}"
    );
}

fn judged(mut r: CaseResult, score: f64) -> CaseResult {
    r.verdicts = vec![Verdict {
        judge: "smollm2".into(),
        rating: Some(score),
        geval: Some(score),
        explanation: "ok".into(),
        raw: format!("ok\nRating: [[{score}]]"),
        error: None,
        context_cut: None,
    }];
    r.score = Some(score);
    r
}

/// The quickstart through a real coordinator, with a test worker standing in for the engine:
/// the DAG holds (train before the LoRA's generate jobs, generate before judge), the adapter
/// reaches the jobs that use it, and the results aggregate into one report.
#[tokio::test]
async fn a_submitted_sweep_runs_its_dag_and_aggregates_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let client = client(&c).await;
    let st = client
        .submit_file(&examples().join("quickstart.yaml"))
        .await
        .unwrap();
    // 1 train + (2 variants x 2 adapters x 4 cells) generate + as many judge jobs.
    assert_eq!(st.jobs.len(), 1 + 16 + 16, "{:#?}", st.jobs.len());
    assert_eq!(
        st.jobs
            .iter()
            .filter(|j| j.state == pb::JobState::Blocked as i32)
            .count(),
        8 + 16
    );

    let mut w = TestWorker::connect(&c, "w", &["smollm2"]).await;
    let mut order = Vec::new();
    let adapter = b"fake adapter weights".to_vec();
    let adapter_ref = client.upload_bytes(&adapter).await.unwrap();
    loop {
        w.ask(1);
        let msg = tokio::time::timeout(std::time::Duration::from_secs(2), w.recv()).await;
        let Ok(flotilla_proto::v1::coordinator_message::Kind::Assign(a)) = msg else {
            break;
        };
        let spec = ShardSpec::from_json(&a.spec).unwrap();
        order.push(spec.kind().as_str().to_string());
        match spec {
            ShardSpec::Train(spec) => {
                assert_eq!(spec.model, "smollm2");
                assert_eq!(spec.config["data"], "train/en-ja-lora.jsonl");
                assert_eq!(spec.config["seed"], 7);
                assert!(a.files.iter().any(|f| f.path == "train/en-ja-lora.jsonl"));
                let result = TrainResult {
                    metrics: serde_json::json!({"final_loss": 1.5}),
                };
                w.result_raw(
                    &a.shard_id,
                    a.attempt,
                    serde_json::to_value(ShardOutput::Train(result)).unwrap(),
                    vec![pb::FileRef {
                        path: "adapter_model.safetensors".into(),
                        artifact: Some(adapter_ref.clone()),
                    }],
                );
            }
            ShardSpec::Generate(spec) => {
                assert_eq!(spec.cases.len(), 2);
                for case in &spec.cases {
                    for d in &case.documents {
                        assert!(
                            a.files.iter().any(|f| Path::new(&f.path) == d),
                            "{d:?} in files"
                        );
                    }
                }
                if let Some(ad) = &spec.adapter {
                    let want = format!("{}/adapter_model.safetensors", ad.dir);
                    assert!(
                        a.files.iter().any(|f| f.path == want),
                        "adapter file {want} in {:?}",
                        a.files
                    );
                }
                let cases = spec.cases.iter().map(|case| blank(case, &spec)).collect();
                w.result(
                    &a,
                    serde_json::to_value(GenerateResult {
                        cases,
                        origin: None,
                    })
                    .unwrap(),
                );
            }
            ShardSpec::Judge(spec) => {
                assert_eq!(spec.items.len(), 2);
                // The LoRA scores one point more, everywhere.
                let cases = spec
                    .items
                    .into_iter()
                    .map(|i| {
                        let s = if i.result.adapter == "lora" { 6.0 } else { 5.0 };
                        let bump = i.result.case_id.len() as f64 % 2.0;
                        judged(i.result, s + bump)
                    })
                    .collect();
                w.result(
                    &a,
                    serde_json::to_value(JudgeResult {
                        cases,
                        origin: None,
                    })
                    .unwrap(),
                );
            }
            other => panic!("unexpected kind {}", other.kind()),
        }
        assert!(w.ack().await.accepted);
    }
    assert_eq!(
        order[0], "train",
        "the model's train job is the first job: {order:?}"
    );
    // Three shards per generate and judge job (6 cases, shard_size 2).
    assert_eq!(order.len(), 1 + 48 + 48, "every shard ran once");
    let st = wait_end(&c, &st.sweep_id).await;
    assert_eq!(st.state, pb::SweepState::Succeeded as i32, "{}", st.error);

    let results = client
        .grpc()
        .get_results(pb::SweepRef {
            sweep_id: st.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let report: serde_json::Value = serde_json::from_slice(&results.report_json).unwrap();
    assert_eq!(report["configurations"].as_array().unwrap().len(), 16);
    let lora_vs_base = report["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["axis"] == "adapter")
        .count();
    assert!(lora_vs_base > 0, "paired comparisons base vs LoRA");
    assert_eq!(
        String::from_utf8(results.cases_jsonl)
            .unwrap()
            .lines()
            .count(),
        96
    );
    assert!(results.report_markdown.contains("Paired comparisons"));
    assert_eq!(results.adapters.len(), 1);
    assert_eq!(
        results.adapters[0].path,
        "adapters/lora/smollm2/adapter_model.safetensors"
    );
    c.shutdown().await;
}

fn blank(case: &flotilla_contract::dataset::Case, spec: &GenerateShard) -> CaseResult {
    CaseResult {
        case_id: case.id.clone(),
        task: case.task,
        language: case.language.clone(),
        model: spec.model_label.clone(),
        adapter: spec
            .adapter
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| "base".into()),
        variant: spec.variant.clone(),
        query: case.query.clone(),
        reference_answer: case.reference_answer.clone(),
        // Retrieval and prompt.
        hits: Vec::new(),
        recall_at_k: None,
        context_recall: None,
        prompt: "p".into(),
        truncation: None,
        prompt_tokens: 1,
        // Generation.
        raw_answer: "a".into(),
        parse_error: None,
        parse_retried: false,
        parse_failed: false,
        sample: 0,
        context: String::new(),
        retry_prompt_tokens: 0,
        retry_completion_tokens: 0,
        answer: "a".into(),
        completion_tokens: 1,
        latency_s: 0.0,
        error: None,
        // Scoring (judged later by the fake worker).
        metrics: Default::default(),
        verdicts: Vec::new(),
        score: None,
    }
}

#[tokio::test]
async fn a_sweep_with_problems_is_refused_whole_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let e = client(&c)
        .await
        .grpc()
        .submit_sweep(pb::SubmitSweepRequest {
            yaml: "models: [smollm2]\nvariants: [nope]\ndatasets:\n  - cases: c.jsonl\n".into(),
            source_path: "s.yaml".into(),
            files: Vec::new(),
            pushed_models: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .contains("s.yaml:2: unknown prompt variant `nope`"),
        "{}",
        e.message()
    );
    // Nothing was queued.
    assert!(c.core().list().is_empty());
    let _ = In::Ask(Default::default());
    c.shutdown().await;
}

#[test]
fn mistakes_in_several_blocks_and_in_the_files_they_name_come_out_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cases.jsonl"),
        "{\"task\": \"document\", \"query\": \"q\", \"documents\": [\"doc.txt\"]}\n{oops\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("doc.txt"), "text").unwrap();
    let yaml = "\
models: [smollm2]
variants: [query_first, query_sideways]
adapters:
  - base
  - name: mine
    path: adapters/mine
datasets:
  - cases: cases.jsonl
    tasks: [document]
judge:
  scale: ten
generation:
  max_tokens: 16
  temprature: 0.5
";
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, yaml).unwrap();
    let e = Sweep::load(&path, ModelCheck::Syntax).unwrap_err();
    let text = e.to_string();
    // Shape problems (variants, judge, generation) and what the file points at (an adapter
    // folder, a case file's line), all from one load.
    let expect = [
        ("broken.yaml", 2, "unknown prompt variant `query_sideways`"),
        ("broken.yaml", 5, "adapters/mine has no adapter_config.json"),
        ("broken.yaml", 11, "judge.scale"),
        ("broken.yaml", 14, "unknown key `temprature`"),
        ("cases.jsonl", 2, "not valid JSON"),
    ];
    for (file, line, needle) in expect {
        assert!(
            e.errors
                .iter()
                .any(|x| x.file.ends_with(file) && x.line == line && x.message.contains(needle)),
            "no error at {file}:{line} containing {needle:?} in:\n{text}"
        );
    }
    // The sweep file's problems come first, in line order.
    let lines: Vec<usize> = e
        .errors
        .iter()
        .take_while(|x| x.file == path)
        .map(|x| x.line)
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert!(
        text.starts_with(&format!("{} problems in the sweep", e.errors.len())),
        "{text}"
    );
}

/// A folder holding the demo SmolLM2 under another name, for sweeps that name a model by path.
fn model_beside(dir: &Path, rel: &str) {
    let target =
        flotilla_contract::model_ref::model_cache().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        target.exists(),
        "the demo models are fetched (scripts/fetch-models.sh)"
    );
    let link = dir.join(rel);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
}

#[test]
fn a_relative_model_path_resolves_against_the_sweep_folder_not_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sweep_dir = dir.path().join("study");
    model_beside(&sweep_dir, "models/small.gguf");
    let cases = examples().join("benchmarks/en-ja/cases.jsonl");
    let yaml = format!(
        "\
models:
  - models/small.gguf
  - smollm2
  - hf:Qwen/Qwen2.5-7B-Instruct
variants: [query_first]
datasets:
  - cases: {}
    tasks: [document]
    languages: [en]
    limit: 1
judge:
  judges: [models/small.gguf]
",
        cases.display()
    );
    let path = sweep_dir.join("sweep.yaml");
    std::fs::write(&path, &yaml).unwrap();
    // The tests run in coordinator/, where models/small.gguf does not exist.
    assert!(!Path::new("models/small.gguf").exists());
    let s = Sweep::load(&path, ModelCheck::Syntax).unwrap_or_else(|e| panic!("{e}"));
    let local = sweep_dir.join("models/small.gguf");
    assert_eq!(
        s.models[0].name, "models/small.gguf",
        "results keep the name as written"
    );
    assert_eq!(Path::new(&s.models[0].model), local);
    // Demo aliases and hub ids stay as they are.
    assert_eq!(s.models[1].model, "smollm2");
    assert_eq!(s.models[2].model, "hf:Qwen/Qwen2.5-7B-Instruct");
    // The judge loads from the same place, and the plan hands workers that path.
    assert_eq!(Path::new(&s.model_spec("models/small.gguf")), local);
    let plan = sweep::preview(&s, &FileRoot::local(&sweep_dir)).unwrap();
    let generate = plan.jobs.iter().find(|j| j.kind == "generate").unwrap();
    assert_eq!(Path::new(&generate.model), local);
    let judge = plan.jobs.iter().find(|j| j.kind == "judge").unwrap();
    assert_eq!(Path::new(&judge.model), local);

    // Checked as `flotilla run` checks it (models on this machine), the path is found from
    // any working directory; a missing one is named with the sweep's folder.
    let only_local = yaml.replace("  - hf:Qwen/Qwen2.5-7B-Instruct\n", "");
    std::fs::write(&path, &only_local).unwrap();
    Sweep::load(&path, ModelCheck::Local).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &path,
        only_local.replace(
            "models/small.gguf\n  - smollm2",
            "models/gone.gguf\n  - smollm2",
        ),
    )
    .unwrap();
    let e = Sweep::load(&path, ModelCheck::Local)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&sweep_dir.join("models/gone.gguf").display().to_string()),
        "{e}"
    );
}
