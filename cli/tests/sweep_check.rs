//! `flotilla sweep check`: a sweep is checked here exactly as `sweep submit` and `flotilla run`
//! check it — every problem at once, with its file and line — and a valid one shows its plan
//! (the coordinator's own) without running anything.

mod common;

use common::{flotilla, ok_json, repo, tmp};

#[test]
fn the_quickstart_plan_shows_its_jobs_answers_verdicts_and_an_estimate_of_tokens() {
    let sweep = repo().join("examples/quickstart.yaml");
    let v = ok_json(&flotilla(&[
        "sweep",
        "check",
        sweep.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["valid"], true);
    assert_eq!(v["sweep"], "quickstart");
    // 24 cases (limit 6 x 2 tasks x 2 languages) x 2 variants x 2 adapters.
    assert_eq!(v["cases"], 24);
    let t = &v["totals"];
    assert_eq!(t["generations"], 96, "{t}");
    assert_eq!(t["judgements"], 96, "{t}");
    assert_eq!(t["jobs"], 33, "{t}");
    assert_eq!(
        (&t["train_jobs"], &t["generate_jobs"], &t["judge_jobs"]),
        (&1.into(), &16.into(), &16.into())
    );
    assert_eq!(t["shards"], 97, "{t}");
    assert_eq!(t["train_steps"], 20, "{t}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 33);
    // Tokens: counted with SmolLM2's own tokenizer (it is on this machine), labelled an
    // estimate, completions at their limits: 96 answers x 64 tokens, 96 verdicts x (48 + 8).
    let tokens = &v["tokens"];
    assert_eq!(tokens["estimate"], true);
    assert_eq!(tokens["counted_with"][0]["model"], "smollm2");
    assert_eq!(tokens["counted_with"][0]["method"], "tokenizer");
    assert_eq!(tokens["generate"]["completion_max"], 96 * 64);
    assert_eq!(tokens["judge"]["completion_max"], 96 * (48 + 8));
    let prompt = tokens["generate"]["prompt"].as_u64().unwrap();
    // Each prompt holds a question and at least some context, and no RAG context exceeds
    // its 1024-token budget (8192 is SmolLM2's window for a whole document).
    assert!(prompt > 96 * 20 && prompt < 96 * 8192, "{tokens}");
    // Training: 20 steps x 4 sequences x 512 tokens at most.
    assert_eq!(tokens["train_max"], 20 * 4 * 512);

    // The text form says the same, and that nothing ran.
    let out = flotilla(&["sweep", "check", sweep.to_str().unwrap(), "--jobs"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "valid; nothing was run",
        "jobs         33 (1 train, 16 generate, 16 judge)",
        "generations  96 answers",
        "judgements   96 verdicts",
        "tokens (an estimate)",
        "counted with the tokenizer of smollm2",
        "train lora on smollm2",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}

#[test]
fn a_sweep_with_mistakes_in_several_blocks_gets_every_one_in_one_run_and_exit_status_1() {
    let dir = tmp("sweep-check-broken");
    std::fs::write(
        dir.join("cases.jsonl"),
        "{\"task\": \"document\", \"query\": \"q\", \"documents\": [\"doc.txt\"]}\nnot json\n",
    )
    .unwrap();
    std::fs::write(dir.join("doc.txt"), "text").unwrap();
    let sweep = dir.join("broken.yaml");
    std::fs::write(
        &sweep,
        "\
models: [smollm3]
variants: [query_first, query_middle]
adapters:
  - base
  - name: mine
    path: adapters/mine
datasets:
  - cases: cases.jsonl
    limt: 2
generation:
  max_tokens: 0
",
    )
    .unwrap();
    let out = flotilla(&["sweep", "check", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "broken.yaml:1: models[0]: unknown model `smollm3`",
        "broken.yaml:2: unknown prompt variant `query_middle`",
        "broken.yaml:5: adapter `mine`: adapters/mine has no adapter_config.json",
        "broken.yaml:9: unknown key `limt`",
        "broken.yaml:11: `generation.max_tokens` must be at least 1",
        "cases.jsonl:2: not valid JSON",
    ] {
        assert!(err.contains(needle), "no {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "no plan for an invalid sweep");

    // JSON: one document listing every problem with its file and line.
    let out = flotilla(&[
        "sweep",
        "check",
        sweep.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.len() >= 6, "{v:#}");
    assert!(
        errors
            .iter()
            .any(|e| e["line"] == 2 && e["message"].as_str().unwrap().contains("query_middle")),
        "{v:#}"
    );

    // A file that is not there is named.
    let out = flotilla(&["sweep", "check", dir.join("nope.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.yaml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn models_are_checked_as_flotilla_run_checks_them_with_local_and_paths_start_at_the_sweep() {
    let dir = tmp("sweep-check-local");
    let sweep_dir = dir.join("study");
    std::fs::create_dir_all(sweep_dir.join("models")).unwrap();
    let gguf = flotilla_tests::smollm2_path();
    std::os::unix::fs::symlink(&gguf, sweep_dir.join("models/small.gguf")).unwrap();
    let cases = repo().join("examples/benchmarks/en-ja/cases.jsonl");
    let yaml = |model: &str| {
        format!(
            "models: [{model}, hf:Nobody/Nothing]\nvariants: [query_first]\n\
             datasets:\n  - cases: {}\n    tasks: [document]\n    limit: 1\n",
            cases.display()
        )
    };
    let sweep = sweep_dir.join("sweep.yaml");
    std::fs::write(&sweep, yaml("models/small.gguf")).unwrap();
    // As `sweep submit` checks it: spelling only, so the hub id not cached here is fine.
    let v = ok_json(&flotilla(&[
        "sweep",
        "check",
        sweep.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["models"][0]["name"], "models/small.gguf");
    let resolved = v["models"][0]["model"].as_str().unwrap();
    assert!(
        std::path::Path::new(resolved).ends_with("study/models/small.gguf"),
        "{resolved}"
    );
    assert_eq!(v["models"][1]["model"], "hf:Nobody/Nothing");
    // The model beside the sweep is found (and its tokenizer counts), from any folder.
    let counted = v["tokens"]["counted_with"].as_array().unwrap();
    assert!(
        counted
            .iter()
            .any(|c| c["model"] == resolved && c["method"] == "tokenizer"),
        "{counted:?}"
    );
    let hub = counted
        .iter()
        .find(|c| c["model"] == "hf:Nobody/Nothing")
        .unwrap();
    assert_eq!(hub["method"], "characters");
    // With --local, as `flotilla run` checks it: the missing hub model is an error.
    let out = flotilla(&["sweep", "check", "--local", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sweep.yaml:1: model `hf:Nobody/Nothing`"),
        "{err}"
    );
    assert!(
        !err.contains("small.gguf"),
        "the local path resolves: {err}"
    );
}
