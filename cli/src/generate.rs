//! `flotilla generate`: one or more prompts through a language model.

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_engine::chat::single_turn;
use flotilla_engine::{device, LanguageModel, LoadOptions, Prompt, SamplingParams};

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, a Hugging Face directory, hf:org/name, or a demo alias (smollm2).
    #[arg(long)]
    pub model: String,
    /// Prompt text; repeat the flag to generate for several prompts in one batch.
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Wrap each prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 means no top-k cut.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// A LoRA adapter (PEFT directory) to apply, unmerged.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// cpu, cuda:N or metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    let device = device::parse_device(&a.device)?;
    let pb = spinner(format!("loading {}", a.model));
    let mut lm = LanguageModel::load(&a.model, &LoadOptions { device })
        .with_context(|| format!("--model {}", a.model))?;
    if let Some(dir) = &a.adapter {
        lm = flotilla_train::load_with_adapter(&lm, dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
    }
    pb.set_message("generating");
    let prompts: Vec<Prompt> = a
        .prompt
        .iter()
        .map(|p| {
            if a.chat {
                Prompt::Chat(single_turn(a.system.as_deref(), p))
            } else {
                Prompt::Text(p.clone())
            }
        })
        .collect();
    let params = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        ignore_eos: false,
        samples: 1,
    };
    let (completions, stats) = lm.generate(&prompts, &params)?;
    pb.finish_and_clear();
    match out {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = completions
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "text": c.text,
                        "token_ids": c.token_ids,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "finish_reason": c.finish_reason,
                        "prefill_tokens_per_s": stats.prefill_tokens_per_s,
                        "decode_tokens_per_s": stats.decode_tokens_per_s,
                    })
                })
                .collect();
            if items.len() == 1 {
                print_json(&items[0])?;
            } else {
                print_json(&serde_json::json!({ "completions": items, "stats": stats }))?;
            }
        }
        OutputFormat::Text => {
            for (i, c) in completions.iter().enumerate() {
                if completions.len() > 1 {
                    println!("--- prompt {} ---", i + 1);
                }
                println!("{}", c.text);
            }
            eprintln!(
                "{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s",
                stats.prefill_tokens,
                completions
                    .iter()
                    .map(|c| c.completion_tokens)
                    .sum::<usize>(),
                stats.prefill_tokens_per_s,
                stats.decode_tokens_per_s
            );
        }
    }
    Ok(())
}
