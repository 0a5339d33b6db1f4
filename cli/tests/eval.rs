//! `flotilla eval` as a user runs it, on the real demo models: Flow's sample benchmark end to
//! end, the shipped English + Japanese benchmark under four prompt variants, reproducible
//! scores, and broken inputs that fail one case rather than the run.

mod common;

use common::{copy_smoke_benchmark, flotilla, ok_json, planted_judge, repo, tmp};
use std::path::Path;
use std::process::Output;

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `flotilla eval --model smollm2 ARGS... --max-tokens MAX --explanation-tokens EXPLAIN
/// --out OUT --output json`, waited for.
fn eval_smollm2(args: &[&str], max_tokens: u32, explanation_tokens: u32, out: &Path) -> Output {
    let (max, explain) = (max_tokens.to_string(), explanation_tokens.to_string());
    let mut all = vec!["eval", "--model", "smollm2"];
    all.extend_from_slice(args);
    all.extend([
        "--max-tokens",
        max.as_str(),
        "--explanation-tokens",
        explain.as_str(),
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]);
    flotilla(&all)
}

#[test]
fn flow_sample_benchmark_runs_end_to_end_with_smollm2_as_model_and_judge() {
    let flow = repo().join("../shared/peer/flow_benchmark_tools");
    let out = tmp("flow");
    let v = ok_json(&eval_smollm2(
        &[
            "--judge",
            "self",
            "--scale",
            "1-10",
            "--cases",
            flow.join("rag_benchmark.jsonl").to_str().unwrap(),
            "--cases",
            flow.join("criteria_benchmark.jsonl").to_str().unwrap(),
            "--documents",
            flow.join("files").to_str().unwrap(),
        ],
        48,
        24,
        &out,
    ));
    assert_eq!(v["failed_cases"].as_array().unwrap().len(), 0, "{v}");
    for f in [
        "results.json",
        "flow_results.json",
        "cases.jsonl",
        "report.md",
        "report.html",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    assert_eq!(cases.lines().count(), 7);
    for line in cases.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let score = c["score"].as_f64().expect("the local judge always rates");
        assert!((1.0..=10.0).contains(&score), "{c}");
        if c["task"] == "rag" {
            // Four chunks, or every chunk of a document that has fewer (the resume is three
            // 200-token chunks).
            let hits = c["hits"].as_array().unwrap();
            let mut chunks: Vec<u64> = hits.iter().map(|h| h["chunk"].as_u64().unwrap()).collect();
            chunks.sort();
            assert!(
                hits.len() == 4 || chunks == (0..hits.len() as u64).collect::<Vec<_>>(),
                "{c}"
            );
            assert!(c["prompt"].as_str().unwrap().contains("[1]"));
        }
    }
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("judge `self` is the model under test (smollm2)"),
        "--judge self is named for what it is: {warnings}"
    );
    let flow_out = read_json(&out.join("flow_results.json"));
    let runs = flow_out["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one run per configuration (rag, criteria)");
    let total: usize = runs
        .iter()
        .map(|r| r["benchmark_outputs"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 7);
    let e = &runs[0]["benchmark_outputs"][0]["evaluations"][0];
    assert_eq!(
        (e["rating_min"].as_u64(), e["rating_max"].as_u64()),
        (Some(1), Some(10))
    );
    assert!(e["rating"].as_i64().is_some() && e["test_answer"].is_string());
    assert!(runs[0]["metrics"]["mean_rating"].is_number());
    let results = read_json(&out.join("results.json"));
    assert_eq!(results["scale"]["min"], 1);
    assert_eq!(results["configurations"].as_array().unwrap().len(), 2);
}

#[test]
fn shipped_english_japanese_benchmark_compares_four_variants() {
    let bench = repo().join("examples/benchmarks/en-ja");
    let out = tmp("enja");
    let template = format!("custom:{}", bench.join("answer.jinja").display());
    let v = ok_json(&eval_smollm2(
        &[
            "--cases",
            bench.join("smoke.jsonl").to_str().unwrap(),
            "--variant",
            "query_first",
            "--variant",
            "query_last",
            "--variant",
            "structured",
            "--variant",
            &template,
        ],
        48,
        24,
        &out,
    ));
    let configs = v["configurations"].as_array().unwrap();
    assert_eq!(configs.len(), 16, "4 variants x (rag, document) x (en, ja)");
    assert!(configs
        .iter()
        .any(|c| c["language"] == "ja" && c["task"] == "document"));
    let comparisons = v["comparisons"].as_array().unwrap();
    let pooled: Vec<&serde_json::Value> = comparisons
        .iter()
        .filter(|c| c["a"]["task"] == "all" && c["metric"] == "judge")
        .collect();
    assert_eq!(
        pooled.len(),
        3,
        "three variants against query_first, pooled"
    );
    for c in &pooled {
        assert_eq!(c["n"], 4);
        let (lo, hi, d) = (
            c["ci_low"].as_f64().unwrap(),
            c["ci_high"].as_f64().unwrap(),
            c["delta"].as_f64().unwrap(),
        );
        assert!(lo <= d && d <= hi, "{c}");
        assert!((0.0..=1.0).contains(&c["p_value"].as_f64().unwrap()));
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains(
            "query_last vs query_first | adapter base | smollm2 / all / all | 4 (too few cases) |"
        ),
        "{report}"
    );
    // Japanese text reaches the prompt intact.
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    assert!(cases.contains("宝永噴火"));
    let library = cases
        .lines()
        .find(|l| l.contains("\"en-library-hours\""))
        .unwrap();
    let c: serde_json::Value = serde_json::from_str(library).unwrap();
    assert!(c["metrics"]["regex_match"].is_boolean(), "{c}");
}

#[test]
fn same_seed_same_inputs_give_byte_identical_scores_and_a_results_folder_runs_again() {
    // A copy of the benchmark, so the test can change an input afterwards.
    let bench = tmp("det-bench");
    copy_smoke_benchmark(&bench);
    let scores = |out: &Path| {
        let mut v = read_json(&out.join("results.json"));
        let o = v.as_object_mut().unwrap();
        o.remove("timings");
        o.remove("provenance");
        serde_json::to_string_pretty(&v).unwrap()
    };
    let first = tmp("det-a");
    ok_json(&eval_smollm2(
        &[
            "--cases",
            bench.join("smoke.jsonl").to_str().unwrap(),
            "--task",
            "rag",
            "--variant",
            "query_last",
            "--seed",
            "5",
        ],
        32,
        16,
        &first,
    ));
    let p = read_json(&first.join("results.json"))["provenance"].clone();
    assert_eq!(p["command"], "eval", "{p}");
    assert_eq!(p["settings"]["seed"], 5, "{p}");
    assert!(!p["flotilla_commit"].as_str().unwrap().is_empty(), "{p}");
    assert_eq!(p["machines"][0]["device"], "cpu", "{p}");
    let files = p["files"].as_array().unwrap();
    let role = |r: &str| files.iter().filter(|f| f["role"] == r).count();
    assert_eq!(
        (role("model"), role("cases"), role("embedder")),
        (1, 1, 1),
        "{p}"
    );
    assert!(role("document") >= 1, "{p}");
    for f in files
        .iter()
        .filter(|f| f["role"] != "judge" || f["path"] != "")
    {
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64, "{f}");
    }

    // Run again from the results folder alone: the same scores.
    let again = tmp("det-b");
    let o = flotilla(&[
        "run",
        "--from",
        first.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = scores(&first);
    assert!(a.contains("\"score\""));
    assert_eq!(a, scores(&again));

    // A changed input: the run cannot be repeated as it was, and says which file changed.
    let mut text = std::fs::read_to_string(bench.join("smoke.jsonl")).unwrap();
    text.push('\n');
    std::fs::write(bench.join("smoke.jsonl"), text).unwrap();
    let o = flotilla(&[
        "run",
        "--from",
        first.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("changed since the recorded run") && e.contains("smoke.jsonl"),
        "{e}"
    );
}

#[test]
fn broken_cases_fail_alone_and_bad_flags_fail_before_loading() {
    let dir = tmp("broken");
    std::fs::write(dir.join("ok.txt"), "The harbour opens at 9:00 every day.").unwrap();
    std::fs::write(
        dir.join("broken.pdf"),
        b"%PDF-1.4\nthis is not really a pdf\n%%EOF",
    )
    .unwrap();
    let cases = dir.join("cases.jsonl");
    std::fs::write(
        &cases,
        [
            r#"{"id": "good", "task": "document", "query": "When does the harbour open?", "reference_answer": "At 9:00.", "documents": ["ok.txt"]}"#,
            r#"{"id": "missing", "task": "document", "query": "x?", "reference_answer": "y", "documents": ["nope.txt"]}"#,
            r#"{"id": "bad-pdf", "task": "document", "query": "x?", "reference_answer": "y", "documents": ["broken.pdf"]}"#,
            r#"{"id": "malformed", "task": "document", "query": "#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.join("out");
    let o = eval_smollm2(&["--cases", cases.to_str().unwrap()], 24, 16, &out);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        stderr.contains("cases.jsonl:4"),
        "malformed line reported: {stderr}"
    );
    let v = ok_json(&o);
    let failed: Vec<String> = v["failed_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0].contains("missing") && failed[0].contains("nope.txt"),
        "{failed:?}"
    );
    assert!(
        failed[1].contains("bad-pdf") && failed[1].contains("broken.pdf"),
        "{failed:?}"
    );
    let good = v["configurations"][0].clone();
    assert_eq!(
        (
            good["cases"].as_u64(),
            good["errors"].as_u64(),
            good["n"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{good}"
    );

    let o = flotilla(&[
        "eval",
        "--model",
        "smollm2",
        "--cases",
        cases.to_str().unwrap(),
        "--variant",
        "query_middle",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("query_middle"), "{e}");

    // A run where every case failed is a failed run; asked for JSON, the error is JSON.
    let only_missing = dir.join("missing.jsonl");
    std::fs::write(
        &only_missing,
        r#"{"id": "missing", "task": "document", "query": "x?", "reference_answer": "y", "documents": ["nope.txt"]}"#,
    )
    .unwrap();
    let o = eval_smollm2(&["--cases", only_missing.to_str().unwrap()], 24, 16, &out);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON error");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("every case failed (1 of 1)"),
        "{v}"
    );
    let o = eval_smollm2(
        &[
            "--cases",
            only_missing.to_str().unwrap(),
            "--variant",
            "query_middle",
        ],
        24,
        16,
        &out,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON usage error");
    assert!(v["error"].as_str().unwrap().contains("query_middle"), "{v}");
}

#[test]
fn a_planted_judge_that_never_varies_is_warned_about_and_reads_the_context() {
    // It also always prefers the answer shown first, when asked to compare two.
    let (base, seen) = planted_judge("The answer is fine. Rating: [[5]] Verdict: [[A]]");
    let bench = repo().join("examples/benchmarks/en-ja");
    let out = tmp("planted");
    let judge = format!("openai:planted@{base}");
    let v = ok_json(&eval_smollm2(
        &[
            "--cases",
            bench.join("smoke.jsonl").to_str().unwrap(),
            "--variant",
            "query_first",
            "--variant",
            "query_last",
            "--judge",
            &judge,
            // Two answers per case: the case stays the unit.
            "--samples",
            "2",
            "--temperature",
            "0.8",
            "--pairwise",
        ],
        24,
        24,
        &out,
    ));
    for c in v["configurations"].as_array().unwrap() {
        assert_eq!(
            (c["cases"].as_u64(), c["answers"].as_u64(), c["n"].as_u64()),
            (Some(1), Some(2), Some(1)),
            "{c}"
        );
    }
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "judge `{judge}` barely varies: 16 of its 16 ratings are 5"
        )),
        "{warnings}"
    );
    assert!(!warnings.contains("model under test"), "{warnings}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("> **Warning:** judge `openai:planted@"),
        "{report}"
    );
    let check = &v["judges"][0];
    assert_eq!(check["histogram"][5], 16, "{check}");
    // The judge saw what the model was given: retrieved passages for RAG, the document for
    // document analysis, and the reference answer.
    // Pairwise: every query_last answer against query_first's, asked twice with the positions
    // swapped; a judge that always picks the first answer decides nothing.
    let p = &v["pairwise"][0];
    assert_eq!(
        (p["a"].as_str(), p["b"].as_str()),
        (Some("query_first"), Some("query_last")),
        "{p}"
    );
    assert_eq!(
        (
            p["n"].as_u64(),
            p["ties"].as_u64(),
            p["inconsistent"].as_u64()
        ),
        (Some(4), Some(8), Some(8)),
        "{p}"
    );
    assert_eq!(
        (p["wins_a"].as_u64(), p["wins_b"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("pairwise.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 16 + 16);
    assert_eq!(seen.iter().filter(|u| u.contains("[Answer A]")).count(), 16);
    let rag = seen
        .iter()
        .find(|u| u.contains("Harbor Street Library closed") && !u.contains("[Answer A]"))
        .expect("the library question was judged");
    assert!(rag.contains("[Retrieved passages]\n[1] "), "{rag}");
    assert!(
        rag.contains("[Reference answer]\nIt is closed on Sundays and Mondays."),
        "{rag}"
    );
    assert!(rag.contains("Faithfulness"), "{rag}");
    assert!(
        seen.iter()
            .any(|u| u.contains("[Document]\n") && u.contains("Grounding")),
        "{seen:?}"
    );
}

#[test]
fn a_rubric_template_replaces_the_judges_request_and_limit_and_language_pick_the_cases() {
    let (base, seen) = planted_judge("Fine. Rating: [[7]]");
    let dir = tmp("rubric");
    let rubric = dir.join("rubric.jinja");
    std::fs::write(
        &rubric,
        "TASK {{ task }}\nQ {{ question }}\nREF {{ reference }}\nDOC {{ context[:40] }}\nA {{ answer }}\n\
         Rate {{ scale_min }} to {{ scale_max }}.",
    )
    .unwrap();
    let bench = repo().join("examples/benchmarks/en-ja/cases.jsonl");
    let judge = format!("openai:planted@{base}");
    let v = ok_json(&eval_smollm2(
        &[
            "--cases",
            bench.to_str().unwrap(),
            "--task",
            "document",
            "--language",
            "en",
            "--limit",
            "1",
            "--judge",
            &judge,
            "--rubric",
            rubric.to_str().unwrap(),
        ],
        16,
        16,
        &dir.join("out"),
    ));
    let configs = v["configurations"].as_array().unwrap();
    assert_eq!(configs.len(), 1, "{v}");
    assert_eq!(
        (
            configs[0]["language"].as_str(),
            configs[0]["cases"].as_u64()
        ),
        (Some("en"), Some(1))
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let user = &seen[0];
    assert!(user.starts_with("TASK document\nQ "), "{user}");
    assert!(
        user.contains("\nREF ") && user.contains("\nDOC ") && user.ends_with("Rate 0 to 10."),
        "{user}"
    );
    assert_eq!(v["configurations"][0]["mean"], 7.0);
    // A rubric that does not render is refused before any model loads.
    std::fs::write(&rubric, "{{ question }").unwrap();
    let o = eval_smollm2(
        &[
            "--cases",
            bench.to_str().unwrap(),
            "--rubric",
            rubric.to_str().unwrap(),
        ],
        16,
        16,
        &dir.join("out2"),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--rubric") && e.contains("rubric.jinja"),
        "{e}"
    );
}

#[test]
fn recall_at_k_is_retrievals_and_the_context_budget_shows_apart() {
    let (base, _seen) = planted_judge("Fine. Rating: [[5]]");
    let judge = format!("openai:planted@{base}");
    let dir = tmp("context-recall");
    let bench = repo().join("examples/benchmarks/en-ja/cases.jsonl");
    let run_with = |budget: &str, out: &str| -> Vec<serde_json::Value> {
        let v = ok_json(&eval_smollm2(
            &[
                "--cases",
                bench.to_str().unwrap(),
                "--task",
                "rag",
                "--language",
                "ja",
                "--limit",
                "3",
                "--judge",
                &judge,
                "--context-tokens",
                budget,
            ],
            8,
            8,
            &dir.join(out),
        ));
        assert!(
            v["configurations"][0]["mean_recall_at_k"].is_number(),
            "{v}"
        );
        std::fs::read_to_string(dir.join(out).join("cases.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let wide = run_with("8192", "wide");
    let tight = run_with("150", "tight");
    assert_eq!(wide.len(), 3);
    for (w, t) in wide.iter().zip(&tight) {
        // The same chunks are retrieved whatever the budget: recall@k is the same.
        assert_eq!(w["recall_at_k"], t["recall_at_k"], "{}", w["case_id"]);
        // A wide budget shows the model every retrieved chunk; a tight one fewer.
        assert_eq!(w["context_recall"], w["recall_at_k"]);
        assert!(t["hits"].as_array().unwrap().len() < w["hits"].as_array().unwrap().len());
        let (r, c) = (
            t["recall_at_k"].as_f64().unwrap(),
            t["context_recall"].as_f64().unwrap(),
        );
        assert!(c <= r, "{t}");
    }
}
