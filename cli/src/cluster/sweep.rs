//! `flotilla sweep submit|status|watch|cancel|results` against a running coordinator.

use super::connect::{status_error, ConnectArgs};
use super::progress::follow;
use super::render::{
    fetch_results, results_json, status_json, status_text, sweep_state, sweeps_text, write_results,
};
use crate::output::{print_json, spinner, OutputFormat};
use anyhow::{bail, Result};
use flotilla_coordinator::client::SubmitSweep;
use flotilla_proto::v1 as pb;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a sweep file, upload every file it names, and queue it.
    Submit {
        /// The sweep file (YAML).
        file: PathBuf,
        /// Follow it with progress bars until it ends.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// A sweep's state and its jobs; without an id, every sweep.
    Status {
        sweep_id: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Follow a sweep with progress bars until it ends (exit status 1 unless it succeeds).
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
        /// Also write the results folder (results.json, cases.jsonl, report.md, adapters).
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
    super::runtime()?.block_on(async move {
        match command {
            Command::Submit {
                file,
                watch,
                connect,
            } => {
                let client = connect.connect().await?;
                let pb = spinner(format!("uploading the files of {}", file.display()));
                let submitted = client.submit_file(&file).await;
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
                let last = follow(&client, &status.sweep_id).await?;
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
                let last = follow(&client, &sweep_id).await?;
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
