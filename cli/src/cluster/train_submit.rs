//! `flotilla train --config train.yaml --submit`: the same training, run by a cluster. The
//! config becomes a sweep that only trains (one model, one adapter, no datasets), submitted
//! with the files it names; the command follows it (round, step and loss live) and downloads
//! the adapter into `<out>/adapter/`, as `flotilla train` writes it locally.

use super::connect::ConnectArgs;
use super::progress::follow;
use super::render::{fetch_results, sweep_state};
use crate::output::{print_json, OutputFormat};
use anyhow::{bail, Context, Result};
use flotilla_coordinator::client::SubmitSweep;
use flotilla_coordinator::sweep::ModelCheck;
use flotilla_proto::v1 as pb;
use serde_json::json;
use std::path::Path;

/// The sweep text for training `config` on `model` as adapter `name` (`steps` overriding the
/// config's).
fn sweep_text(config: &Path, model: &str, name: &str, steps: Option<usize>) -> Result<String> {
    let mut block = flotilla_contract::TrainConfig::sweep_block(config)?;
    if let Some(s) = steps {
        block["steps"] = json!(s);
    }
    let seed = block["seed"].as_u64().unwrap_or(0);
    // JSON is YAML: the block and the names go in as JSON values, quoted as they need.
    Ok(format!(
        "name: {}\nseed: {seed}\nmodels: [{}]\nadapters:\n  - name: {}\n    train: {}\n",
        serde_json::to_string(&format!("train-{name}"))?,
        serde_json::to_string(model)?,
        serde_json::to_string(name)?,
        serde_json::to_string(&block)?,
    ))
}

pub fn run(
    config: &Path,
    model: &str,
    steps: Option<usize>,
    out_dir: &Path,
    connect: &ConnectArgs,
    out: OutputFormat,
) -> Result<()> {
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "lora".into());
    let yaml = sweep_text(config, model, &name, steps)?;
    super::runtime()?.block_on(async {
        let client = connect.connect().await?;
        let submitted = client
            .submit_text(&yaml, config, ModelCheck::Syntax)
            .await
            .with_context(|| format!("submitting {}", config.display()))?;
        tracing::info!(sweep = submitted.sweep_id, "training submitted");
        if out == OutputFormat::Text {
            eprintln!("submitted as sweep {}", submitted.sweep_id);
        }
        let status = follow(&client, &submitted.sweep_id).await?;
        let state = sweep_state(status.state);
        if status.state != pb::SweepState::Succeeded as i32 {
            bail!(
                "training sweep {} ended {state}: {}",
                status.sweep_id,
                status.error
            );
        }
        let results = fetch_results(&client, &status.sweep_id).await?;
        let adapter = out_dir.join("adapter");
        let mut files = Vec::new();
        for f in &results.raw.adapters {
            let Some(art) = &f.artifact else { continue };
            let file = f.path.rsplit('/').next().unwrap_or(&f.path);
            let dest = adapter.join(file);
            client
                .download(art, &dest)
                .await
                .with_context(|| format!("downloading {}", f.path))?;
            files.push(dest);
        }
        if files.is_empty() {
            bail!("training sweep {} stored no adapter", status.sweep_id);
        }
        let training = results.report.training.first();
        match out {
            OutputFormat::Json => print_json(&json!({
                "sweep_id": status.sweep_id,
                "state": state,
                "adapter": adapter,
                "files": files,
                "training": training,
            })),
            OutputFormat::Text => {
                println!("adapter written to {}", adapter.display());
                if let Some(t) = training {
                    println!(
                        "{} ({} worker(s)): {} steps, {} rounds, final loss {}, held-out loss {}",
                        t.mode,
                        t.workers.len(),
                        t.steps,
                        t.rounds,
                        t.loss
                            .last()
                            .map(|l| format!("{:.4}", l.loss))
                            .unwrap_or_else(|| "-".into()),
                        t.heldout_loss
                            .map(|l| format!("{l:.4}"))
                            .unwrap_or_else(|| "-".into()),
                    );
                }
                Ok(())
            }
        }
    })
}
