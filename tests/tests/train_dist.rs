//! LoRA training across workers on the real SmolLM2, a real coordinator on a loopback port and
//! three in-process workers: sync data-parallel training split 1, 2 and 3 ways gives the
//! one-worker result (relative Frobenius difference <= 1e-3 on every LoRA tensor after 5
//! steps, against `flotilla train` in process), and a DiLoCo run completes with its rounds,
//! losses and bytes recorded.

use flotilla_client::registry::{MemoryRegistry, Registry};
use flotilla_contract::state::ShardState;
use flotilla_contract::tensors::TensorSet;
use flotilla_contract::ShardSpec;
use flotilla_coordinator::client::{Client, SubmitSweep};
use flotilla_coordinator::training::{self, RoundRow};
use flotilla_coordinator::{serve, CoordinatorConfig, RunningCoordinator};
use flotilla_engine::loader::LoadOptions;
use flotilla_proto::v1 as pb;
use flotilla_tests::{smollm2_path, TempDir};
use flotilla_worker::{run_worker, AgentConfig, CoordinatorAddress, ModelCache};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const STEPS: usize = 5;

/// The `train:` block shared by every run; `distributed` is appended.
fn train_block(model_line: &str) -> String {
    format!(
        "{model_line}data: train.jsonl
steps: {STEPS}
batch_size: 1
grad_accum: 6
max_seq_len: 64
holdout: 0.25
eval_every: 0
checkpoint_every: 0
seed: 5
lora:
  rank: 4
  alpha: 8
  dropout: 0.1
  target_modules: [q_proj, v_proj]
optimizer:
  lr: 0.002
  warmup_steps: 1
  max_grad_norm: 0.5
"
    )
}

fn write_data(dir: &Path) {
    let pairs = [
        ("When does the garden open?", "At nine in the morning."),
        (
            "How many passengers does the ferry carry?",
            "120 passengers.",
        ),
        ("Where is the tea house?", "By the pond, past the bridge."),
        ("How many bicycles fit on the ferry?", "Twenty bicycles."),
        ("What colour is the lighthouse?", "Red and white."),
        ("Who built the old mill?", "The Verhoeven family, in 1820."),
        ("Is there a cafe at the pier?", "Yes, it opens at eight."),
        ("How long is the crossing?", "About forty minutes."),
    ];
    flotilla_tests::write_chat_jsonl(&dir.join("train.jsonl"), &pairs);
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("docs/pier.txt"),
        "The cafe at the pier opens at eight.",
    )
    .unwrap();
    let case = serde_json::json!({"id": "pier", "task": "document", "language": "en",
        "query": "When does the cafe open?", "reference_answer": "At eight.",
        "documents": ["docs/pier.txt"]});
    std::fs::write(dir.join("cases.jsonl"), case.to_string() + "\n").unwrap();
}

/// A sweep training one distributed adapter with `distributed` (YAML lines, indented).
fn write_sweep(dir: &Path, name: &str, distributed: &str) -> std::path::PathBuf {
    let block: String = train_block("")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let yaml = format!(
        "name: {name}
seed: 5
models: [smollm2]
variants: [query_first]
adapters:
  - name: lora
    train:
{block}      distributed:
{distributed}datasets:
  - name: tiny
    cases: cases.jsonl
judge:
  judges: [smollm2]
generation:
  max_tokens: 8
"
    );
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

struct Cluster {
    _dir: TempDir,
    coordinator: RunningCoordinator,
    stop: watch::Sender<bool>,
    client: Client,
}

async fn cluster(workers: usize) -> Cluster {
    let dir = flotilla_tests::temp_dir("train-dist");
    let registry = Arc::new(MemoryRegistry::new());
    let mut config =
        CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path(), registry.clone());
    config.heartbeat = Duration::from_millis(500);
    let coordinator = serve(config).await.expect("the coordinator starts");
    let address = format!("http://{}", coordinator.local_addr());
    let (stop, stop_rx) = watch::channel(false);
    for i in 0..workers {
        let id = format!("w{}", i + 1);
        let config = AgentConfig {
            worker_id: id.clone(),
            coordinator: CoordinatorAddress::Direct(address.clone()),
            registry: Some(registry.clone() as Arc<dyn Registry>),
            token: String::new(),
            tls: Default::default(),
            slots: 1,
            device_name: "cpu".into(),
            device: candle_core::Device::Cpu,
            models: Arc::new(ModelCache::new(LoadOptions::default(), 1)),
            cache_budget_bytes: None,
            cache_dir: dir.path().join("cache").join(&id),
            work_dir: dir.path().join("work").join(&id),
            max_backoff: Duration::from_millis(500),
            idle: None,
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(run_worker(config, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let client = Client::connect(&address, None).await.expect("client");
    Cluster {
        _dir: dir,
        coordinator,
        stop,
        client,
    }
}

/// Submit `sweep`, wait for its distributed train job to end, and return its rounds.
async fn train(c: &Cluster, sweep: &Path) -> Vec<RoundRow> {
    train_job(c, sweep).await.1
}

/// [`train`], also giving the job's id.
async fn train_job(c: &Cluster, sweep: &Path) -> (String, Vec<RoundRow>) {
    let status = c
        .client
        .submit_file(sweep)
        .await
        .expect("the sweep is accepted");
    let core = c.coordinator.core();
    let deadline = Instant::now() + Duration::from_secs(600);
    let job = loop {
        let st = core.status(&status.sweep_id).expect("the sweep exists");
        let j = st
            .jobs
            .iter()
            .find(|j| j.kind == "train_round")
            .expect("a distributed train job")
            .clone();
        if j.state == pb::JobState::Succeeded as i32 {
            break j.job_id;
        }
        assert!(
            j.state != pb::JobState::Failed as i32,
            "training failed: {}",
            j.error
        );
        assert!(Instant::now() < deadline, "training did not end: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    core.cancel(&status.sweep_id).await.unwrap();
    let id = job.clone();
    let rows = core
        .store
        .call(move |conn| training::rounds(conn, &id))
        .await
        .unwrap();
    (job, rows)
}

/// The job's shards of `round`: (state code, micro-batches), in order.
async fn round_shards_of(c: &Cluster, job: &str, round: usize) -> Vec<(i64, Vec<u64>)> {
    let prefix = training::round_prefix(job, round);
    c.coordinator
        .core()
        .store
        .call(move |conn| {
            let mut stmt =
                conn.prepare("SELECT state, spec_json FROM shards WHERE id LIKE ?1 ORDER BY seq")?;
            let rows = stmt
                .query_map([format!("{prefix}%")], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(
                    |(state, spec)| match ShardSpec::from_json(spec.as_bytes()) {
                        Ok(ShardSpec::TrainRound(s)) => (state, s.micro_batches),
                        other => panic!("a round shard's spec: {other:?}"),
                    },
                )
                .collect())
        })
        .await
        .unwrap()
}

fn adapter_of(c: &Cluster, row: &RoundRow) -> TensorSet {
    let bytes = c
        .coordinator
        .core()
        .artifacts
        .read(&row.adapter.sha256)
        .unwrap();
    TensorSet::decode(&bytes, "final adapter").unwrap()
}

/// max over tensors of ||a - b||_F / ||b||_F.
fn max_rel_frobenius(a: &TensorSet, b: &TensorSet) -> f64 {
    b.check_same_layout(a, "compared adapter").unwrap();
    a.tensors
        .iter()
        .zip(&b.tensors)
        .map(|(x, y)| {
            let d: f64 = x
                .data
                .iter()
                .zip(&y.data)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum();
            let n: f64 = y.data.iter().map(|q| (*q as f64).powi(2)).sum();
            (d / n.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_training_on_one_two_and_three_workers_gives_the_one_worker_adapter() {
    let dir = flotilla_tests::temp_dir("train-dist-data");
    write_data(dir.path());
    // The reference: one process, `flotilla train`'s loop.
    let cfg_path = dir.path().join("train.yaml");
    std::fs::write(&cfg_path, train_block("")).unwrap();
    let cfg = flotilla_train::TrainConfig::from_file(&cfg_path).unwrap();
    let model = smollm2_path().display().to_string();
    let out = dir.path().join("local");
    let summary = tokio::task::spawn_blocking(move || {
        flotilla_train::train(
            &cfg,
            &model,
            &out,
            false,
            &candle_core::Device::Cpu,
            &mut |_| true,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let local = TensorSet::decode(
        &std::fs::read(summary.adapter.join("adapter_model.safetensors")).unwrap(),
        "local adapter",
    )
    .unwrap();

    let c = cluster(3).await;
    let mut contributors = Vec::new();
    for n in [1, 2, 3] {
        let sweep = write_sweep(
            dir.path(),
            &format!("sync{n}"),
            &format!("        mode: sync\n        workers: {n}\n"),
        );
        let rows = train(&c, &sweep).await;
        assert_eq!(rows.len(), STEPS + 1, "5 steps and the final evaluation");
        let last = rows.last().unwrap();
        assert!(last.last && last.heldout_loss.is_some(), "{last:?}");
        for r in &rows[..STEPS] {
            assert!(
                r.loss.is_some_and(|l| l.is_finite()) && r.target_tokens > 0,
                "{r:?}"
            );
            assert!(r.bytes_sent > 0, "{r:?}");
        }
        assert!(
            rows[1].bytes_received > 0,
            "the adapter travels to the workers"
        );
        let diff = max_rel_frobenius(&adapter_of(&c, last), &local);
        eprintln!("sync on {n} worker(s): max relative Frobenius difference {diff:e}");
        assert!(
            diff <= 1e-3,
            "{n} worker(s): relative Frobenius difference {diff:e} from one process"
        );
        let all: std::collections::BTreeSet<String> =
            rows.iter().flat_map(|r| r.workers.clone()).collect();
        contributors.push(all.len());
    }
    assert!(
        contributors[2] >= 2,
        "a 3-way split was computed by {} worker(s)",
        contributors[2]
    );
    c.stop.send(true).unwrap();
    c.coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diloco_rounds_average_two_workers_deltas_and_checkpoint_each_round() {
    let dir = flotilla_tests::temp_dir("train-diloco-data");
    write_data(dir.path());
    let c = cluster(2).await;
    let sweep = write_sweep(
        dir.path(),
        "diloco",
        "        mode: diloco\n        workers: 2\n        inner_steps: 2\n        \
         compression: int8\n",
    );
    let (job, rows) = train_job(&c, &sweep).await;
    // 5 inner steps at H = 2: rounds of 2, 2 and 1 steps, then the evaluation.
    assert_eq!(rows.len(), 4, "{rows:?}");
    // What results.json's `training` and `sweep watch` show.
    let id = job.clone();
    let (trained, progress) = c
        .coordinator
        .core()
        .store
        .call(move |conn| {
            let sweep: String =
                conn.query_row("SELECT sweep_id FROM jobs WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })?;
            Ok((
                training::training_runs(conn, &sweep)?,
                training::progress(conn, &id)?,
            ))
        })
        .await
        .unwrap();
    let run = &trained.runs[0];
    assert_eq!(
        (run.mode.as_str(), run.steps, run.rounds),
        ("diloco", STEPS, 3),
        "{run:?}"
    );
    assert_eq!(
        run.loss.iter().map(|l| l.step).collect::<Vec<_>>(),
        [2, 4, 5]
    );
    assert_eq!(run.heldout_loss, rows[3].heldout_loss);
    assert!(
        run.heldout_loss_before.is_some_and(|b| b.is_finite()),
        "the initial adapter's held-out loss: {run:?}"
    );
    assert_eq!(
        run.bytes_sent,
        rows.iter().map(|r| r.bytes_sent).sum::<u64>()
    );
    assert!(!run.workers.is_empty() && run.wall_s > 0.0, "{run:?}");
    assert_eq!(
        run.checkpoints.iter().map(|k| k.round).collect::<Vec<_>>(),
        [0, 1, 2],
        "the last keep_checkpoints (3) rounds"
    );
    assert_eq!(
        trained
            .adapters
            .iter()
            .map(|a| a.2.path.as_str())
            .collect::<Vec<_>>(),
        ["adapter_config.json", "adapter_model.safetensors"],
        "the final adapter goes into the results folder"
    );
    // The applied rounds' deltas were removed from the artifact store.
    let id = job.clone();
    let contributions: Vec<String> = c
        .coordinator
        .core()
        .store
        .call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT r.artifacts_json FROM results r JOIN shards s ON s.id = r.shard_id
                 WHERE s.job_id = ?1",
            )?;
            let rows = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap()
        .iter()
        .flat_map(|f| serde_json::from_str::<Vec<serde_json::Value>>(f).unwrap())
        .filter(|e| e["path"] == "contribution.safetensors")
        .map(|e| e["sha256"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        contributions.len(),
        6,
        "two workers' deltas in each of 3 rounds"
    );
    for sha in &contributions {
        assert!(
            c.coordinator.core().artifacts.read(sha).is_err(),
            "contribution {sha} is still stored"
        );
    }
    let p = progress.expect("progress after the rounds");
    assert_eq!((p.round, p.rounds, p.step, p.steps), (3, 3, 5, 5));
    for r in &rows[..3] {
        assert!(r.loss.is_some_and(|l| l.is_finite()), "{r:?}");
        assert_eq!(r.state_t, r.round + 1, "one outer step per round");
    }
    let first = adapter_of(&c, &rows[0]);
    let last = adapter_of(&c, &rows[3]);
    assert!(
        max_rel_frobenius(&last, &first) > 0.0,
        "training moved the adapter"
    );
    // int8 contributions: about a quarter of f32's bytes for the same tensors.
    let f32_bytes = (first.len() * 4) as u64;
    assert!(
        rows[1].bytes_sent < f32_bytes,
        "{} bytes sent for {} f32 bytes per worker",
        rows[1].bytes_sent,
        f32_bytes
    );
    c.stop.send(true).unwrap();
    c.coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_past_its_timeout_closes_with_the_contributions_that_arrived() {
    let dir = flotilla_tests::temp_dir("train-timeout-data");
    write_data(dir.path());
    // Three shards a round on two workers, and a one-second timeout: each round closes as
    // soon as its first shard succeeds, dropping the others.
    let c = cluster(2).await;
    let sweep = write_sweep(
        dir.path(),
        "timeout",
        "        mode: diloco\n        workers: 3\n        inner_steps: 3\n        \
         round_timeout_s: 1\n",
    );
    let (job, rows) = train_job(&c, &sweep).await;
    assert_eq!(
        rows.len(),
        3,
        "rounds of 3 and 2 steps, then the evaluation: {rows:?}"
    );
    assert_eq!(rows[1].state_t, 2, "each round applied once: {rows:?}");
    let first = round_shards_of(&c, &job, 0).await;
    let succeeded = ShardState::Succeeded.code();
    let cancelled = ShardState::Cancelled.code();
    assert!(
        first.iter().any(|s| s.0 == succeeded) && first.iter().any(|s| s.0 == cancelled),
        "round 0 closed early: {first:?}"
    );
    let dropped: Vec<u64> = first
        .iter()
        .filter(|s| s.0 == cancelled)
        .flat_map(|s| s.1.clone())
        .collect();
    let second = round_shards_of(&c, &job, 1).await;
    assert_eq!(
        second.len(),
        4,
        "three shards and the dropped data: {second:?}"
    );
    assert_eq!(
        second[3].1, dropped,
        "round 0's dropped micro-batches run in round 1"
    );
    let contributed = first.iter().filter(|s| s.0 == succeeded).count();
    assert!(contributed < 3, "{first:?}");
    c.stop.send(true).unwrap();
    c.coordinator.shutdown().await;
}
