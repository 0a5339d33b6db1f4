//! `flotilla sweep watch` where nobody looks at a terminal (CI, a log file): plain lines, one
//! per job state change and shard summaries, and a plain word when shards wait because no
//! worker is connected. A real coordinator (without etcd) and, once told, a real worker.

mod common;

use common::procs::*;
use common::tmp;
use flotilla_tests::etcd::free_port;
use std::time::Duration;

#[test]
fn a_watch_without_a_terminal_prints_plain_lines_and_says_when_no_worker_is_connected() {
    let dir = tmp("sweep-watch");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _coordinator = Proc::spawn(
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
    // One short document case: one generate shard, one judge shard.
    std::fs::write(
        dir.join("ferry.txt"),
        "The ferry Aurora crosses the bay six times a day from Pier 3.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cases.jsonl"),
        "{\"id\": \"pier\", \"task\": \"document\", \"language\": \"en\", \"query\": \"From which \
         pier does the ferry leave?\", \"reference_answer\": \"Pier 3.\", \"documents\": \
         [\"ferry.txt\"]}\n",
    )
    .unwrap();
    let sweep = dir.join("sweep.yaml");
    std::fs::write(
        &sweep,
        "name: watched\nmodels: [smollm2]\nvariants: [query_last]\ndatasets:\n  - cases: \
         cases.jsonl\njudge:\n  judges: [smollm2]\n  explanation_tokens: 8\ngeneration:\n  \
         max_tokens: 8\n",
    )
    .unwrap();
    let connect = [
        "--coordinator",
        listen.as_str(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let submitted = wait_for(
        Duration::from_secs(60),
        "the coordinator to take the sweep",
        &[],
        || {
            let mut args = vec![
                "sweep",
                "submit",
                sweep.to_str().unwrap(),
                "--output",
                "json",
            ];
            args.extend(connect);
            let out = run_within(&args, Duration::from_secs(60));
            out.status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
        },
    );
    let id = submitted["sweep_id"].as_str().unwrap().to_string();

    // The watch's stderr is a file: no bars, lines.
    let mut args = vec!["sweep", "watch", id.as_str()];
    args.extend(connect);
    let mut watch = Proc::spawn("watch", &dir, &args);
    let told = wait_for(
        Duration::from_secs(60),
        "the watch to say that no worker is connected",
        &[&watch],
        || {
            let log = watch.log();
            log.contains("no worker connected").then_some(log)
        },
    );
    let hint = format!(
        "no worker connected: start one with `flotilla worker --coordinator {listen} \
         --token-file {}`",
        token.display()
    );
    assert!(told.contains(&hint), "{told}");
    assert!(
        told.contains(&format!("sweep {id} (watched): queued, 2 jobs, 2 shards")),
        "{told}"
    );
    assert!(
        told.contains(&format!("job {id}.j1 generate ready: ")),
        "{told}"
    );
    assert!(
        !told.contains('\u{1b}'),
        "no terminal control codes: {told:?}"
    );

    // The command it names starts a worker that runs the sweep to the end.
    let work = dir.join("work");
    let mut worker_args: Vec<&str> = vec!["worker"];
    worker_args.extend(connect);
    worker_args.extend(["--id", "w1", "--work-dir", work.to_str().unwrap()]);
    let worker = Proc::spawn("worker", &dir, &worker_args);
    let status = watch
        .wait_exit(SWEEP_TIMEOUT)
        .unwrap_or_else(|| panic!("the watch did not end\n{}", logs(&[&watch, &worker])));
    let log = watch.log();
    assert!(status.success(), "{log}\n{}", worker.log());
    for needle in [
        format!("job {id}.j1 generate succeeded: smollm2 / base / query_last / "),
        "document en (1/1 shards)".to_string(),
        format!("job {id}.j2 judge succeeded: "),
        format!("sweep {id} (watched): succeeded"),
        format!("sweep {id}: 2/2 shards done"),
    ] {
        assert!(log.contains(&needle), "no {needle:?} in:\n{log}");
    }
    // One line per state change: the generate job is said to be running once at most.
    let running = format!("job {id}.j1 generate running");
    assert!(log.matches(&running).count() <= 1, "{log}");
}
