//! Sweeps, workers and results for people (tables) and scripts (JSON), and the results
//! folder a finished sweep leaves behind: the same files `flotilla eval` writes, plus the
//! trained adapters.

use anyhow::{Context, Result};
use flotilla_bench::report::{write_outputs, Report};
use flotilla_bench::runner::CaseResult;
use flotilla_coordinator::client::Client;
use flotilla_proto::v1 as pb;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub use flotilla_coordinator::dashboard::{job_state, sweep_state};

/// Whether a sweep has ended (succeeded, failed or cancelled).
pub fn is_final(state: i32) -> bool {
    matches!(
        pb::SweepState::try_from(state),
        Ok(pb::SweepState::Succeeded | pb::SweepState::Failed | pb::SweepState::Cancelled)
    )
}

pub fn status_json(s: &pb::SweepStatus) -> Value {
    json!({
        "sweep_id": s.sweep_id,
        "name": s.name,
        "state": sweep_state(s.state),
        "shards_total": s.shards_total,
        "shards_done": s.shards_done,
        "shards_running": s.shards_running,
        "shards_failed": s.shards_failed,
        "error": (!s.error.is_empty()).then_some(&s.error),
        "created_unix_ms": s.created_unix_ms,
        "updated_unix_ms": s.updated_unix_ms,
        "jobs": s.jobs.iter().map(|j| json!({
            "job_id": j.job_id,
            "kind": j.kind,
            "label": j.label,
            "state": job_state(j.state),
            "shards_total": j.shards_total,
            "shards_done": j.shards_done,
            "shards_running": j.shards_running,
            "shards_failed": j.shards_failed,
            "depends_on": j.depends_on,
            "error": (!j.error.is_empty()).then_some(&j.error),
            "training": j.training.as_ref().map(|t| json!({
                "round": t.round, "rounds": t.rounds, "step": t.step, "steps": t.steps,
                "loss": t.loss, "heldout_loss": t.heldout_loss,
            })),
        })).collect::<Vec<_>>(),
    })
}

/// One line per sweep.
pub fn sweeps_text(sweeps: &[pb::SweepStatus]) -> String {
    if sweeps.is_empty() {
        return "no sweeps\n".into();
    }
    let mut out = format!(
        "{:<28} {:<24} {:<10} {:>13}\n",
        "SWEEP", "NAME", "STATE", "SHARDS"
    );
    for s in sweeps {
        out.push_str(&format!(
            "{:<28} {:<24} {:<10} {:>13}\n",
            s.sweep_id,
            s.name,
            sweep_state(s.state),
            format!("{}/{}", s.shards_done, s.shards_total)
        ));
    }
    out
}

/// A sweep and its jobs.
pub fn status_text(s: &pb::SweepStatus) -> String {
    let mut out = format!(
        "sweep {} ({}): {}, {}/{} shards done, {} running, {} failed\n",
        s.sweep_id,
        s.name,
        sweep_state(s.state),
        s.shards_done,
        s.shards_total,
        s.shards_running,
        s.shards_failed
    );
    if !s.error.is_empty() {
        out.push_str(&format!("error: {}\n", s.error));
    }
    for j in &s.jobs {
        out.push_str(&format!(
            "  {:<11} {:<10} {:>9}  {}{}{}\n",
            j.kind,
            job_state(j.state),
            format!("{}/{}", j.shards_done, j.shards_total),
            j.label,
            j.training
                .as_ref()
                .map(|t| format!("  {}", train_progress(t)))
                .unwrap_or_default(),
            if j.error.is_empty() {
                String::new()
            } else {
                format!("  ({})", j.error)
            }
        ));
    }
    out
}

/// "round 3/10, step 3/10, loss 2.3141, held-out 2.4012".
pub fn train_progress(t: &pb::TrainProgress) -> String {
    let mut s = format!(
        "round {}/{}, step {}/{}",
        t.round, t.rounds, t.step, t.steps
    );
    if let Some(l) = t.loss {
        s.push_str(&format!(", loss {l:.4}"));
    }
    if let Some(l) = t.heldout_loss {
        s.push_str(&format!(", held-out {l:.4}"));
    }
    s
}

fn gib(bytes: u64) -> String {
    if bytes == 0 {
        "-".into()
    } else {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

pub fn workers_json(workers: &[pb::WorkerInfo]) -> Value {
    Value::Array(
        workers
            .iter()
            .map(|w| {
                let c = w.capabilities.clone().unwrap_or_default();
                json!({
                    "worker_id": w.worker_id,
                    "connected": w.connected,
                    "running": w.running,
                    "running_shards": w.running_shards,
                    "shards_completed": w.shards_completed,
                    "units_per_second": w.units_per_second,
                    "prefill_tokens_per_s": w.prefill_tokens_per_s,
                    "last_seen_unix_ms": w.last_seen_unix_ms,
                    "paused": w.paused,
                    "capabilities": {
                        "device": c.device, "gpu_name": c.gpu_name,
                        "gpu_memory_bytes": c.gpu_memory_bytes, "ram_bytes": c.ram_bytes,
                        "cores": c.cores, "models_cached": c.models_cached,
                        "models_loaded": c.models_loaded, "slots": c.slots,
                        "version": c.version, "hostname": c.hostname,
                        "memory_free_bytes": c.memory_free_bytes,
                        "compute_capability": c.compute_capability,
                        "model_footprints": c.model_footprints.iter().map(|f| json!({
                            "spec": f.spec, "weights_bytes": f.weights_bytes,
                            "kv_bytes_per_token": f.kv_bytes_per_token,
                            "context_tokens": f.context_tokens,
                        })).collect::<Vec<_>>(),
                    },
                })
            })
            .collect(),
    )
}

pub fn workers_text(workers: &[pb::WorkerInfo]) -> String {
    if workers.is_empty() {
        return "no workers\n".into();
    }
    let mut out = format!(
        "{:<24} {:<16} {:<8} {:<22} {:>9} {:>9} {:>5} {:>7} {:>6} {:>8} {:>9}  {}\n",
        "WORKER",
        "HOST",
        "DEVICE",
        "GPU",
        "RAM",
        "FREE",
        "SLOTS",
        "RUNNING",
        "DONE",
        "UNITS/S",
        "PREFILL/S",
        "LOADED"
    );
    for w in workers {
        let c = w.capabilities.clone().unwrap_or_default();
        let gpu = if c.gpu_name.is_empty() {
            "-".to_string()
        } else {
            let cap = if c.compute_capability.is_empty() {
                String::new()
            } else {
                format!(" sm{}", c.compute_capability.replace('.', ""))
            };
            format!("{} {}{cap}", c.gpu_name, gib(c.gpu_memory_bytes))
        };
        let free = if c.memory_free_bytes == 0 {
            "-".to_string()
        } else {
            gib(c.memory_free_bytes)
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<8} {:<22} {:>9} {:>9} {:>5} {:>7} {:>6} {:>8.2} {:>9.0}  {}{}\n",
            w.worker_id,
            c.hostname,
            c.device,
            gpu,
            gib(c.ram_bytes),
            free,
            c.slots,
            w.running,
            w.shards_completed,
            w.units_per_second,
            w.prefill_tokens_per_s,
            if c.models_loaded.is_empty() {
                "-".to_string()
            } else {
                c.models_loaded.join(",")
            },
            if !w.connected {
                "  (registered, not connected)".to_string()
            } else if !w.paused.is_empty() {
                format!("  (paused: {})", w.paused)
            } else {
                String::new()
            }
        ));
    }
    out
}

/// A sweep's results, read back into the engine's types.
pub struct Results {
    pub raw: pb::SweepResults,
    pub report: Report,
    pub cases: Vec<CaseResult>,
}

pub async fn fetch_results(client: &Client, sweep_id: &str) -> Result<Results> {
    let raw = client
        .grpc()
        .get_results(pb::SweepRef {
            sweep_id: sweep_id.to_string(),
        })
        .await
        .map_err(super::connect::status_error)?
        .into_inner();
    let mut report: Report = serde_json::from_slice(&raw.report_json)
        .context("the coordinator's report is not valid results JSON")?;
    if let Some(p) = report.provenance.as_mut() {
        crate::provenance::stamp(p, false);
    }
    let cases = String::from_utf8_lossy(&raw.cases_jsonl)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("the coordinator's cases.jsonl line {}", i + 1))
        })
        .collect::<Result<Vec<CaseResult>>>()?;
    Ok(Results { raw, report, cases })
}

/// Writes the results folder: `results.json`, `flow_results.json`, `cases.jsonl`,
/// `report.md` (as `flotilla eval` does) and each trained adapter under `adapters/`.
pub async fn write_results(client: &Client, results: &Results, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = write_outputs(out, &results.report, &results.cases)
        .with_context(|| format!("cannot write the results folder {}", out.display()))?;
    for a in &results.raw.adapters {
        let Some(artifact) = &a.artifact else {
            continue;
        };
        let rel = flotilla_worker::artifacts::sweep_path(&a.path)?;
        let dest = out.join(rel);
        client
            .download(artifact, &dest)
            .await
            .with_context(|| format!("downloading adapter file {}", a.path))?;
        files.push(dest);
    }
    Ok(files)
}

/// What `results` and `run` print as JSON.
pub fn results_json(results: &Results, out: Option<&Path>, files: &[PathBuf]) -> Value {
    json!({
        "sweep_id": results.raw.sweep_id,
        "state": sweep_state(results.raw.state),
        "out": out,
        "files": files,
        "warnings": results.report.warnings,
        "judges": results.report.judges,
        "configurations": results.report.configurations,
        "comparisons": results.report.comparisons,
        "training": results.report.training,
        "adapters": results.raw.adapters.iter().map(|a| json!({
            "path": a.path,
            "sha256": a.artifact.as_ref().map(|x| x.sha256.clone()),
            "size": a.artifact.as_ref().map(|x| x.size),
        })).collect::<Vec<_>>(),
        "failed_cases": results.cases.iter().filter(|r| r.error.is_some())
            .map(|r| json!({"case_id": r.case_id, "model": r.model, "adapter": r.adapter,
                "variant": r.variant, "error": r.error}))
            .collect::<Vec<_>>(),
    })
}
