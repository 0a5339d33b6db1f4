//! The cluster as a user runs it: a real etcd on a loopback port, a `flotilla coordinator`
//! process and `flotilla worker` processes on the real SmolLM2, sweeps submitted and followed
//! with `flotilla sweep`. The sweeps are tiny (short documents, 12-token answers, 8-token
//! judge explanations) so the whole file stays within a few minutes on two cores.
//!
//! What must hold: a cluster gives the same results as `flotilla run` with the same seed; a
//! worker killed with SIGKILL mid-shard, or a coordinator killed and restarted on its data
//! folder, loses and doubles nothing; wrong or missing tokens are refused.

mod common;

use common::{ok_json, tmp};
use flotilla_tests::etcd::{free_port, Etcd};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "e2e-shared-secret";
/// How long a sweep may take on a loaded two-core CI machine.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(600);

/// `flotilla ARGS` with no token in the environment (tests pass --token-file explicitly).
fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    c.args(["--threads", "1"])
        .args(args)
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .env_remove("FLOTILLA_ETCD")
        .env_remove("FLOTILLA_COORDINATOR");
    c
}

fn run(args: &[&str]) -> Output {
    run_within(args, SWEEP_TIMEOUT)
}

/// `flotilla ARGS`, killed if it runs longer than `limit` (a stalled sweep must fail the
/// test, not hang it).
fn run_within(args: &[&str], limit: Duration) -> Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base =
        std::env::temp_dir().join(format!("flotilla-cluster-out-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = cmd(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run flotilla");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "flotilla {args:?} ran longer than {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    output
}

/// A background `flotilla` process, killed (SIGKILL) when dropped; its output goes to a log
/// file shown when a test fails.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd(args)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn flotilla");
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// kill -9.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn logs(procs: &[&Proc]) -> String {
    procs.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n")
}

/// Polls `f` until it gives a value, or panics with `what` and the processes' logs.
fn wait_for<T>(
    within: Duration,
    what: &str,
    procs: &[&Proc],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", logs(procs));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

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
    let train: Vec<String> = [
        ("When does the garden open?", "At 9."),
        (
            "How many passengers does the ferry carry?",
            "120 passengers.",
        ),
        ("Where is the tea house?", "By the pond."),
        ("How many bicycles fit on the ferry?", "20 bicycles."),
    ]
    .iter()
    .map(|(q, a)| {
        serde_json::json!({"messages": [{"role": "user", "content": q},
            {"role": "assistant", "content": a}]})
        .to_string()
    })
    .collect();
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n").unwrap();
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

/// A cluster: etcd, one coordinator, workers; all killed when dropped.
struct Cluster {
    dir: PathBuf,
    etcd: Etcd,
    token_file: PathBuf,
    port: u16,
    coordinator: Option<Proc>,
    workers: BTreeMap<String, Proc>,
}

impl Cluster {
    fn start(dir: &Path, workers: usize) -> Cluster {
        let etcd = Etcd::start();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            coordinator: None,
            etcd,
            token_file,
            port,
            workers: BTreeMap::new(),
        };
        c.coordinator = Some(c.spawn_coordinator("coordinator-1"));
        for i in 1..=workers {
            let id = format!("w{i}");
            let p = c.spawn_worker(&id);
            c.workers.insert(id, p);
        }
        c.wait_ready();
        c
    }

    fn spawn_coordinator(&self, name: &str) -> Proc {
        let listen = format!("127.0.0.1:{}", self.port);
        Proc::spawn(
            name,
            &self.dir,
            &[
                "coordinator",
                "--etcd",
                &self.etcd.endpoint(),
                "--listen",
                &listen,
                "--advertise",
                &listen,
                "--data-dir",
                self.dir.join("coordinator-data").to_str().unwrap(),
                "--token-file",
                self.token_file.to_str().unwrap(),
                "--lease-ttl-s",
                "2",
            ],
        )
    }

    fn spawn_worker(&self, id: &str) -> Proc {
        Proc::spawn(
            id,
            &self.dir,
            &[
                "worker",
                "--etcd",
                &self.etcd.endpoint(),
                "--token-file",
                self.token_file.to_str().unwrap(),
                "--id",
                id,
                "--work-dir",
                self.dir.join(format!("work-{id}")).to_str().unwrap(),
                "--lease-ttl-s",
                "2",
            ],
        )
    }

    fn procs(&self) -> Vec<&Proc> {
        self.coordinator
            .iter()
            .chain(self.workers.values())
            .collect()
    }

    /// `flotilla ARGS --etcd E --token-file T --output json` (the CLI finds the coordinator
    /// through the leader key).
    fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let endpoint = self.etcd.endpoint();
        all.extend([
            "--etcd",
            &endpoint,
            "--token-file",
            self.token_file.to_str().unwrap(),
            "--output",
            "json",
        ]);
        run(&all)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "flotilla {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                logs(&self.procs())
            );
        }
        ok_json(&out)
    }

    /// `flotilla workers`, or None while the coordinator cannot be reached.
    fn workers_json(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["workers"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until every worker is connected to the coordinator.
    fn wait_ready(&self) {
        let n = self.workers.len();
        wait_for(
            Duration::from_secs(120),
            "the workers to connect",
            &self.procs(),
            || {
                let ws = self.workers_json()?;
                (ws.iter().filter(|w| w["connected"] == true).count() >= n).then_some(())
            },
        );
    }

    fn submit(&self, sweep: &Path) -> String {
        let v = self.cli_json(&["sweep", "submit", sweep.to_str().unwrap()]);
        v["sweep_id"].as_str().unwrap().to_string()
    }

    fn status(&self, sweep_id: &str) -> Option<Value> {
        let out = self.cli(&["sweep", "status", sweep_id]);
        out.status.success().then(|| ok_json(&out))
    }

    /// `flotilla sweep watch` until the sweep ends; it must succeed.
    fn watch(&self, sweep_id: &str) -> Value {
        let v = self.cli_json(&["sweep", "watch", sweep_id]);
        assert_eq!(v["state"], "succeeded", "{v:#}\n{}", logs(&self.procs()));
        v
    }

    fn results(&self, sweep_id: &str, out: &Path) -> Value {
        self.cli_json(&["sweep", "results", sweep_id, "--out", out.to_str().unwrap()])
    }
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
