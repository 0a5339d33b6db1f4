//! `flotilla train --config train.yaml`: LoRA fine-tuning on this machine, with a progress
//! bar (loss, learning rate, tokens/s), held-out loss, checkpoints and `--resume`.

use crate::output::{print_json, OutputFormat};
use anyhow::Context;
use flotilla_engine::device;
use flotilla_train::{train, TrainConfig, TrainEvent};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Training config (YAML); see docs/TRAINING.md.
    #[arg(long)]
    pub config: PathBuf,
    /// Base model (overrides the config's `model`).
    #[arg(long)]
    pub model: Option<String>,
    /// Output directory (overrides the config's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run the training on a cluster: submit it to the coordinator (--coordinator or --etcd),
    /// follow it, and download the adapter into the output directory.
    #[arg(long)]
    pub submit: bool,
    #[command(flatten)]
    pub connect: crate::cluster::connect::ConnectArgs,
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::from_file(&a.config)?;
    if let Some(s) = a.steps {
        anyhow::ensure!(s >= 1, "--steps must be at least 1");
        cfg.steps = s;
    }
    let model = a
        .model
        .clone()
        .or_else(|| cfg.model.clone())
        .with_context(|| {
            format!(
                "{}: no `model` in the config; pass --model",
                a.config.display()
            )
        })?;
    let out_dir =
        a.out.clone().or_else(|| cfg.out.clone()).with_context(|| {
            format!("{}: no `out` in the config; pass --out", a.config.display())
        })?;
    if a.submit {
        anyhow::ensure!(
            !a.resume,
            "--resume is for local runs: a submitted run resumes on the coordinator by itself"
        );
        return crate::cluster::train_submit::run(
            &a.config, &model, a.steps, &out_dir, &a.connect, out,
        );
    }
    let device = device::parse_device(&a.device)?;

    let pb = ProgressBar::new(cfg.steps as u64);
    pb.set_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    pb.set_message("loading");
    let mut last_eval: Option<f64> = None;
    let text = out == OutputFormat::Text;
    let summary = flotilla_engine::device::in_engine_pool(|| {
        train(&cfg, &model, &out_dir, a.resume, &device, &mut |e| {
            match e {
                TrainEvent::Started {
                    start_step,
                    train_examples,
                    eval_examples,
                    trainable_parameters,
                    ..
                } => {
                    pb.set_position(*start_step as u64);
                    pb.reset_eta();
                    if text {
                        pb.println(format!(
                            "training {trainable_parameters} LoRA parameters on {train_examples} \
                             examples ({eval_examples} held out)"
                        ));
                    }
                }
                TrainEvent::Step(r) => {
                    pb.set_position(r.step as u64);
                    pb.set_message(format!(
                        "loss {:.4} lr {:.2e} {:.0} tok/s{}",
                        r.loss,
                        r.lr,
                        r.tokens_per_second,
                        last_eval
                            .map(|l| format!(" eval {l:.4}"))
                            .unwrap_or_default()
                    ));
                    tracing::info!(
                        step = r.step,
                        loss = r.loss,
                        lr = r.lr,
                        tokens_per_s = r.tokens_per_second,
                        "step"
                    );
                }
                TrainEvent::Eval { step, loss } => {
                    last_eval = Some(*loss);
                    tracing::info!(step, eval_loss = loss, "held-out loss");
                    if text {
                        pb.println(format!("step {step}: held-out loss {loss:.4}"));
                    }
                }
                TrainEvent::Checkpoint { step, dir } => {
                    tracing::info!(step, dir = %dir.display(), "checkpoint");
                }
            }
            true
        })
    });
    pb.finish_and_clear();
    let summary = summary?;
    match out {
        OutputFormat::Json => print_json(&serde_json::to_value(&summary)?)?,
        OutputFormat::Text => {
            println!("adapter written to {}", summary.adapter.display());
            if let (Some(b), Some(a)) = (summary.eval_loss_before, summary.eval_loss_after) {
                println!("held-out loss {b:.4} -> {a:.4}");
            }
            println!(
                "{} steps, final training loss {:.4}, {:.0} tokens/s",
                summary.steps, summary.final_train_loss, summary.tokens_per_second
            );
        }
    }
    Ok(())
}
