//! `flotilla adapter`: look inside a LoRA adapter, and merge one into its base model.

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_train::{merge_to_hf_dir, LoraAdapter};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show an adapter's configuration, modules and size.
    Inspect {
        /// A PEFT adapter directory.
        dir: PathBuf,
    },
    /// Merge an adapter into its base model and write a Hugging Face directory.
    Merge {
        /// The base model (GGUF, HF directory, hf:org/name, or a demo alias).
        #[arg(long)]
        model: String,
        /// The PEFT adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        /// Where to write the merged model.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: Command, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        Command::Inspect { dir } => {
            let a =
                LoraAdapter::load(&dir).with_context(|| format!("adapter {}", dir.display()))?;
            let mut modules: Vec<&str> = a.weights.keys().map(|k| k.module.name()).collect();
            modules.sort();
            modules.dedup();
            let layers = a.weights.keys().map(|k| k.layer).max().map(|l| l + 1);
            // Ranks as stored (rank_pattern may give modules their own).
            let mut ranks: Vec<usize> = a
                .weights
                .values()
                .filter_map(|(a, _)| a.dims2().ok().map(|(r, _)| r))
                .collect();
            ranks.sort();
            ranks.dedup();
            let report = serde_json::json!({
                "dir": dir,
                "base_model": a.config.base_model_name_or_path,
                "r": a.config.r,
                "ranks": ranks,
                "lora_alpha": a.config.lora_alpha,
                "lora_dropout": a.config.lora_dropout,
                "use_rslora": a.config.use_rslora,
                "modules": modules,
                "layers": layers,
                "parameters": a.parameter_count(),
            });
            match out {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => {
                    for (k, v) in report.as_object().into_iter().flatten() {
                        println!("{k:14} {v}");
                    }
                }
            }
        }
        Command::Merge {
            model,
            adapter,
            out: out_dir,
        } => {
            let a = LoraAdapter::load(&adapter)
                .with_context(|| format!("--adapter {}", adapter.display()))?;
            let pb = spinner(format!("merging into {model}"));
            let files = merge_to_hf_dir(&model, &a, &out_dir)
                .with_context(|| format!("--model {model}"))?;
            pb.finish_and_clear();
            match out {
                OutputFormat::Json => print_json(&serde_json::json!({
                    "out": out_dir, "files": files, "merged_modules": a.weights.len(),
                }))?,
                OutputFormat::Text => println!(
                    "merged {} projections; model written to {}",
                    a.weights.len(),
                    out_dir.display()
                ),
            }
        }
    }
    Ok(())
}
