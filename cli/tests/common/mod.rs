//! Helpers shared by the CLI tests: run the real `flotilla` binary, read its JSON.
#![allow(dead_code)]

pub mod procs;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `flotilla --threads 2 ARGS...`, waited for.
pub fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("run flotilla")
}

/// The JSON document a successful run printed on stdout.
pub fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A copy of the shipped benchmark's smoke cases and their documents in `dir` (so a test can
/// write a sweep beside them, or change an input afterwards).
pub fn copy_smoke_benchmark(dir: &std::path::Path) {
    let shipped = repo().join("examples/benchmarks/en-ja");
    std::fs::create_dir_all(dir.join("documents")).unwrap();
    std::fs::copy(shipped.join("smoke.jsonl"), dir.join("smoke.jsonl")).unwrap();
    for e in std::fs::read_dir(shipped.join("documents")).unwrap() {
        let e = e.unwrap().path();
        std::fs::copy(&e, dir.join("documents").join(e.file_name().unwrap())).unwrap();
    }
}

/// A fresh, empty temporary folder for this test process.
pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flotilla-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A planted judge: an OpenAI-compatible endpoint on loopback that answers every request with
/// `reply` and keeps the user messages it was sent.
pub fn planted_judge(
    reply: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(user) = request["messages"][1]["content"].as_str() {
                log.lock().unwrap().push(user.to_string());
            }
            let answer = serde_json::json!({
                "choices": [{"message": {"role": "assistant", "content": reply}}]
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (base, seen)
}

/// The demo models' folder (`$FLOTILLA_HOME/models`, as `scripts/fetch-models.sh` fills it).
#[allow(dead_code)]
pub fn models_dir() -> PathBuf {
    match std::env::var_os("FLOTILLA_HOME") {
        Some(h) => PathBuf::from(h).join("models"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/flotilla/models"),
    }
}

/// Run a benchmark script of the repository (`scripts/bench/NAME`) on this build's binary
/// with `env` (the short versions CI runs so the scripts cannot rot); it must succeed.
pub fn run_bench_script(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let out = Command::new("bash")
        .arg(repo().join("scripts/bench").join(name))
        .env("FLOTILLA_BIN", env!("CARGO_BIN_EXE_flotilla"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
