//! Models from the coordinator, as an operator uses them: `flotilla model push` uploads
//! SmolLM2's GGUF to a coordinator process; a worker process whose model cache is empty runs
//! a sweep naming `coordinator:tiny`, fetching the file by hash, loading it once for its
//! answers and its judging, and keeping it; a sweep naming a model never pushed is refused;
//! `sweep submit --push-models` pushes a model file the sweep names on the submitting machine.

mod common;

use common::ok_json;
use common::procs::*;
use common::tmp;
use std::path::Path;

fn write_sweep(dir: &Path, model: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("docs/ferry.txt"),
        "The ferry Aurora crosses the bay six times a day. The first crossing leaves at 7.\n",
    )
    .unwrap();
    let lines = [
        (
            "trips",
            "How many times a day does the Aurora cross the bay?",
            "Six.",
        ),
        ("first", "When does the first crossing leave?", "At 7."),
    ]
    .iter()
    .map(|(id, q, a)| {
        serde_json::json!({"id": id, "task": "document", "language": "en", "query": q,
            "reference_answer": a, "documents": ["docs/ferry.txt"]})
        .to_string()
    })
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(dir.join("cases.jsonl"), lines + "\n").unwrap();
    let yaml = format!(
        "name: pushed
seed: 2
models:
  - name: tiny
    model: {model}
variants: [query_first]
adapters: [base]
datasets:
  - name: ferry
    cases: cases.jsonl
    tasks: [document]
judge:
  judges: [self]
  explanation_tokens: 4
generation:
  max_tokens: 6
shard_size: 1
"
    );
    let path = dir.join(format!("sweep-{}.yaml", model.replace([':', '/'], "-")));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn a_worker_without_the_model_fetches_a_pushed_one_and_keeps_it() {
    let dir = tmp("model-push");
    let mut cluster = Cluster::start(&dir, 0);
    let gguf = common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "scripts/fetch-models.sh fetches {}",
        gguf.display()
    );

    let v = ok_json(&cluster.cli(&["model", "push", gguf.to_str().unwrap(), "--name", "tiny"]));
    assert_eq!(v["spec"], "coordinator:tiny", "{v:#}");
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert_eq!(v["size"], size);
    let listed = ok_json(&cluster.cli(&["model", "pushed"]));
    assert_eq!(listed[0]["name"], "tiny", "{listed:#}");

    // A sweep naming a model never pushed is refused at submission, naming it.
    let unknown = write_sweep(&dir, "coordinator:nope");
    let out = cluster.cli(&["sweep", "submit", unknown.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("coordinator:nope") && err.contains("tiny"),
        "{err}"
    );

    // A worker whose model cache is empty.
    let home = dir.join("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    let w = cluster.spawn_worker_env(
        "w1",
        &["--cache-budget-gb", "5"],
        &[("FLOTILLA_HOME", home.to_str().unwrap())],
    );
    cluster.workers.insert("w1".into(), w);
    cluster.wait_ready();
    let sweep = write_sweep(&dir, "coordinator:tiny");
    let id = cluster.submit(&sweep);
    cluster.watch(&id);
    let r = cluster.results(&id, &dir.join("results"));
    let configs = r["configurations"].as_array().unwrap();
    assert_eq!(configs.len(), 1, "{r:#}");
    assert_eq!(configs[0]["model"], "tiny");
    assert_eq!(configs[0]["n"], 2, "both answers judged: {r:#}");

    // Fetched once, kept as a file of the cache and as the model's folder; loaded once for
    // two answer shards and two judge shards.
    let cache = dir.join("work-w1/cache");
    let sha = v["files"][0]["sha256"].as_str().unwrap();
    assert_eq!(
        std::fs::metadata(cache.join("artifacts").join(sha))
            .unwrap()
            .len(),
        size
    );
    let folders: Vec<_> = std::fs::read_dir(cache.join("pushed-models"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(folders[0].starts_with("tiny-"), "{folders:?}");
    let log = std::fs::read_to_string(dir.join("w1.log")).unwrap();
    assert_eq!(log.matches("loading model").count(), 1, "{log}");
    let workers = cluster.workers_json().unwrap();
    let w1 = workers.iter().find(|w| w["worker_id"] == "w1").unwrap();
    assert!(w1.to_string().contains("coordinator:tiny"), "{w1:#}");

    // A sweep naming a model file on the submitting machine, pushed with the submission.
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::hard_link(&gguf, dir.join("models/local-tiny.gguf")).unwrap();
    let sweep = write_sweep(&dir, "models/local-tiny.gguf");
    let v = ok_json(&cluster.cli(&["sweep", "submit", sweep.to_str().unwrap(), "--push-models"]));
    let id = v["sweep_id"].as_str().unwrap().to_string();
    cluster.watch(&id);
    let listed = ok_json(&cluster.cli(&["model", "pushed"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["local-tiny", "tiny"], "{listed:#}");
    let r = cluster.results(&id, &dir.join("results-2"));
    assert_eq!(r["configurations"][0]["model"], "tiny");
    assert_eq!(r["configurations"][0]["n"], 2, "{r:#}");
    assert!(std::fs::read_dir(cache.join("pushed-models"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("local-tiny-")));
}
