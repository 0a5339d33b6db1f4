//! One attempt of a shard on this worker, as the agent spawns it: the files it needs in (from
//! the cache or the coordinator, laid out at their sweep paths), the work on a blocking thread
//! ([`crate::exec::execute`]), the artifacts it produced out, and its folder removed after.

use super::agent::{AgentConfig, ProgressCell};
use super::artifacts::ArtifactCache;
use super::error::io;
use super::exec::{execute, Completed, ShardContext, ShardError};
use flotilla_client::client::Client;
use flotilla_client::telemetry;
use flotilla_proto::v1::{Assignment, FileRef};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// A client of the live connection (waiting up to 30 s for one).
async fn live_client(current: &mut watch::Receiver<Option<Client>>) -> Result<Client, ShardError> {
    match tokio::time::timeout(Duration::from_secs(30), current.wait_for(|c| c.is_some())).await {
        Ok(Ok(c)) => Ok(c.clone().expect("checked")),
        _ => Err(ShardError::Infrastructure(
            "no connection to the coordinator to move files".into(),
        )),
    }
}

/// A folder name for one attempt.
fn attempt_dir_name(shard_id: &str, attempt: u32) -> String {
    format!("{shard_id}-{attempt}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Everything for one attempt, in one span that continues the sweep's trace (the
/// assignment's `traceparent`).
pub(crate) async fn run_shard(
    a: Assignment,
    config: &AgentConfig,
    cache: &Arc<ArtifactCache>,
    current: watch::Receiver<Option<Client>>,
    cancel: Arc<AtomicBool>,
    progress: Arc<ProgressCell>,
) -> Result<(Completed, Vec<FileRef>), ShardError> {
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "shard",
        sweep = %a.sweep_id,
        job = %a.job_id,
        shard = %a.shard_id,
        attempt = a.attempt,
        worker = %config.worker_id,
        units = tracing::field::Empty,
        outcome = tracing::field::Empty,
        error = tracing::field::Empty
    );
    telemetry::set_parent(&span, &a.traceparent);
    let outcome = attempt(a, config, cache, current, cancel, progress)
        .instrument(span.clone())
        .await;
    match &outcome {
        Ok((done, _)) => {
            span.record("units", done.units);
            span.record("outcome", "succeeded");
        }
        Err(e) => {
            let kind = match e {
                ShardError::Task(_) => "task_failure",
                ShardError::Infrastructure(_) => "infrastructure_failure",
                ShardError::Cancelled => "cancelled",
            };
            span.record("outcome", kind);
            span.record("error", e.to_string().as_str());
        }
    }
    outcome
}

/// Files in, execution, artifacts out.
async fn attempt(
    a: Assignment,
    config: &AgentConfig,
    cache: &Arc<ArtifactCache>,
    mut current: watch::Receiver<Option<Client>>,
    cancel: Arc<AtomicBool>,
    progress: Arc<ProgressCell>,
) -> Result<(Completed, Vec<FileRef>), ShardError> {
    // Files, by hash, from the cache or the coordinator (three tries across reconnects).
    for f in &a.files {
        let artifact = f.artifact.as_ref().ok_or_else(|| {
            ShardError::Task(format!("file {} comes without an artifact", f.path))
        })?;
        let mut tries = 0;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ShardError::Cancelled);
            }
            let client = live_client(&mut current).await?;
            match cache.fetch(&client, artifact).await {
                Ok(_) => break,
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::warn!(file = f.path, error = %format!("{e:#}"), "download failed; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    return Err(ShardError::Infrastructure(format!(
                        "cannot fetch {}: {e:#}",
                        f.path
                    )))
                }
            }
        }
    }
    let dir = config
        .work_dir
        .join(attempt_dir_name(&a.shard_id, a.attempt));
    let root = dir.join("files");
    let scratch = dir.join("out");
    let prepared = (|| {
        let _ = std::fs::remove_dir_all(&dir);
        for d in [&root, &scratch] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        cache.materialize(&a.files, &root)
    })();
    if let Err(e) = prepared {
        let _ = std::fs::remove_dir_all(&dir);
        // A bad sweep path is the spec's fault; anything else is this disk's.
        let message = format!("cannot lay out the shard's files: {e:#}");
        return Err(if message.contains("sweep path") {
            ShardError::Task(message)
        } else {
            ShardError::Infrastructure(message)
        });
    }

    let worker_id = config.worker_id.clone();
    let models = config.models.clone();
    let device = config.device.clone();
    let device_name = config.device_name.clone();
    let files = a.files.clone();
    let spec = a.spec.clone();
    let (exec_root, exec_scratch, exec_cancel) = (root.clone(), scratch.clone(), cancel.clone());
    let embeddings = config.cache_dir.join("embeddings");
    let pushed_models = cache.models_dir();
    // The blocking thread's spans (load model, retrieve, generate, judge, train step) are
    // children of this shard's.
    let span = tracing::Span::current();
    let executed = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let report = |done: u32, total: u32| {
            progress.done.store(done, Ordering::Relaxed);
            progress.total.store(total, Ordering::Relaxed);
        };
        let ctx = ShardContext {
            worker_id: &worker_id,
            models: &models,
            device: &device,
            device_name: &device_name,
            root: &exec_root,
            files: &files,
            scratch: &exec_scratch,
            embeddings_cache: Some(&embeddings),
            cancel: &exec_cancel,
            progress: &report,
            pushed_models: Some(&pushed_models),
        };
        execute(&spec, &ctx)
    })
    .await;
    let output = match executed {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Err(join) => {
            let _ = std::fs::remove_dir_all(&dir);
            let why = join
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "unknown".into());
            return Err(ShardError::Task(format!(
                "the worker crashed running this shard (a bug in flotilla): {why}"
            )));
        }
    };

    // Artifacts up before the result goes, so the result never names a missing file.
    let mut artifacts = Vec::new();
    for (name, path) in &output.uploads {
        let mut tries = 0;
        let stored = loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ShardError::Cancelled);
            }
            let client = live_client(&mut current).await?;
            match client.upload_file(path).await {
                Ok(r) => break r,
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::warn!(file = name, error = %format!("{e:#}"), "upload failed; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(ShardError::Infrastructure(format!(
                        "cannot upload {name}: {e:#}"
                    )));
                }
            }
        };
        artifacts.push(FileRef {
            path: name.clone(),
            artifact: Some(stored),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((output, artifacts))
}
