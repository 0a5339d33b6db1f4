//! Distributed LoRA training on a cluster of real processes: a real etcd on a loopback port,
//! a `flotilla coordinator` process, `flotilla worker` processes on the real SmolLM2, the sweep
//! submitted and followed with `flotilla sweep`.
//!
//! What must hold: a worker that joins mid-run contributes to later rounds; a worker killed
//! with SIGKILL mid-round is replaced (its shard runs again on the other worker) and the run
//! completes; a coordinator killed with SIGKILL mid-run resumes at the last applied round,
//! nothing applied twice; `sweep results` reports the run and downloads the final adapter.

mod common;

use common::procs::*;
use common::tmp;
use rusqlite::Connection;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Rounds of the run: 8 inner steps at H = 2.
const ROUNDS: usize = 4;

/// A sweep with one distributed (diloco, two workers) adapter, evaluated on one case.
fn write_sweep(dir: &Path) -> PathBuf {
    flotilla_tests::write_chat_jsonl(
        &dir.join("train.jsonl"),
        &[
            ("When does the garden open?", "At nine."),
            ("How many passengers does the ferry carry?", "120."),
            ("Where is the tea house?", "By the pond."),
            ("How many bicycles fit on the ferry?", "Twenty."),
            ("What colour is the lighthouse?", "Red and white."),
            ("How long is the crossing?", "Forty minutes."),
        ],
    );
    std::fs::write(
        dir.join("pier.txt"),
        "The cafe at the pier opens at eight.\n",
    )
    .unwrap();
    let case = serde_json::json!({"id": "pier", "task": "document", "language": "en",
        "query": "When does the cafe open?", "reference_answer": "At eight.",
        "documents": ["pier.txt"]});
    std::fs::write(dir.join("cases.jsonl"), case.to_string() + "\n").unwrap();
    let yaml = format!(
        "name: dist
seed: 3
models: [smollm2]
variants: [query_first]
adapters:
  - name: lora
    train:
      data: train.jsonl
      steps: {}
      batch_size: 1
      grad_accum: 2
      max_seq_len: 48
      holdout: 0.34
      eval_every: 0
      checkpoint_every: 0
      keep_checkpoints: 2
      lora:
        rank: 4
        alpha: 8
        target_modules: [q_proj, v_proj]
      distributed:
        mode: diloco
        workers: 2
        inner_steps: 2
        compression: fp16
datasets:
  - name: tiny
    cases: cases.jsonl
judge:
  judges: [smollm2]
  explanation_tokens: 4
generation:
  max_tokens: 6
",
        ROUNDS * 2
    );
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The coordinator's database, read beside the running coordinator.
fn db(c: &Cluster) -> Connection {
    Connection::open(c.dir.join("coordinator-data/coordinator.db")).unwrap()
}

/// `(round, workers, state_t, final)` of every applied round.
fn rounds(c: &Cluster) -> Vec<(usize, Vec<String>, usize, bool)> {
    let conn = db(c);
    let mut stmt = conn
        .prepare("SELECT round, workers, state_t, final FROM train_rounds ORDER BY round")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as usize,
            serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or_default(),
            r.get::<_, i64>(2)? as usize,
            r.get::<_, bool>(3)?,
        ))
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

/// Rounds applied so far, as `sweep status` shows them.
fn applied(c: &Cluster, sweep: &str) -> Option<u64> {
    let st = c.status(sweep)?;
    st["jobs"]
        .as_array()?
        .iter()
        .find(|j| j["kind"] == "train_round")?["training"]["round"]
        .as_u64()
}

/// The number of shards `worker` is running now.
fn running_on(c: &Cluster, worker: &str) -> usize {
    c.workers_json()
        .unwrap_or_default()
        .iter()
        .find(|w| w["worker_id"] == worker)
        .and_then(|w| w["running"].as_u64())
        .unwrap_or(0) as usize
}

/// Checks what every run must end with, and returns the results JSON.
fn check_finished(c: &Cluster, sweep: &str, out: &Path) -> Value {
    c.watch(sweep);
    let rows = rounds(c);
    assert_eq!(
        rows.len(),
        ROUNDS + 1,
        "{ROUNDS} rounds and the evaluation: {rows:?}"
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.0, i, "rounds applied in order, none twice: {rows:?}");
        if !r.3 {
            assert_eq!(r.2, i + 1, "one outer step per applied round: {rows:?}");
        }
    }
    let results = c.results(sweep, out);
    let t = &results["training"][0];
    assert_eq!(t["mode"], "diloco", "{results:#}");
    assert_eq!(t["rounds"], ROUNDS as u64, "{t:#}");
    assert_eq!(t["steps"], (ROUNDS * 2) as u64, "{t:#}");
    assert!(
        t["heldout_loss"].as_f64().is_some_and(f64::is_finite),
        "{t:#}"
    );
    assert_eq!(
        t["checkpoints"].as_array().map(Vec::len),
        Some(2),
        "keep_checkpoints: 2: {t:#}"
    );
    // Each round's curve point carries the loss of each worker that trained in it.
    let workers: Vec<&str> = t["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in t["loss"].as_array().unwrap() {
        let by = p["workers"]
            .as_object()
            .unwrap_or_else(|| panic!("no per-worker loss: {p}"));
        assert!(!by.is_empty(), "{p}");
        for (w, l) in by {
            assert!(
                workers.contains(&w.as_str()),
                "{w} is not among {workers:?}"
            );
            assert!(l.as_f64().is_some_and(|l| l.is_finite() && l > 0.0), "{p}");
        }
    }
    let adapter = out.join("adapters/lora/smollm2/adapter_model.safetensors");
    assert!(
        adapter.is_file(),
        "the final adapter is downloaded: {results:#}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Training"), "{report}");
    results
}

#[test]
fn a_late_worker_contributes_and_one_killed_mid_round_is_replaced() {
    let dir = tmp("train-late-kill");
    let sweep_file = write_sweep(&dir);
    let mut c = Cluster::start(&dir, 1);
    let sweep = c.submit(&sweep_file);
    wait_for(SWEEP_TIMEOUT, "round 0 to be applied", &c.procs(), || {
        applied(&c, &sweep).filter(|r| *r >= 1)
    });
    // A worker that joins mid-run takes part in a later round.
    let w2 = c.spawn_worker("w2");
    c.workers.insert("w2".into(), w2);
    wait_for(
        SWEEP_TIMEOUT,
        "w2 to contribute to a round",
        &c.procs(),
        || {
            rounds(&c)
                .iter()
                .any(|r| r.1.contains(&"w2".to_string()))
                .then_some(())
        },
    );
    assert!(
        !rounds(&c)[0].1.contains(&"w2".to_string()),
        "w2 joined after round 0"
    );
    // Then it is killed in the middle of a shard of a later round.
    wait_for(SWEEP_TIMEOUT, "w2 to run a shard", &c.procs(), || {
        (running_on(&c, "w2") > 0).then_some(())
    });
    let killed_at = rounds(&c).len();
    c.workers.get_mut("w2").unwrap().kill();
    check_finished(&c, &sweep, &dir.join("out"));
    // Its shard ran again, on w1.
    let conn = db(&c);
    let rerun: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT a.shard_id, a.outcome, b.worker_id FROM attempts a
             JOIN attempts b ON b.shard_id = a.shard_id AND b.attempt > a.attempt
             WHERE a.worker_id = 'w2' AND a.outcome <> 'succeeded' AND b.outcome = 'succeeded'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        rerun.iter().any(|r| r.2 == "w1"),
        "the killed worker's shard (round {killed_at}) ran again on w1: {rerun:?}\n{}",
        logs(&c.procs())
    );
}

#[test]
fn a_coordinator_killed_mid_run_resumes_at_the_last_applied_round() {
    let dir = tmp("train-coordinator-kill");
    let sweep_file = write_sweep(&dir);
    let mut c = Cluster::start(&dir, 2);
    let sweep = c.submit(&sweep_file);
    wait_for(SWEEP_TIMEOUT, "round 1 to be applied", &c.procs(), || {
        applied(&c, &sweep).filter(|r| *r >= 2)
    });
    c.coordinator.as_mut().unwrap().kill();
    let before = rounds(&c).len();
    assert!(before >= 2 && before <= ROUNDS + 1, "{before}");
    c.coordinator = Some(c.spawn_coordinator("coordinator-2"));
    check_finished(&c, &sweep, &dir.join("out"));
    let after = applied(&c, &sweep).unwrap_or_default();
    assert_eq!(after, ROUNDS as u64, "the watch shows every round applied");
}

#[test]
fn flotilla_train_submit_trains_on_the_cluster_and_downloads_the_adapter() {
    let dir = tmp("train-submit");
    write_sweep(&dir);
    std::fs::write(
        dir.join("train.yaml"),
        "model: smollm2\ndata: train.jsonl\nsteps: 3\nbatch_size: 1\ngrad_accum: 2\n\
         max_seq_len: 48\nholdout: 0.34\neval_every: 0\ncheckpoint_every: 0\nseed: 4\n\
         lora: {rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n\
         distributed: {mode: sync, workers: 2}\nout: run\n",
    )
    .unwrap();
    let c = Cluster::start(&dir, 2);
    let config = dir.join("train.yaml");
    let v = c.cli_json(&["train", "--config", config.to_str().unwrap(), "--submit"]);
    assert_eq!(v["state"], "succeeded", "{v:#}");
    let t = &v["training"];
    assert_eq!(
        (t["mode"].as_str(), t["steps"].as_u64()),
        (Some("sync"), Some(3)),
        "{v:#}"
    );
    assert!(t["loss"].as_array().is_some_and(|l| l.len() == 3), "{t:#}");
    // Every step's point names the workers that computed its shares, with their own loss.
    assert!(
        t["loss"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["workers"].as_object().is_some_and(
                |w| !w.is_empty() && w.values().all(|l| l.as_f64().is_some_and(f64::is_finite))
            )),
        "{t:#}"
    );
    // `out: run` is relative to the config, as for a local run.
    let adapter = dir.join("run/adapter");
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["r"].as_u64()),
        (Some("LORA"), Some(4))
    );
    assert!(adapter.join("adapter_model.safetensors").is_file());
    // Without a coordinator to submit to, one clear line.
    let out = run(&["train", "--config", config.to_str().unwrap(), "--submit"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--coordinator") && !err.contains("panicked"),
        "{err}"
    );
}

/// The short version of `scripts/bench/train-dist.sh` (QUICK=1), so the benchmark cannot rot:
/// one worker, sync and DiLoCo through `flotilla run --workers 2` on the same token budget.
#[test]
fn the_train_dist_benchmark_runs_and_sync_matches_one_worker() {
    let dir = tmp("bench-train-dist");
    let report = dir.join("train-dist.json");
    common::run_bench_script(
        "train-dist.sh",
        &[
            ("QUICK", "1".as_ref()),
            ("THREADS", "1".as_ref()),
            ("WORK", dir.as_os_str()),
            ("OUT", report.as_os_str()),
        ],
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let by = |name: &str| runs.iter().find(|r| r["run"] == name).unwrap().clone();
    let (single, sync, h1, h2) = (by("single"), by("sync"), by("diloco-h1"), by("diloco-h2"));
    let loss = |r: &Value| r["heldout_loss"].as_f64().unwrap();
    assert!(
        (loss(&sync) / loss(&single) - 1.0).abs() < 1e-3,
        "sync on 2 workers ends where one worker does: {sync} vs {single}"
    );
    assert_eq!(single["tokens"], sync["tokens"], "the same token budget");
    assert_eq!(single["tokens"], h1["tokens"], "the same token budget");
    let bytes =
        |r: &Value| r["bytes_sent"].as_u64().unwrap() + r["bytes_received"].as_u64().unwrap();
    assert!(
        bytes(&sync) > bytes(&h1) && bytes(&h1) > bytes(&h2),
        "fewer rounds, fewer bytes: {} {} {}",
        bytes(&sync),
        bytes(&h1),
        bytes(&h2)
    );
    assert_eq!(
        (h1["rounds"].as_u64(), h2["rounds"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(v["lan_1gbps_3b"].as_array().is_some_and(|e| !e.is_empty()));
}
