//! `flotilla worker --when-idle` under simulated load: CPU burners stand for the PC's user.
//! The worker pauses (and says so in `flotilla workers`) while other programs load the CPU,
//! takes no shard while paused, hands a running shard back when the load comes during it, and
//! finishes the sweep once the PC is free — every case scored once.
//!
//! Its own test binary, so no other test's processes load the CPU meanwhile.

mod common;

use common::procs::*;
use common::tmp;
use std::process::{Child, Command};
use std::time::Duration;

/// `n` processes spinning on the CPU until dropped.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> Self {
        Burners(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a CPU burner")
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sweep(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        "The ferry Aurora crosses the bay six times a day. It carries 120 passengers. ".repeat(12);
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/ferry.txt"), text).unwrap();
    let cases: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "task": "document", "language": "en",
                "query": format!("Question {i}: how many passengers does the Aurora carry?"),
                "reference_answer": "120", "documents": ["docs/ferry.txt"]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("cases.jsonl"), cases.join("\n") + "\n").unwrap();
    let path = dir.join("sweep.yaml");
    std::fs::write(
        &path,
        "name: idle\nmodels: [smollm2]\nvariants: [query_last]\nadapters: [base]\n\
         datasets:\n  - name: d\n    cases: cases.jsonl\n\
         judge:\n  judges: [smollm2]\n  explanation_tokens: 8\n\
         generation:\n  max_tokens: 128\nshard_size: 6\n",
    )
    .unwrap();
    path
}

fn worker(c: &Cluster) -> serde_json::Value {
    c.workers_json()
        .unwrap_or_default()
        .into_iter()
        .find(|w| w["worker_id"] == "idle")
        .unwrap_or_default()
}

#[test]
fn a_when_idle_worker_pauses_for_its_user_and_hands_work_back() {
    let dir = tmp("when-idle");
    let mut c = Cluster::start(&dir, 0);
    let w = c.spawn_worker_with(
        "idle",
        &[
            "--when-idle",
            "--idle-minutes",
            "0",
            "--idle-cpu-percent",
            "50",
            "--yield-within-s",
            "1",
            "--threads",
            "1",
        ],
    );
    c.workers.insert("idle".into(), w);
    c.wait_ready();

    // The user is busy: the worker pauses and says why.
    let burners = Burners::start(4);
    wait_for(
        Duration::from_secs(60),
        "the worker to pause",
        &c.procs(),
        || {
            let v = worker(&c);
            v["paused"]
                .as_str()
                .filter(|p| p.contains("CPU"))
                .map(|_| ())
        },
    );
    let text = String::from_utf8_lossy(&c.cli(&["workers"]).stdout).to_string();
    assert!(text.contains("paused"), "{text}");
    // Work submitted now waits: no shard is assigned while paused.
    let id = c.submit(&sweep(&dir));
    std::thread::sleep(Duration::from_secs(4));
    let st = c.status(&id).unwrap();
    assert_eq!(st["shards_done"], 0, "{st}");
    assert_eq!(worker(&c)["running"], 0);

    // The user leaves: the worker resumes and takes the generate shard.
    drop(burners);
    wait_for(
        Duration::from_secs(60),
        "a running shard",
        &c.procs(),
        || (worker(&c)["running"] == 1).then_some(()),
    );
    // The user is back mid-shard: after a second the shard is handed back, requeued.
    let burners = Burners::start(4);
    wait_for(
        Duration::from_secs(60),
        "the shard handed back",
        &c.procs(),
        || {
            let m = c.metrics("coordinator");
            m.lines()
                .any(|l| l.starts_with("flotilla_requeues_total{kind=\"infrastructure\"}"))
                .then_some(())
        },
    );
    assert_eq!(worker(&c)["running"], 0);
    drop(burners);

    // Free again: everything finishes, each case scored once.
    let v = c.watch(&id);
    assert_eq!(v["state"], "succeeded");
    let out = dir.join("results");
    let r = c.results(&id, &out);
    assert_eq!(r["state"], "succeeded");
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    assert_eq!(cases.lines().count(), 6);
    assert!(worker(&c)["paused"].as_str().unwrap_or("x").is_empty());
}
