//! `flotilla dataset from-benchmark` as a user runs it: the shipped English + Japanese benchmark
//! becomes a chat fine-tuning set in eval's own prompt style, with a seeded held-out split that
//! never leaks into training; a wrong path is one clear error.

mod common;

use common::{flotilla, ok_json, repo, tmp};
use std::collections::HashSet;
use std::path::Path;

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn from_benchmark(out: &Path, variant: &str, seed: &str) -> serde_json::Value {
    let bench = repo().join("examples/benchmarks/en-ja/cases.jsonl");
    ok_json(&flotilla(&[
        "dataset",
        "from-benchmark",
        "--cases",
        bench.to_str().unwrap(),
        "--variant",
        variant,
        "--holdout",
        "0.25",
        "--seed",
        seed,
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]))
}

#[test]
fn shipped_benchmark_becomes_a_split_chat_set_in_eval_style() {
    let out = tmp("ds-enja");
    let v = from_benchmark(&out, "query_last", "0");
    let train = lines(&out.join("train.jsonl"));
    let heldout = lines(&out.join("heldout.jsonl"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["variant"], "query_last");
    assert_eq!(manifest["counts"]["cases"], 48);
    assert_eq!(manifest["counts"]["skipped"], 0);
    // A quarter of each (task, language) group of 12 is held out: 3 x 4.
    assert_eq!((train.len(), heldout.len()), (36, 12));
    assert_eq!(manifest["counts"]["train"], 36);
    assert_eq!(manifest["counts"]["heldout"], 12);
    for group in ["rag/en", "rag/ja", "document/en", "document/ja"] {
        assert_eq!(manifest["groups"][group]["heldout"], 3, "{manifest}");
    }
    assert_eq!(v["counts"], manifest["counts"]);

    // The held-out ids are exactly the held-out file's, and none is trained on.
    let held_ids: HashSet<&str> = manifest["heldout_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    let held_file: HashSet<&str> = heldout.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(held_ids, held_file);
    for e in &train {
        assert!(!held_ids.contains(e["id"].as_str().unwrap()), "{e}");
    }

    // Each example: eval's system + user messages, then the reference answer.
    let library = train
        .iter()
        .chain(&heldout)
        .find(|e| e["id"] == "en-library-hours")
        .unwrap();
    let m = library["messages"].as_array().unwrap();
    assert_eq!(
        m.iter()
            .map(|x| x["role"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["system", "user", "assistant"]
    );
    let user = m[1]["content"].as_str().unwrap();
    assert!(user.starts_with("Documents:\n[1] "), "{user}");
    assert!(
        user.contains("closed on Sundays and Mondays"),
        "retrieval found the passage: {user}"
    );
    assert!(user.ends_with(
        "Question: On which days is the Harbor Street Library closed?\nAnswer the question using the documents."
    ));
    assert_eq!(m[2]["content"], "It is closed on Sundays and Mondays.");
    let tea = train
        .iter()
        .chain(&heldout)
        .find(|e| e["id"] == "ja-tea-first")
        .unwrap();
    let user = tea["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("一番茶は4月下旬から5月にかけて摘まれ"),
        "the whole document: {user}"
    );
    assert!(tea["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("文書"));

    // The same seed gives the same split; another seed another.
    let again = tmp("ds-enja-again");
    from_benchmark(&again, "query_last", "0");
    assert_eq!(
        std::fs::read_to_string(out.join("heldout.jsonl")).unwrap(),
        std::fs::read_to_string(again.join("heldout.jsonl")).unwrap()
    );
    let other = tmp("ds-enja-other");
    let o = from_benchmark(&other, "query_last", "1");
    assert_ne!(o["heldout_ids"], manifest["heldout_ids"]);
}

#[test]
fn structured_variant_answers_between_the_markers() {
    let out = tmp("ds-structured");
    from_benchmark(&out, "structured", "0");
    let all: Vec<serde_json::Value> = lines(&out.join("train.jsonl"))
        .into_iter()
        .chain(lines(&out.join("heldout.jsonl")))
        .collect();
    let fuji = all.iter().find(|e| e["id"] == "ja-fuji-eruption").unwrap();
    assert!(fuji["messages"][1]["content"]
        .as_str()
        .unwrap()
        .starts_with("[[ ## context ## ]]\n"));
    assert_eq!(
        fuji["messages"][2]["content"],
        "[[ ## answer ## ]]\n1707年の宝永噴火が最後の噴火です。\n\n[[ ## completed ## ]]"
    );
}

#[test]
fn a_missing_benchmark_or_a_bad_flag_is_one_clear_error() {
    let out = tmp("ds-bad");
    let o = flotilla(&[
        "dataset",
        "from-benchmark",
        "--cases",
        "no/such/cases.jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no/such/cases.jsonl") && stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(!out.join("train.jsonl").exists());

    let bench = repo().join("examples/benchmarks/en-ja/cases.jsonl");
    let o = flotilla(&[
        "dataset",
        "from-benchmark",
        "--cases",
        bench.to_str().unwrap(),
        "--holdout",
        "1.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--holdout 1.5"), "{stderr}");
}

#[test]
fn cases_without_a_reference_answer_are_skipped_and_counted() {
    let dir = tmp("ds-skip");
    let docs = repo().join("examples/benchmarks/en-ja/documents");
    std::fs::write(
        dir.join("cases.jsonl"),
        format!(
            concat!(
                r#"{{"id": "ok", "task": "document", "query": "How long is the crossing?", "reference_answer": "35 minutes.", "documents": ["{0}/solar-boat.txt"]}}"#,
                "\n",
                r#"{{"id": "ok2", "task": "document", "query": "How many panels?", "reference_answer": "96.", "documents": ["{0}/solar-boat.txt"]}}"#,
                "\n",
                r#"{{"id": "grade", "task": "criteria", "query": "Some text.", "criteria": "Is it clear?"}}"#,
                "\n",
                r#"{{"id": "gone", "task": "document", "query": "Q?", "reference_answer": "A.", "documents": ["missing.txt"]}}"#,
                "\n"
            ),
            docs.display()
        ),
    )
    .unwrap();
    let out = dir.join("set");
    let v = ok_json(&flotilla(&[
        "dataset",
        "from-benchmark",
        "--cases",
        dir.join("cases.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["counts"]["examples"], 2, "{v}");
    assert_eq!(v["counts"]["skipped"], 2, "{v}");
    let reasons: Vec<&str> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("criteria")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing.txt")),
        "{reasons:?}"
    );
    assert_eq!(
        (
            v["counts"]["train"].as_u64(),
            v["counts"]["heldout"].as_u64()
        ),
        (Some(1), Some(1))
    );
}
