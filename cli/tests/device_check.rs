//! The short version of the GPU device check (`scripts/device-check.sh`), so it cannot rot
//! where no GPU is lent: its models are packed from the demo models as for a GPU machine, every
//! step runs on this build's binary with `--device cpu`, and a "device" that computes in a
//! lower precision than it was asked for (a wrapper that answers `cuda:0` on the CPU with f32
//! turned into bf16) must fail the log-probability comparison.

mod common;

use common::{models_dir, repo, tmp};
use std::path::Path;
use std::process::{Command, Output};

fn device_check(dev_dir: &Path, out: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/device-check.sh"))
        .args(args)
        .env("FLOTILLA_DEVICE_DIR", dev_dir)
        .env("OUT", out);
    if let Some(p) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![p.to_path_buf()];
        dirs.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    cmd.output().expect("run bash")
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("device-check.json")).expect("a summary");
    serde_json::from_str(&text).expect("the summary is JSON")
}

fn step<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["steps"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {s:#}"))
}

fn write_exe(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_device_check_passes_on_the_cpu_and_catches_a_device_in_the_wrong_precision() {
    let dir = tmp("device-check");
    let dev_dir = dir.join("device");
    let pack = Command::new("python3")
        .arg(repo().join("scripts/device_check.py"))
        .args(["pack", "--dest"])
        .arg(&dev_dir)
        .arg("--model-cache")
        .arg(models_dir())
        .output()
        .expect("run python3");
    assert!(
        pack.status.success(),
        "pack: {}",
        String::from_utf8_lossy(&pack.stderr)
    );
    let bin = env!("CARGO_BIN_EXE_flotilla");

    // Every step on the CPU: generation, log-probabilities against the dense f32 model,
    // embeddings, LoRA and QLoRA training, adapter, merge, eval.
    let out = dir.join("cpu");
    let run = device_check(&dev_dir, &out, &["--device", "cpu", "--binary", bin], None);
    let s = summary(&out);
    assert!(
        run.status.success(),
        "the CPU check failed:\n{}\n{s:#}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(s["failed"], 0, "{s:#}");
    assert!(s["passed"].as_u64().unwrap() >= 13, "{s:#}");
    let lp = step(&s, "logprob_agreement");
    for row in ["cpu_quantized", "cpu_quantized_candle", "cpu_dense_bf16"] {
        let m = &lp["metrics"][row];
        assert!(m["positions"].as_u64().unwrap() > 50, "{row}: {m}");
        // Quantized and bf16 paths are near the dense model but not equal to it.
        assert!(m["mean_abs"].as_f64().unwrap() > 0.0, "{row}: {m}");
    }

    // A "GPU" that computes in bf16 when asked for f32 (as TF32 or a wrong kernel would):
    // cuda:0 is answered on the CPU, with --precision f32 turned into bf16. The greedy and
    // quantized comparisons cannot see it; the dense f32 comparison must.
    let fake = dir.join("fake-gpu");
    std::fs::create_dir_all(&fake).unwrap();
    write_exe(
        &fake.join("flotilla"),
        &format!(
            "#!/bin/bash\nargs=(); cuda=0\nfor x in \"$@\"; do [ \"$x\" = cuda:0 ] && {{ x=cpu; cuda=1; }}; args+=(\"$x\"); done\n\
             if [ $cuda = 1 ]; then for i in \"${{!args[@]}}\"; do [ \"${{args[$i]}}\" = f32 ] && args[$i]=bf16; done; fi\n\
             exec {bin} \"${{args[@]}}\"\n"
        ),
    );
    write_exe(
        &fake.join("nvidia-smi"),
        "#!/bin/bash\nif [ $# -eq 0 ]; then echo '| CUDA Version: 13.0 |'; \
         else echo 'Stand-in GPU, 580.00, 1000, 10, 9.0'; fi\n",
    );
    let out = dir.join("fake");
    let run = device_check(
        &dev_dir,
        &out,
        &[
            "--device",
            "cuda:0",
            "--binary",
            fake.join("flotilla").to_str().unwrap(),
            "--stop-after",
            "logprob_agreement",
        ],
        Some(&fake),
    );
    let s = summary(&out);
    assert!(
        !run.status.success(),
        "the wrong-precision device passed: {s:#}"
    );
    assert_eq!(
        step(&s, "greedy_agreement_with_cpu")["status"],
        "ok",
        "{s:#}"
    );
    let lp = step(&s, "logprob_agreement");
    assert_eq!(lp["status"], "failed", "{lp:#}");
    let checks = lp["checks"].as_object().expect("checks");
    let f32_check = checks
        .iter()
        .find(|(k, _)| k.starts_with("device dense f32"))
        .expect("the dense f32 check");
    assert_eq!(f32_check.1, false, "{lp:#}");
    let m = &lp["metrics"]["device_dense_f32"];
    assert!(m["max_abs"].as_f64().unwrap() > 0.01, "{m}");
    std::fs::remove_dir_all(&dir).unwrap();
}
