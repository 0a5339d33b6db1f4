//! LoRA fine-tuning as a user runs it on the demo model: a set built from the shipped
//! benchmark trains an adapter that lowers held-out loss and that `flotilla eval` measures
//! against the base model; a run killed with SIGKILL resumes to the same adapter; bad configs
//! fail before any training with the field named.

mod common;

use candle_core::Device;
use common::{flotilla, ok_json, repo, tmp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write(p: &Path, text: &str) -> PathBuf {
    std::fs::write(p, text).unwrap();
    p.to_path_buf()
}

/// Short chat records about made-up facts, one per line.
fn chat_records(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Which pier does ferry {i} leave from?")},
                {"role": "assistant", "content": format!("Ferry {i} leaves from pier {}.", i % 5 + 1)},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn adapter_tensors(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn lora_on_the_shipped_benchmark_lowers_held_out_loss_and_eval_measures_the_adapter() {
    let dir = tmp("train-bench");
    let bench = repo().join("examples/benchmarks/en-ja");
    let ds = dir.join("ds");
    ok_json(&flotilla(&[
        "dataset",
        "from-benchmark",
        "--cases",
        bench.join("cases.jsonl").to_str().unwrap(),
        "--variant",
        "query_last",
        "--task",
        "rag",
        "--retrieval-top-k",
        "1",
        "--chunk-size",
        "400",
        "--out",
        ds.to_str().unwrap(),
        "--output",
        "json",
    ]));
    let cfg = write(
        &dir.join("train.yaml"),
        "model: smollm2\ndata: ds/train.jsonl\neval_data: ds/heldout.jsonl\nsteps: 10\n\
         batch_size: 2\nmax_seq_len: 1024\neval_every: 5\ncheckpoint_every: 5\nseed: 0\n\
         lora: {rank: 8, alpha: 16}\noptimizer: {lr: 0.002, warmup_steps: 2}\nout: run\n",
    );
    let s = ok_json(&flotilla(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        "json",
    ]));
    let before = s["eval_loss_before"].as_f64().unwrap();
    let after = s["eval_loss_after"].as_f64().unwrap();
    assert!(
        after < 0.8 * before,
        "held-out loss should fall clearly: {before} -> {after}"
    );
    assert_eq!(s["steps"], 10);
    let adapter = dir.join("run/adapter");
    assert!(adapter.join("adapter_config.json").exists());
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["task_type"], "CAUSAL_LM");
    assert_eq!(cfg_json["r"], 8);

    // Evaluate base and adapter on the held-out cases only, with the same (base) judge.
    let out = dir.join("eval");
    let v = ok_json(&flotilla(&[
        "eval",
        "--model",
        "smollm2",
        "--cases",
        ds.join("heldout-cases.jsonl").to_str().unwrap(),
        "--documents",
        bench.to_str().unwrap(),
        "--adapter",
        "base",
        "--adapter",
        adapter.to_str().unwrap(),
        "--retrieval-top-k",
        "1",
        "--chunk-size",
        "400",
        "--max-tokens",
        "40",
        "--explanation-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]));
    let configs = v["configurations"].as_array().unwrap();
    let labels: Vec<&str> = configs
        .iter()
        .filter_map(|c| c["adapter"].as_str())
        .collect();
    assert!(
        labels.contains(&"base") && labels.contains(&"run/adapter"),
        "{labels:?}"
    );
    let cmp = v["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["axis"] == "adapter"
                && c["metric"] == "judge"
                && c["b"]["adapter"] == "run/adapter"
                && c["b"]["task"] == "all"
        })
        .unwrap_or_else(|| panic!("no adapter comparison in {}", v["comparisons"]));
    // The six held-out RAG cases (a quarter of each language's twelve, rounded), paired.
    assert_eq!(cmp["n"].as_u64().unwrap(), 6, "{cmp}");
    assert!(
        cmp["delta"].is_number() && cmp["p_value"].is_number(),
        "{cmp}"
    );
    // The adapter's measured figures differ from the base's (SmolLM2 as judge is coarse, so
    // token F1 against the reference and G-Eval are compared as well as the score).
    let figures = |adapter: &str| -> Vec<String> {
        configs
            .iter()
            .filter(|c| c["adapter"] == adapter)
            .map(|c| format!("{} {} {}", c["mean"], c["mean_token_f1"], c["mean_geval"]))
            .collect()
    };
    assert_ne!(figures("base"), figures("run/adapter"));
    // The adapter answers differently from the base on at least some held-out cases.
    let cases: Vec<serde_json::Value> = std::fs::read_to_string(out.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answer = |adapter: &str, id: &str| {
        cases
            .iter()
            .find(|c| c["adapter"] == adapter && c["case_id"] == id)
            .map(|c| c["answer"].clone())
    };
    let ids: Vec<String> = cases
        .iter()
        .filter(|c| c["adapter"] == "base")
        .map(|c| c["case_id"].as_str().unwrap().to_string())
        .collect();
    let changed = ids
        .iter()
        .filter(|id| answer("base", id) != answer("run/adapter", id))
        .count();
    assert!(changed > 0, "the adapter changed no answer");
}

#[test]
fn a_training_run_killed_mid_way_resumes_to_the_adapter_of_a_straight_run() {
    let dir = tmp("train-kill");
    write(&dir.join("data.jsonl"), &chat_records(12));
    let cfg = write(
        &dir.join("train.yaml"),
        "model: smollm2\ndata: data.jsonl\nholdout: 0.2\nsteps: 6\nbatch_size: 2\n\
         max_seq_len: 128\neval_every: 0\ncheckpoint_every: 2\n\
         lora: {rank: 4, dropout: 0.1, target_modules: [q_proj, v_proj, down_proj]}\n\
         optimizer: {lr: 0.001, warmup_steps: 1}\n",
    );
    let straight = dir.join("straight");
    ok_json(&flotilla(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        straight.to_str().unwrap(),
        "--output",
        "json",
    ]));

    let killed = dir.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "--threads",
            "2",
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
        ])
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = killed.join("checkpoints/step-000002/state.json");
    let t = Instant::now();
    while !first.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("adapter").exists(), "killed before the end");

    // Starting again without --resume is refused rather than overwriting the run.
    let again = flotilla(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        killed.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let s = ok_json(&flotilla(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        killed.to_str().unwrap(),
        "--resume",
        "--output",
        "json",
    ]));
    let from = s["resumed_from"].as_u64().expect("resumed");
    assert!(from >= 2 && from < 6, "resumed from {from}");
    let a = adapter_tensors(&straight.join("adapter"));
    let b = adapter_tensors(&killed.join("adapter"));
    assert_eq!(a.len(), 30 * 3 * 2, "30 layers x 3 modules x (A, B)");
    for (k, ta) in &a {
        let d = max_abs_diff(ta, &b[k]);
        assert!(d < 1e-5, "{k} differs by {d} after resume");
    }

    // The same run through the compositions of candle ops that a GPU uses
    // (FLOTILLA_COMPOSED_OPS=1) in place of the CPU's custom ops: the same adapter.
    let composed = dir.join("composed");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "--threads",
            "2",
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
        ])
        .arg(&composed)
        .env("FLOTILLA_COMPOSED_OPS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = adapter_tensors(&composed.join("adapter"));
    for (k, ta) in &a {
        let d = max_abs_diff(ta, &c[k]);
        assert!(
            d < 1e-4,
            "{k} differs by {d} between the custom ops and their composition"
        );
    }
}

#[test]
fn bad_training_configs_fail_before_any_training_with_the_field_named() {
    let dir = tmp("train-bad");
    write(&dir.join("data.jsonl"), &chat_records(4));
    write(&dir.join("empty.jsonl"), "");
    let long = serde_json::json!({"messages": [
        {"role": "user", "content": "tell me a long story ".repeat(20)},
        {"role": "assistant", "content": "Once upon a time."},
    ]})
    .to_string();
    write(&dir.join("long.jsonl"), &(chat_records(3) + &long + "\n"));
    let cases = [
        (
            "data: data.jsonl\nlora: {target_modules: [q_proj, qkv_proj]}\n",
            "unknown module `qkv_proj`",
        ),
        ("data: data.jsonl\nlora: {rank: 0}\n", "lora.rank"),
        ("data: missing.jsonl\n", "missing.jsonl"),
        ("data: empty.jsonl\n", "empty.jsonl"),
        (
            "data: long.jsonl\nholdout: 0\nmax_seq_len: 48\n",
            "long.jsonl",
        ),
        ("data: data.jsonl\nrank: 8\n", "unknown field `rank`"),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let cfg = write(
            &dir.join(format!("t{i}.yaml")),
            &format!("model: smollm2\nsteps: 3\n{yaml}"),
        );
        let out = dir.join(format!("out{i}"));
        let r = flotilla(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{yaml}: accepted");
        assert!(
            err.contains(needle),
            "{yaml}: error does not name {needle}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !out.join("checkpoints").exists(),
            "{yaml}: training started"
        );
    }
}
