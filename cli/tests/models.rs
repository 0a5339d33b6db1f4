//! `flotilla model list` and `flotilla model inspect` on the model cache: what is there, what
//! each model is (a language model or an embedding model), on the real demo models.

mod common;

use common::{ok_json, tmp};
use std::process::{Command, Output};

/// `flotilla ARGS` with `FLOTILLA_HOME` set to `home`.
fn flotilla_home(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--threads", "2"])
        .args(args)
        .env("FLOTILLA_HOME", home)
        .output()
        .expect("run flotilla")
}

#[test]
fn model_list_shows_the_demo_aliases_whether_fetched_and_every_other_model_with_sizes() {
    // A home whose cache holds SmolLM2 under its demo name, MiniLM under another name, a
    // GGUF of our own and a folder that is no model; MiniLM's demo alias is not fetched.
    let home = tmp("model-list");
    let cache = home.join("models");
    std::fs::create_dir_all(&cache).unwrap();
    let smollm2 = flotilla_tests::smollm2_path();
    let minilm = flotilla_tests::minilm_path();
    std::os::unix::fs::symlink(&smollm2, cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::os::unix::fs::symlink(&smollm2, cache.join("mine.gguf")).unwrap();
    std::os::unix::fs::symlink(&minilm, cache.join("my-embedder")).unwrap();
    std::fs::create_dir_all(cache.join("notes")).unwrap();

    let v = ok_json(&flotilla_home(
        &home,
        &["model", "list", "--output", "json"],
    ));
    assert_eq!(v["cache"], cache.display().to_string());
    let models = v["models"].as_array().unwrap();
    let by_name = |n: &str| {
        models
            .iter()
            .find(|m| m["name"] == n || m["path"].as_str().unwrap().ends_with(n))
            .unwrap_or_else(|| panic!("no {n} in {v:#}"))
    };
    let s = by_name("smollm2");
    assert_eq!(s["fetched"], true);
    assert_eq!(s["kind"], "language");
    assert_eq!(s["format"], "gguf");
    assert_eq!(s["size_bytes"], std::fs::metadata(&smollm2).unwrap().len());
    let m = by_name("minilm");
    assert_eq!(m["fetched"], false);
    assert_eq!(m["kind"], "embedding");
    assert!(m["size_bytes"].is_null());
    assert_eq!(by_name("mine.gguf")["kind"], "language");
    let e = by_name("my-embedder");
    assert_eq!(
        (&e["kind"], &e["format"]),
        (&"embedding".into(), &"hf".into())
    );
    assert!(e["size_bytes"].as_u64().unwrap() > 80_000_000, "{e}");
    let e5 = by_name("e5");
    assert_eq!(
        (&e5["fetched"], &e5["kind"]),
        (&false.into(), &"embedding".into())
    );
    let g = by_name("gemma3");
    assert_eq!(
        (&g["fetched"], &g["kind"]),
        (&false.into(), &"language".into())
    );
    // Four demo aliases and the two models put there.
    assert_eq!(models.len(), 6, "the notes folder is no model: {v:#}");

    let out = flotilla_home(&home, &["model", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("minilm") && text.contains("not fetched"),
        "{text}"
    );
    assert!(text.contains("93.8 MiB"), "{text}");
}

#[test]
fn model_inspect_describes_minilm_as_an_embedding_model() {
    let v = ok_json(&common::flotilla(&[
        "model", "inspect", "minilm", "--output", "json",
    ]));
    assert_eq!(v["kind"], "embedding");
    assert_eq!(v["architecture"], "BertModel");
    assert_eq!(v["dimensions"], 384);
    assert_eq!(v["max_tokens"], 256);
    assert_eq!(v["vocab_size"], 30522);
    assert_eq!(v["layers"], 6);
    // all-MiniLM-L6-v2 has 22.7 M parameters.
    let p = v["parameters"].as_u64().unwrap();
    assert!((22_000_000..23_500_000).contains(&p), "{p}");

    let out = common::flotilla(&["model", "inspect", "minilm"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("embedding model") && text.contains("dimensions:    384"),
        "{text}"
    );

    // A language model says it is one.
    let v = ok_json(&common::flotilla(&[
        "model", "inspect", "smollm2", "--output", "json",
    ]));
    assert_eq!(v["kind"], "language");
}
