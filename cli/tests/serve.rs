//! `flotilla serve` as an OpenAI-compatible endpoint on loopback, used by `flotilla eval` as a
//! remote judge; and an endpoint that is down, which fails ratings, not the run.

mod common;

use common::{copy_smoke_benchmark, repo};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "--threads",
            "2",
            "serve",
            "--model",
            "smollm2",
            "--listen",
            "127.0.0.1:0",
            "--api-key-env",
            "TEST_SERVE_KEY",
        ])
        .env("TEST_SERVE_KEY", "s3cret")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flotilla serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_string();
    Server { child, base }
}

/// A bare HTTP/1.1 POST over a real socket; returns (status, body).
fn post(base: &str, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let hostport = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut s = TcpStream::connect(hostport).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /v1{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `flotilla eval` on the shipped benchmark's document cases with one `--judge`; returns the
/// process output and the results folder.
fn eval_documents(
    tag: &str,
    judge: &str,
    key: Option<&str>,
    max_tokens: &str,
) -> (std::process::Output, PathBuf) {
    let bench =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/benchmarks/en-ja/smoke.jsonl");
    let out = std::env::temp_dir().join(format!("flotilla-{tag}-eval-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args([
        "--threads",
        "2",
        "eval",
        "--model",
        "smollm2",
        "--task",
        "document",
    ])
    .args([
        "--max-tokens",
        max_tokens,
        "--explanation-tokens",
        "48",
        "--judge",
        judge,
    ])
    .args([
        "--cases",
        bench.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--output",
        "json",
    ]);
    if let Some(k) = key {
        cmd.env("FLOTILLA_JUDGE_API_KEY", k);
    }
    (cmd.output().unwrap(), out)
}

#[test]
fn serve_answers_chat_completions_and_judges_for_eval() {
    let server = serve();
    let req = r#"{"model": "smollm2", "messages": [{"role": "user", "content": "What is 2 + 2? Answer with one number."}], "max_tokens": 16}"#;
    let (status, body) = post(&server.base, "/chat/completions", req, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&server.base, "/chat/completions", req, Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains('4'),
        "{v}"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
    // Log-probabilities as OpenAI returns them: one entry per generated token.
    let with = req.replace(
        "\"max_tokens\": 16",
        "\"max_tokens\": 16, \"logprobs\": true, \"top_logprobs\": 2",
    );
    let (status, body) = post(&server.base, "/chat/completions", &with, Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    let w: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(
        w["choices"][0]["message"], v["choices"][0]["message"],
        "same greedy answer"
    );
    let content = w["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(
        content.len() as u64,
        w["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for t in content {
        assert!(
            t["token"].is_string() && t["logprob"].as_f64().unwrap() <= 0.0,
            "{t}"
        );
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{t}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token_id"], t["token_id"], "{t}");
    }
    for (bad, why) in [
        ("\"top_logprobs\": 2", "needs `logprobs: true`"),
        ("\"logprobs\": true, \"top_logprobs\": 21", "at most 20"),
    ] {
        let r = req.replace("\"max_tokens\": 16", &format!("\"max_tokens\": 16, {bad}"));
        let (status, body) = post(&server.base, "/chat/completions", &r, Some("s3cret"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (status, _) = post(
        &server.base,
        "/chat/completions",
        &req.replace("smollm2", "gpt-9"),
        Some("s3cret"),
    );
    assert_eq!(status, 404);

    let judge = format!("openai:smollm2@{}", server.base);
    let (o, out) = eval_documents("serve", &judge, Some("s3cret"), "24");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    for line in cases.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let v = &c["verdicts"][0];
        assert!(v["judge"].as_str().unwrap().starts_with("openai:smollm2@"));
        // A remote judge's reply is parsed; a valid rating or a recorded reason, never silence.
        assert!(v["rating"].is_number() || v["error"].is_string(), "{v}");
        assert!(!v["raw"].as_str().unwrap().is_empty(), "{v}");
    }
    let local_answers = answers(&out);

    // The model under test behind the endpoint, judged by a local model: the same greedy
    // answers as the same model run here, with the endpoint's token counts.
    let model = format!("openai:smollm2@{}", server.base);
    let api_out = std::env::temp_dir().join(format!("flotilla-api-eval-{}", std::process::id()));
    let bench = repo().join("examples/benchmarks/en-ja/smoke.jsonl");
    let o = flotilla_with_key(&[
        "eval",
        "--model",
        &model,
        "--task",
        "document",
        "--max-tokens",
        "24",
        "--explanation-tokens",
        "16",
        "--judge",
        "smollm2",
        "--cases",
        bench.to_str().unwrap(),
        "--out",
        api_out.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(answers(&api_out), local_answers);
    for line in std::fs::read_to_string(api_out.join("cases.jsonl"))
        .unwrap()
        .lines()
    {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(c["model"], model.as_str());
        assert!(c["prompt_tokens"].as_u64().unwrap() > 100, "{c}");
        assert!(c["completion_tokens"].as_u64().unwrap() >= 1, "{c}");
        assert!(c["latency_s"].as_f64().unwrap() > 0.0, "{c}");
    }

    // In a sweep, beside the local model, in one table; its LoRA rows are left out.
    let dir = std::env::temp_dir().join(format!("flotilla-api-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_smoke_benchmark(&dir);
    // The dataset's own rubric, which the judge shards read from the sweep's files.
    std::fs::write(
        dir.join("rubric.jinja"),
        "Is this answer to \"{{ question }}\" the reference's ({{ reference }})?\n{{ answer }}",
    )
    .unwrap();
    std::fs::write(
        dir.join("sweep.yaml"),
        format!(
            "name: api-beside-local\nseed: 1\nmodels:\n  - smollm2\n  - name: big\n    model: {model}\n\
             variants:\n  - name: plain\n    variant: query_last\nadapters: [base]\ndatasets:\n  - name: smoke\n    cases: smoke.jsonl\n    rubric: rubric.jinja\n\
             tasks: [document]\njudge:\n  judges: [smollm2]\n  explanation_tokens: 16\n\
             generation:\n  max_tokens: 24\n"
        ),
    )
    .unwrap();
    let o = flotilla_with_key(&[
        "run",
        dir.join("sweep.yaml").to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let models: std::collections::BTreeSet<&str> = v["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["model"].as_str())
        .collect();
    assert_eq!(models, ["big", "smollm2"].into_iter().collect(), "{v}");
    assert!(
        v["configurations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["variant"] == "plain"),
        "the variant's given name labels the results: {v}"
    );
}

/// `flotilla --threads 2 ARGS...` with the test server's key as FLOTILLA_API_KEY.
fn flotilla_with_key(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--threads", "2"])
        .args(args)
        .env("FLOTILLA_API_KEY", "s3cret")
        .output()
        .unwrap()
}

/// (case id, answer) of every case in a results folder.
fn answers(out: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_to_string(out.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let c: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                c["case_id"].as_str().unwrap().to_string(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_judge_endpoint_that_is_down_is_recorded_per_case_and_the_run_completes() {
    let (o, out) = eval_documents("down", "openai:any@http://127.0.0.1:9/v1", None, "16");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for c in v["configurations"].as_array().unwrap() {
        assert_eq!(c["invalid_ratings"], c["cases"], "{c}");
    }
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    assert!(
        cases.contains("unreachable") && cases.contains("after 3 retries"),
        "{cases}"
    );
}
