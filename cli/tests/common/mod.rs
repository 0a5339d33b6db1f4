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
