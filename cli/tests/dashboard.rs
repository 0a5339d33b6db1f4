//! The dashboard and the HTML reports in a real headless Chromium (Debian's `chromium`): a
//! coordinator process with `--http` and a worker run a small sweep; the page served at `/`
//! must show the worker and the finished sweep's score table and chart, with no console
//! errors; the results folder's `report.html` and `flotilla report` over two runs must open
//! from disk the same way. Screenshots are kept under the test's target folder
//! (`CARGO_TARGET_TMPDIR`).

mod common;

use common::procs::*;
use common::{ok_json, tmp};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Two RAG and two document cases, answered with two prompt variants, judged by SmolLM2.
fn write_sweep(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("docs/ferry.txt"),
        "The ferry Aurora crosses the bay six times a day. It carries 120 passengers and 20 \
         bicycles.\nThe first crossing leaves at 7 in the morning from Pier 3.\n",
    )
    .unwrap();
    let cases = [
        (
            "trips",
            "rag",
            "How many times a day does the Aurora cross the bay?",
            "Six.",
        ),
        (
            "bikes",
            "rag",
            "How many bicycles does the Aurora carry?",
            "20.",
        ),
        (
            "pier",
            "document",
            "From which pier does the first crossing leave?",
            "Pier 3.",
        ),
        (
            "first",
            "document",
            "When does the first crossing leave?",
            "At 7.",
        ),
    ];
    let lines: Vec<String> = cases
        .iter()
        .map(|(id, task, q, a)| {
            serde_json::json!({"id": id, "task": task, "language": "en", "query": q,
                "reference_answer": a, "documents": ["docs/ferry.txt"]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("cases.jsonl"), lines.join("\n") + "\n").unwrap();
    let yaml = "name: dash
seed: 3
models: [smollm2]
variants: [query_first, query_last]
adapters: [base]
datasets:
  - name: ferry
    cases: cases.jsonl
judge:
  judges: [smollm2]
  explanation_tokens: 6
generation:
  max_tokens: 8
retrieval:
  top_k: 1
shard_size: 4
";
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One HTTP/1.1 request on loopback: (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// What headless Chromium rendered at `url`: the DOM after the page's scripts ran, the
/// console lines it logged, and a screenshot at `png`.
fn chromium(url: &str, png: &Path, scratch: &Path) -> (String, Vec<String>) {
    let profile = scratch.join(format!(
        "chromium-{}",
        png.file_stem().unwrap().to_string_lossy()
    ));
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            "--window-size=1400,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut dump = Command::new("chromium");
    base(&mut dump);
    let out = dump
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
        .output()
        .expect("Debian's chromium (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    let mut shot = Command::new("chromium");
    base(&mut shot);
    let status = shot
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(status.status.success());
    let bytes = std::fs::read(png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{}",
        png.display()
    );
    (String::from_utf8(out.stdout).unwrap(), console)
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

#[test]
fn the_dashboard_and_the_reports_render_in_chromium() {
    let dir = tmp("dashboard");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let sweep = write_sweep(&dir);
    let cluster = Cluster::start(&dir, 1);
    let port = cluster.http.lock().unwrap()["coordinator"];
    let id = cluster.submit(&sweep);
    cluster.watch(&id);
    let results = dir.join("results");
    let r = cluster.results(&id, &results);
    let configurations = r["configurations"].as_array().unwrap().len();
    assert_eq!(configurations, 4, "2 variants x 2 tasks");

    // The JSON the page polls.
    let (code, body) = http(port, "GET", "/api/state", &[]);
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["workers"][0]["id"], "w1", "{state:#}");
    // The worker's asks carry the prefill speed its engine measured (the scheduler gives
    // document-length prompts to the fastest); its next ask after the sweep has one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let prefill = loop {
        let (_, body) = http(port, "GET", "/api/state", &[]);
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        let v = state["workers"][0]["prefill_tokens_per_s"]
            .as_f64()
            .unwrap_or(0.0);
        if v > 0.0 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(prefill > 10.0, "measured prefill speed {prefill}");
    assert_eq!(state["sweeps"][0]["id"], id.as_str());
    assert_eq!(state["sweeps"][0]["state"], "succeeded");
    let (code, body) = http(port, "GET", &format!("/api/sweeps/{id}/report"), &[]);
    assert_eq!(code, 200, "{body}");
    let live: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(live["report"]["configurations"], r["configurations"]);
    assert_eq!(http(port, "GET", "/api/sweeps/nope-1/report", &[]).0, 404);
    // Read-only without the token.
    assert_eq!(
        http(port, "POST", &format!("/api/sweeps/{id}/cancel"), &[]).0,
        401
    );
    let wrong = [("Authorization", "Bearer not-the-token")];
    assert_eq!(
        http(port, "POST", &format!("/api/sweeps/{id}/cancel"), &wrong).0,
        401
    );

    // A worker is ready while it has a coordinator; one without is alive and not ready.
    let w1 = cluster.http.lock().unwrap()["w1"];
    assert_eq!(http(w1, "GET", "/readyz", &[]).0, 200);
    let lonely_port = flotilla_tests::etcd::free_port();
    let lonely_http = format!("127.0.0.1:{lonely_port}");
    let _lonely = Proc::spawn(
        "lonely",
        &dir,
        &[
            "worker",
            "--coordinator",
            "127.0.0.1:1",
            "--token-file",
            cluster.token_file.to_str().unwrap(),
            "--id",
            "lonely",
            "--work-dir",
            dir.join("work-lonely").to_str().unwrap(),
            "--http",
            &lonely_http,
        ],
    );
    wait_for(
        std::time::Duration::from_secs(30),
        "the lonely worker's --http",
        &[&_lonely],
        || std::net::TcpStream::connect(("127.0.0.1", lonely_port)).ok(),
    );
    assert_eq!(http(lonely_port, "GET", "/healthz", &[]).0, 200);
    assert_eq!(http(lonely_port, "GET", "/readyz", &[]).0, 503);

    // The page, in Chromium.
    let (dom, console) = chromium(
        &format!("http://127.0.0.1:{port}/"),
        &artifacts.join("dashboard.png"),
        &dir,
    );
    assert!(console.is_empty(), "console output: {console:#?}");
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never rendered its state"
    );
    assert!(dom.contains("data-worker=\"w1\""), "no worker row");
    assert!(dom.contains(&format!("data-sweep=\"{id}\"")), "no sweep");
    assert!(dom.contains("id=\"score-table\""), "no live score table");
    assert_eq!(count(&dom, "class=\"config-row\""), configurations);
    assert!(count(&dom, "class=\"score-chart\"") >= 1, "no chart");
    assert!(dom.contains("id=\"failures\""));

    // The results folder's report.html, from disk.
    let page = results.join("report.html");
    let (dom, console) = chromium(
        &format!("file://{}", page.display()),
        &artifacts.join("report.png"),
        &dir,
    );
    assert!(console.is_empty(), "console output: {console:#?}");
    assert_eq!(count(&dom, "class=\"config-row\""), configurations);
    assert!(count(&dom, "class=\"score-chart\"") >= 1);
    assert_eq!(count(&dom, "class=\"case\""), 8, "every answer, expandable");
    assert!(dom.contains("id=\"comparisons\""));

    // Two runs side by side: the same results twice compare as unchanged.
    let again = dir.join("again");
    copy_dir(&results, &again);
    let page = dir.join("compare.html");
    let v = ok_json(&run(&[
        "report",
        results.to_str().unwrap(),
        again.to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v["changes"].as_array().unwrap().len(), 0, "{v:#}");
    let rows = v["comparisons"].as_array().unwrap();
    assert_eq!(rows.len(), configurations, "{v:#}");
    assert!(
        rows.iter().all(|r| r["delta"] == 0.0 && r["n"] == 2),
        "{v:#}"
    );
    let (dom, console) = chromium(
        &format!("file://{}", page.display()),
        &artifacts.join("compare.png"),
        &dir,
    );
    assert!(console.is_empty(), "console output: {console:#?}");
    assert!(dom.contains("id=\"run-comparison\""));
    assert_eq!(count(&dom, "class=\"run\""), 2, "a section per run");
    assert_eq!(
        count(&dom, "<button type=\"button\" class=\"tab"),
        3,
        "a tab per run and `all`"
    );

    // A folder that is not results is refused by name.
    let out = run(&["report", dir.join("docs").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("results.json"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The short version of `scripts/bench/observe-overhead.sh`, so it cannot rot: bench dispatch
/// plain, served and scraped, and traced to a local OTLP sink.
#[test]
fn the_observe_overhead_benchmark_runs_all_three_ways() {
    let dir = tmp("observe-overhead");
    let report = dir.join("runs.jsonl");
    let out = common::run_bench_script(
        "observe-overhead.sh",
        &[
            ("ROUNDS", "1".as_ref()),
            ("WORKERS", "4".as_ref()),
            ("SHARDS", "300".as_ref()),
            ("SLOTS", "2".as_ref()),
            ("OUT", report.as_os_str()),
        ],
    );
    let runs: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["plain", "http", "http+traces"]);
    for r in &runs {
        assert_eq!(r["results_stored"], 300, "{r}");
    }
    assert_eq!(
        (runs[0]["http"].as_bool(), runs[0]["traced"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(
        runs[1]["http"] == true && runs[1]["scrapes"].as_u64().unwrap() >= 1,
        "{}",
        runs[1]
    );
    assert_eq!(runs[1]["traced"], false);
    assert_eq!(runs[2]["traced"], true, "{}", runs[2]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("x plain"), "{table}");
}
