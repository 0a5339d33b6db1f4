//! `flotilla sweep check` (here, no coordinator) and `flotilla sweep
//! submit|status|watch|cancel|results` against a running coordinator.

mod check;
mod tokens;

use super::connect::{status_error, ConnectArgs};
use super::progress::follow_with_hint;
use super::render::{
    fetch_results, results_json, status_json, status_text, sweep_state, sweeps_text, write_results,
};
use crate::output::{print_json, spinner, OutputFormat};
use anyhow::{bail, Context, Result};
use flotilla_coordinator::client::SubmitSweep;
use flotilla_coordinator::sweep::{ModelCheck, Sweep};
use flotilla_proto::v1 as pb;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a sweep file here as `sweep submit` does and show its plan (jobs, shards,
    /// answers, verdicts, training steps, an estimate of tokens) without running anything.
    Check {
        /// The sweep file (YAML).
        file: PathBuf,
        /// Check models as `flotilla run` does: every model, judge and embedder must be on
        /// this machine (default: their spelling only, as `sweep submit` checks them).
        #[arg(long)]
        local: bool,
        /// Also list every job of the plan.
        #[arg(long)]
        jobs: bool,
    },
    /// Check a sweep file, upload every file it names, and queue it.
    Submit {
        /// The sweep file (YAML).
        file: PathBuf,
        /// Follow it until it ends: progress bars on a terminal, plain lines otherwise.
        #[arg(long)]
        watch: bool,
        /// Upload each model the sweep names as a file or folder on this machine to the
        /// coordinator (as `flotilla model push` does), so workers that lack it fetch it.
        #[arg(long)]
        push_models: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// A sweep's state and its jobs; without an id, every sweep.
    Status {
        sweep_id: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Follow a sweep until it ends: progress bars on a terminal, plain lines on stderr
    /// otherwise (exit status 1 unless it succeeds).
    Watch {
        sweep_id: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Cancel a sweep: running shards are stopped, nothing more is scheduled.
    Cancel {
        sweep_id: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// The per-configuration table with confidence intervals and the paired comparisons.
    Results {
        sweep_id: String,
        /// Also write the results folder (results.json, cases.jsonl, report.md, report.html,
        /// adapters).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

fn sweep_ref(id: &str) -> pb::SweepRef {
    pb::SweepRef {
        sweep_id: id.to_string(),
    }
}

fn print_status(s: &pb::SweepStatus, out: OutputFormat) -> Result<()> {
    match out {
        OutputFormat::Json => print_json(&status_json(s)),
        OutputFormat::Text => {
            print!("{}", status_text(s));
            Ok(())
        }
    }
}

/// Exit status for a sweep that ended: an error unless it succeeded.
fn ended(s: &pb::SweepStatus) -> Result<()> {
    if s.state == pb::SweepState::Succeeded as i32 {
        return Ok(());
    }
    bail!(
        "sweep {} {}{}",
        s.sweep_id,
        sweep_state(s.state),
        if s.error.is_empty() {
            String::new()
        } else {
            format!(": {}", s.error)
        }
    )
}

pub fn run(command: Command, out: OutputFormat) -> Result<()> {
    if let Command::Check { file, local, jobs } = &command {
        return check::run(file, *local, *jobs, out);
    }
    super::runtime()?.block_on(async move {
        match command {
            Command::Check { .. } => Ok(()),
            Command::Submit {
                file,
                watch,
                push_models,
                connect,
            } => {
                // Checked here first, with every problem named as the user wrote the path,
                // before anything is uploaded (the same check `sweep check` runs).
                Sweep::load(&file, ModelCheck::Syntax).map_err(|e| anyhow::anyhow!("{e}"))?;
                let client = connect.connect().await?;
                // Submitted under its absolute path: a model given as a relative path is sent
                // to the workers as the absolute path beside the sweep file on this machine.
                let absolute = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
                let yaml = std::fs::read_to_string(&absolute)
                    .with_context(|| format!("{}: cannot read it", file.display()))?;
                let mut pushed = std::collections::HashMap::new();
                if push_models {
                    let sweep = Sweep::load_text(&yaml, &absolute, ModelCheck::Syntax)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    for m in &sweep.models {
                        if !std::path::Path::new(&m.model).exists() {
                            continue;
                        }
                        let entry = crate::model::push::push_model(&client, &m.model, None).await?;
                        pushed.insert(m.name.clone(), entry.name);
                    }
                }
                let pb = spinner(format!("uploading the files of {}", file.display()));
                let submitted = client
                    .submit_pushed(&yaml, &absolute, ModelCheck::Syntax, pushed)
                    .await;
                pb.finish_and_clear();
                let status = submitted?;
                if !watch {
                    if out == OutputFormat::Text {
                        eprintln!(
                            "submitted; follow it with `flotilla sweep watch {}`",
                            status.sweep_id
                        );
                    }
                    return print_status(&status, out);
                }
                let hint = connect.worker_hint();
                let last = follow_with_hint(&client, &status.sweep_id, Some(&hint)).await?;
                print_status(&last, out)?;
                ended(&last)
            }
            Command::Status { sweep_id, connect } => {
                let mut grpc = connect.connect().await?.grpc();
                match sweep_id {
                    Some(id) => {
                        let s = grpc.get_sweep(sweep_ref(&id)).await.map_err(status_error)?;
                        print_status(&s.into_inner(), out)
                    }
                    None => {
                        let list = grpc
                            .list_sweeps(pb::ListSweepsRequest {})
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        match out {
                            OutputFormat::Json => print_json(&serde_json::Value::Array(
                                list.sweeps.iter().map(status_json).collect(),
                            )),
                            OutputFormat::Text => {
                                print!("{}", sweeps_text(&list.sweeps));
                                Ok(())
                            }
                        }
                    }
                }
            }
            Command::Watch { sweep_id, connect } => {
                // As the watch itself: up to a minute for a restarting coordinator.
                let client = connect
                    .connect_patiently(std::time::Duration::from_secs(60))
                    .await?;
                let last =
                    follow_with_hint(&client, &sweep_id, Some(&connect.worker_hint())).await?;
                print_status(&last, out)?;
                ended(&last)
            }
            Command::Cancel { sweep_id, connect } => {
                let mut grpc = connect.connect().await?.grpc();
                let s = grpc
                    .cancel_sweep(sweep_ref(&sweep_id))
                    .await
                    .map_err(status_error)?;
                print_status(&s.into_inner(), out)
            }
            Command::Results {
                sweep_id,
                out: dir,
                connect,
            } => {
                let client = connect.connect().await?;
                let results = fetch_results(&client, &sweep_id).await?;
                let files = match &dir {
                    Some(d) => write_results(&client, &results, d).await?,
                    None => Vec::new(),
                };
                match out {
                    OutputFormat::Json => {
                        print_json(&results_json(&results, dir.as_deref(), &files))
                    }
                    OutputFormat::Text => {
                        let state = sweep_state(results.raw.state);
                        if state != "succeeded" {
                            eprintln!(
                                "note: sweep {sweep_id} is {state}; these results are partial"
                            );
                        }
                        print!("{}", results.raw.report_markdown);
                        if let Some(d) = dir {
                            eprintln!("results written to {}", d.display());
                        }
                        Ok(())
                    }
                }
            }
        }
    })
}
