//! The `flotilla` binary as a user runs it: JSON output for scripts, clear one-line errors.

mod common;

use common::{flotilla, ok_json as json};

/// `flotilla generate` on SmolLM2 with "The capital of France is", as JSON.
fn generate_json(max_tokens: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        "smollm2",
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        max_tokens,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    json(&flotilla(&args))
}

#[test]
fn generate_prints_the_documented_json_fields() {
    let v = generate_json("8", &[]);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 8);
    assert_eq!(v["prompt_tokens"], 5);
    assert_eq!(v["completion_tokens"], 8);
    assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        v.get("logprobs").is_none() && v.get("prompt_logprobs").is_none(),
        "{v}"
    );

    let v = generate_json("4", &["--logprobs", "2", "--prompt-logprobs", "1"]);
    let lps = v["logprobs"].as_array().expect("logprobs");
    assert_eq!(lps.len(), 4);
    assert!(lps[0]["token"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // The prompt's 5 tokens: 4 positions, from the second token; each names its token.
    let p = v["prompt_logprobs"].as_array().expect("prompt_logprobs");
    assert_eq!(p.len(), 4);
    assert_eq!(p[3]["token"], " is", "{v}");
    assert!(
        p.iter().all(|t| t["logprob"].as_f64().unwrap() < 0.0),
        "{v}"
    );
}

#[test]
fn embed_similarity_ranks_a_paraphrase_above_an_unrelated_sentence() {
    let out = flotilla(&[
        "embed",
        "--model",
        "minilm",
        "--similarity",
        "--output",
        "json",
        "The cat sits on the mat.",
        "A cat is sitting on a mat.",
        "Quarterly revenue grew by twelve percent.",
    ]);
    let v = json(&out);
    let s = &v["similarity"];
    let para = s[0][1].as_f64().unwrap();
    let unrelated = s[0][2].as_f64().unwrap();
    assert!(para > 0.7 && unrelated < 0.3, "{s}");
}

#[test]
fn model_inspect_json_names_architecture_and_template() {
    let v = json(&flotilla(&[
        "model", "inspect", "smollm2", "--output", "json",
    ]));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["context_length"], 8192);
    assert!(v["chat_template"].as_str().unwrap().contains("im_start"));
}

#[test]
fn bad_flags_and_files_fail_with_one_clear_line() {
    let out = flotilla(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = flotilla(&[
        "generate", "--model", "smollm2", "--prompt", "hi", "--device", "tpu:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--device tpu:0"),
        "{err}"
    );

    let out = flotilla(&["generate", "--model", "smollm2", "--prompt", ""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("empty"), "{err}");

    for (args, want) in [
        (&["--logprobs", "21"][..], "--logprobs is 21"),
        (&["--prompt-logprobs", "99"][..], "--prompt-logprobs is 99"),
        (&["--precision", "fp8"][..], "`fp8` is not a precision"),
        (
            &["--precision", "bf16"][..],
            "precision bf16 applies to Hugging Face",
        ),
    ] {
        let mut all = vec!["generate", "--model", "smollm2", "--prompt", "hi"];
        all.extend_from_slice(args);
        let out = flotilla(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn worker_install_writes_a_systemd_unit_that_runs_this_worker() {
    let dir = common::tmp("install");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let units = dir.join("units");
    let out = flotilla(&[
        "worker",
        "install",
        "--etcd",
        "http://etcd-host:2379",
        "--token-file",
        token.to_str().unwrap(),
        "--device",
        "cpu",
        "--slots",
        "2",
        "--extra",
        "--keep-models 1",
        "--unit-dir",
        units.to_str().unwrap(),
        "--no-enable",
        "--output",
        "json",
    ]);
    let v = json(&out);
    assert_eq!(v["enabled"], false);
    let unit = std::fs::read_to_string(units.join("flotilla-worker.service")).unwrap();
    let token_abs = std::fs::canonicalize(&token).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert!(
        exec.contains(" worker --etcd http://etcd-host:2379 --token-file "),
        "{exec}"
    );
    assert!(exec.contains(token_abs.to_str().unwrap()), "{exec}");
    assert!(
        exec.ends_with("--device cpu --slots 2 --keep-models 1"),
        "{exec}"
    );
    assert!(unit.contains("Restart=always") && unit.contains("WantedBy=default.target"));
    // systemd's own checker: every key known, ExecStart's binary there and executable.
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("flotilla-worker.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd; scripts/setup.sh installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // --print shows the same unit and writes nothing.
    let printed = flotilla(&[
        "worker",
        "install",
        "--etcd",
        "http://etcd-host:2379",
        "--token-file",
        token.to_str().unwrap(),
        "--slots",
        "2",
        "--extra",
        "--keep-models 1",
        "--print",
    ]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout), unit);
    // A token file that is not there is named.
    let bad = flotilla(&[
        "worker",
        "install",
        "--etcd",
        "http://e:2379",
        "--token-file",
        "/nowhere/token",
        "--print",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--token-file /nowhere/token"));
}

/// Without $HOME (a `podman exec`, some service managers) the unit's FLOTILLA_HOME is still
/// absolute: the user's home from the password database, never `.cache/flotilla`, which
/// systemd would resolve from / (found by tests/images/test_office_pc.py).
#[test]
fn worker_install_without_home_writes_an_absolute_flotilla_home() {
    let dir = common::tmp("install-no-home");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "worker",
            "install",
            "--etcd",
            "http://e:2379",
            "--token-file",
        ])
        .arg(&token)
        .arg("--print")
        .env_remove("HOME")
        .env_remove("FLOTILLA_HOME")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = String::from_utf8_lossy(&out.stdout).to_string();
    let home = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=FLOTILLA_HOME="))
        .expect("a FLOTILLA_HOME line");
    let home = std::path::Path::new(home);
    assert!(
        home.is_absolute() && home.ends_with(".cache/flotilla"),
        "{unit}"
    );
}

/// `flotilla ... | head`: a reader that went away ends the command quietly with SIGPIPE's
/// status, as Unix tools do, while SIGPIPE itself stays ignored (a closed socket must be an
/// error a coordinator handles, not its end).
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["model", "list", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command writes.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
