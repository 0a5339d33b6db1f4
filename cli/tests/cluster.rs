//! The cluster as a user runs it: a real etcd on a loopback port, a `flotilla coordinator`
//! process and `flotilla worker` processes on the real SmolLM2, sweeps submitted and followed
//! with `flotilla sweep`. The sweeps are tiny (short documents, 12-token answers, 8-token
//! judge explanations) so the whole file stays within a few minutes on two cores.
//!
//! What must hold: a cluster gives the same results as `flotilla run` with the same seed; a
//! worker killed with SIGKILL mid-shard, or a coordinator killed and restarted on its data
//! folder, loses and doubles nothing; wrong or missing tokens are refused.

mod common;

use common::procs::*;
use common::{ok_json, tmp};
use flotilla_tests::etcd::free_port;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// The benchmark and the sweep: two short English documents, `cases` cases (RAG and
/// document), and with `lora` a two-step LoRA trained by the sweep.
fn write_sweep(
    dir: &Path,
    cases: usize,
    variants: &[&str],
    lora: bool,
    shard_size: usize,
) -> PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("ferry.txt"),
        "The ferry Aurora crosses the bay six times a day. It carries 120 passengers and 20 \
         bicycles.\nThe first crossing leaves at 7 in the morning from Pier 3.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("garden.txt"),
        "The Willow Garden opens at 9 and closes at 17. Entry costs 4 euros for adults and is \
         free for children.\nThe garden has 300 kinds of roses and a small tea house by the pond.\n",
    )
    .unwrap();
    let all = [
        (
            "ferry-trips",
            "rag",
            "How many times a day does the Aurora cross the bay?",
            "Six times a day.",
            "ferry",
        ),
        (
            "garden-roses",
            "document",
            "How many kinds of roses does the garden have?",
            "300 kinds.",
            "garden",
        ),
        (
            "garden-price",
            "rag",
            "How much does entry to the Willow Garden cost for adults?",
            "4 euros.",
            "garden",
        ),
        (
            "ferry-pier",
            "document",
            "From which pier does the first crossing leave?",
            "Pier 3.",
            "ferry",
        ),
    ];
    let lines: Vec<String> = all[..cases]
        .iter()
        .map(|(id, task, q, a, doc)| {
            serde_json::json!({"id": id, "task": task, "language": "en", "query": q,
                "reference_answer": a, "documents": [format!("docs/{doc}.txt")]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("cases.jsonl"), lines.join("\n") + "\n").unwrap();
    flotilla_tests::write_chat_jsonl(
        &dir.join("train.jsonl"),
        &[
            ("When does the garden open?", "At 9."),
            (
                "How many passengers does the ferry carry?",
                "120 passengers.",
            ),
            ("Where is the tea house?", "By the pond."),
            ("How many bicycles fit on the ferry?", "20 bicycles."),
        ],
    );
    let adapters = if lora {
        "adapters:
  - base
  - name: lora
    train:
      data: train.jsonl
      steps: 2
      batch_size: 2
      max_seq_len: 64
      holdout: 0.25
      eval_every: 0
      checkpoint_every: 0
      lora:
        rank: 4
        alpha: 8
        target_modules: [q_proj, v_proj]
"
    } else {
        "adapters: [base]\n"
    };
    let yaml = format!(
        "name: e2e
seed: 11
models: [smollm2]
variants: [{}]
{adapters}datasets:
  - name: tiny
    cases: cases.jsonl
judge:
  judges: [smollm2]
  explanation_tokens: 8
generation:
  max_tokens: 12
retrieval:
  top_k: 1
  chunk_size: 200
  chunk_overlap: 20
shard_size: {shard_size}
",
        variants.join(", ")
    );
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The value of the sample `name{labels...}` in an exposition (labels as written, in order;
/// "" for none); 0 when absent.
fn metric(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, l) = series.split_once('{').unwrap_or((series, ""));
            n == name && l.contains(labels)
        })
        .map(|(_, v)| v.parse::<f64>().unwrap_or(0.0))
        .sum()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn read_cases(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every (case, model, adapter, variant) exactly once, each judged.
fn assert_scored_exactly_once(cases: &[Value], expected: usize) {
    let mut seen = BTreeMap::new();
    for c in cases {
        let key = format!(
            "{} {} {} {}",
            c["case_id"], c["model"], c["adapter"], c["variant"]
        );
        *seen.entry(key).or_insert(0) += 1;
        assert!(c["error"].is_null(), "case failed: {c:#}");
        assert!(
            !c["verdicts"].as_array().unwrap().is_empty(),
            "case not judged: {c:#}"
        );
    }
    assert!(seen.values().all(|n| *n == 1), "doubled cases: {seen:?}");
    assert_eq!(seen.len(), expected, "cases: {seen:?}");
}

#[test]
fn a_cluster_of_processes_gives_the_same_results_as_an_embedded_run() {
    let dir = tmp("cluster-equal");
    let sweep = write_sweep(&dir, 2, &["query_first", "query_last"], true, 1);

    // On one machine, in one process.
    let embedded = dir.join("embedded");
    let v = ok_json(&run(&[
        "run",
        sweep.to_str().unwrap(),
        "--out",
        embedded.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["state"], "succeeded", "{v:#}");

    // On a cluster of processes: etcd, a coordinator, three workers.
    let cluster = Cluster::start(&dir, 3);
    let id = cluster.submit(&sweep);
    cluster.watch(&id);
    let distributed = dir.join("distributed");
    let r = cluster.results(&id, &distributed);
    assert_eq!(r["state"], "succeeded");

    // The workers' metrics add up to the work done: generated tokens, answer and judge
    // shards; the coordinator's count every shard settled.
    let sum = |name: &str, labels: &str| -> f64 {
        cluster
            .workers
            .keys()
            .map(|w| metric(&cluster.metrics(w), name, labels))
            .sum()
    };
    assert!(sum("flotilla_generated_tokens_total", "") > 0.0);
    assert!(sum("flotilla_decode_tokens_total", "") > 0.0);
    assert!(sum("flotilla_decode_seconds_total", "") > 0.0);
    assert!(
        sum(
            "flotilla_worker_shards_total",
            r#"kind="generate",outcome="succeeded""#
        ) >= 1.0
    );
    assert!(
        sum(
            "flotilla_worker_shards_total",
            r#"kind="judge",outcome="succeeded""#
        ) >= 1.0
    );
    assert!(
        sum("flotilla_train_steps_total", "") >= 1.0,
        "the LoRA was trained"
    );
    let coordinator = cluster.metrics("coordinator");
    let settled = metric(
        &coordinator,
        "flotilla_shard_outcomes_total",
        r#"outcome="succeeded""#,
    );
    let done: f64 = sum("flotilla_worker_shards_total", r#"outcome="succeeded""#);
    assert_eq!(
        settled, done,
        "coordinator and workers agree on the shards done"
    );

    let a = read_json(&embedded.join("results.json"));
    let b = read_json(&distributed.join("results.json"));
    for key in ["configurations", "comparisons", "case_scores"] {
        assert_eq!(
            a[key], b[key],
            "{key} differ between embedded and cluster runs"
        );
    }
    // 2 cases x 2 variants x {base, lora}, each judged once.
    assert_scored_exactly_once(&read_cases(&distributed.join("cases.jsonl")), 8);
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let p = |root: &Path| root.join("adapters/lora/smollm2").join(f);
        assert_eq!(
            std::fs::read(p(&embedded)).unwrap(),
            std::fs::read(p(&distributed)).unwrap(),
            "the trained adapter's {f} differs"
        );
    }
    // The work was shared out.
    let workers = cluster.workers_json().unwrap();
    let busy = workers
        .iter()
        .filter(|w| w["shards_completed"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(busy >= 2, "only {busy} worker(s) ran shards: {workers:#?}");

    // The LoRA's curve: the loss of each of its two steps.
    let curve = b["training"][0]["loss"].as_array().unwrap();
    assert_eq!(
        curve
            .iter()
            .map(|p| p["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2],
        "{curve:?}"
    );
    // Provenance: the sweep as submitted, its inputs' hashes, who ran what.
    let p = &b["provenance"];
    assert_eq!(p["command"], "sweep", "{p}");
    assert_eq!(
        p["sweep_yaml"].as_str().unwrap(),
        std::fs::read_to_string(&sweep).unwrap()
    );
    let files = p["files"].as_array().unwrap();
    for role in ["sweep", "cases", "model", "judge"] {
        let f = files
            .iter()
            .find(|f| f["role"] == role)
            .unwrap_or_else(|| panic!("no {role} in {p}"));
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64, "{f}");
    }
    let shards = p["shards"].as_array().unwrap();
    assert!(
        shards
            .iter()
            .all(|s| !s["worker"].as_str().unwrap().is_empty()),
        "{p}"
    );
    let ran: std::collections::BTreeSet<&str> =
        shards.iter().filter_map(|s| s["worker"].as_str()).collect();
    assert!(ran.len() >= 2, "{ran:?}");
    assert!(p["machines"].as_array().unwrap().len() >= 2, "{p}");
    assert!(
        a["provenance"]["argv"].to_string().contains("run"),
        "{}",
        a["provenance"]
    );

    // The cluster's results folder runs again on one machine, from itself.
    let again = dir.join("again");
    let v = ok_json(&run(&[
        "run",
        "--from",
        distributed.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let c = read_json(&again.join("results.json"));
    assert_eq!(a["configurations"], c["configurations"]);
}

#[test]
fn a_worker_killed_mid_shard_loses_nothing_and_doubles_nothing() {
    let dir = tmp("cluster-kill-worker");
    let sweep = write_sweep(&dir, 4, &["query_last"], false, 1);
    let mut cluster = Cluster::start(&dir, 2);
    let id = cluster.submit(&sweep);

    // Find a worker in the middle of a shard and kill it without a word.
    let victim = wait_for(
        Duration::from_secs(180),
        "a worker running a shard",
        &cluster.procs(),
        || {
            cluster
                .workers_json()?
                .iter()
                .find(|w| w["running"].as_u64().unwrap_or(0) > 0)
                .map(|w| w["worker_id"].as_str().unwrap().to_string())
        },
    );
    cluster.workers.get_mut(&victim).unwrap().kill();

    cluster.watch(&id);
    let out = dir.join("results");
    cluster.results(&id, &out);
    assert_scored_exactly_once(&read_cases(&out.join("cases.jsonl")), 4);
    let survivor = cluster
        .workers_json()
        .unwrap()
        .into_iter()
        .find(|w| w["worker_id"] != victim.as_str())
        .unwrap();
    assert!(survivor["shards_completed"].as_u64().unwrap() > 0);
}

#[test]
fn a_coordinator_killed_mid_sweep_and_restarted_loses_nothing_and_doubles_nothing() {
    let dir = tmp("cluster-kill-coordinator");
    let sweep = write_sweep(&dir, 4, &["query_last"], false, 1);
    let mut cluster = Cluster::start(&dir, 2);
    let id = cluster.submit(&sweep);

    wait_for(
        Duration::from_secs(300),
        "a first shard done",
        &cluster.procs(),
        || {
            let s = cluster.status(&id)?;
            (s["shards_done"].as_u64().unwrap_or(0) >= 1 && s["state"] == "running").then_some(())
        },
    );
    cluster.coordinator.as_mut().unwrap().kill();
    // Same port and data folder; it waits for the dead leader's key to expire.
    cluster.coordinator = Some(cluster.spawn_coordinator("coordinator-2"));

    cluster.watch(&id);
    let out = dir.join("results");
    cluster.results(&id, &out);
    assert_scored_exactly_once(&read_cases(&out.join("cases.jsonl")), 4);
}

#[test]
fn a_wrong_token_is_refused_to_workers_and_a_missing_one_to_clients() {
    let dir = tmp("cluster-tokens");
    let token = dir.join("token");
    std::fs::write(&token, "the-right-token\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let coordinator = Proc::spawn(
        "coordinator",
        &dir,
        &[
            "coordinator",
            "--listen",
            &listen,
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let listed = |token_file: Option<&Path>| {
        let mut args = vec!["workers", "--coordinator", &listen, "--output", "json"];
        if let Some(t) = token_file {
            args.extend(["--token-file", t.to_str().unwrap()]);
        }
        run(&args)
    };
    wait_for(
        Duration::from_secs(60),
        "the coordinator",
        &[&coordinator],
        || listed(Some(&token)).status.success().then_some(()),
    );

    // A client without a token is refused, and told why.
    let out = listed(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the token"), "{err}");

    // A worker with the wrong token is refused and stops, saying why.
    let mut worker = Proc::spawn(
        "worker",
        &dir,
        &[
            "worker",
            "--coordinator",
            &listen,
            "--token-file",
            wrong.to_str().unwrap(),
            "--id",
            "intruder",
            "--work-dir",
            dir.join("work").to_str().unwrap(),
        ],
    );
    let status = worker
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the worker kept running\n{}", worker.log()));
    assert!(!status.success());
    assert!(
        worker.log().contains("refused the token"),
        "{}",
        worker.log()
    );
    let v = ok_json(&listed(Some(&token)));
    assert_eq!(v, serde_json::json!([]), "the intruder is not a worker");

    // `worker doctor` on this PC: the right token reaches the coordinator (no worker is
    // connected, so the clock cannot be compared); the wrong one fails that check, exit 1.
    let doctor = |t: &Path| {
        run(&[
            "worker",
            "doctor",
            "--coordinator",
            &listen,
            "--token-file",
            t.to_str().unwrap(),
            "--output",
            "json",
        ])
    };
    let good = doctor(&token);
    let v: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    let check = |v: &serde_json::Value, name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check in {v:#}"))
    };
    assert_eq!(check(&v, "coordinator")["ok"], true, "{v:#}");
    assert_eq!(check(&v, "device")["ok"], true);
    assert_eq!(
        check(&v, "models")["ok"],
        true,
        "the demo models are cached: {v:#}"
    );
    assert!(check(&v, "models")["detail"]
        .as_str()
        .unwrap()
        .contains("smollm2"));
    assert!(good.status.success(), "{v:#}");
    let bad = doctor(&wrong);
    assert!(!bad.status.success());
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    let c = check(&v, "coordinator");
    assert_eq!(c["ok"], false);
    assert!(c["detail"].as_str().unwrap().contains("token"), "{c}");
    // Nowhere to go: said so, exit 1.
    let none = run(&["worker", "doctor"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stdout).contains("--etcd"));
}

#[test]
fn cluster_commands_refuse_bad_input_with_one_clear_line() {
    let dir = tmp("cluster-bad-input");
    let stderr = |out: &Output| {
        assert!(!out.status.success(), "expected a failure");
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // A sweep file that does not exist, and one with a mistake: named, with its line.
    let missing = dir.join("missing.yaml");
    let err = stderr(&run(&["run", missing.to_str().unwrap()]));
    assert!(err.contains("missing.yaml"), "{err}");
    let sweep = write_sweep(&dir, 1, &["query_last"], false, 1);
    let text = std::fs::read_to_string(&sweep)
        .unwrap()
        .replace("seed: 11", "seed: 11\nsede: 3");
    std::fs::write(&sweep, text).unwrap();
    let err = stderr(&run(&["run", sweep.to_str().unwrap()]));
    assert!(
        err.contains("sweep.yaml:3") && err.contains("sede"),
        "{err}"
    );

    // Where is the cluster?
    let err = stderr(&run(&["worker", "--token-file", "x"]));
    assert!(err.contains("--etcd"), "{err}");
    let err = stderr(&run(&["sweep", "status"]));
    assert!(err.contains("--coordinator"), "{err}");
    let err = stderr(&run(&[
        "workers",
        "--coordinator",
        "127.0.0.1:1",
        "--token-file",
        "/nonexistent/token",
    ]));
    assert!(err.contains("/nonexistent/token"), "{err}");
    // A coordinator needs a token.
    let err = stderr(&run(&[
        "coordinator",
        "--data-dir",
        dir.join("d").to_str().unwrap(),
    ]));
    assert!(err.contains("token"), "{err}");
}
