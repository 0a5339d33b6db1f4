//! `flotilla generate`: one or more prompts through a language model.

use crate::output::{print_json, spinner, OutputFormat};
use anyhow::Context;
use flotilla_engine::chat::single_turn;
use flotilla_engine::{
    device, logprobs, LanguageModel, LoadOptions, Prompt, SamplingParams, TokenLogprob,
};

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
    /// Dtype of a Hugging Face directory's weights and activations: auto (bf16 on a CUDA GPU
    /// with bf16, f32 elsewhere), f32 or bf16. A GGUF model keeps its quantized weights and
    /// computes in f32 around them.
    #[arg(long, default_value = "auto")]
    pub precision: device::Precision,
    /// Report each generated token's log-probability and the K most likely tokens at its
    /// position (0-20), from the model's raw logits (before the repetition penalty,
    /// temperature, top-k and top-p).
    #[arg(long, value_name = "K")]
    pub logprobs: Option<usize>,
    /// Report each prompt token's log-probability given the tokens before it (teacher
    /// forced) and the K most likely tokens there (0-20); costs one more pass over the prompt.
    #[arg(long, value_name = "K")]
    pub prompt_logprobs: Option<usize>,
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    for (flag, k) in [
        ("--logprobs", a.logprobs),
        ("--prompt-logprobs", a.prompt_logprobs),
    ] {
        if let Some(k) = k {
            logprobs::check_top(k, flag)?;
        }
    }
    let device = device::parse_device(&a.device)?;
    let pb = spinner(format!("loading {}", a.model));
    let opts = LoadOptions {
        device,
        precision: a.precision,
    };
    let mut lm =
        LanguageModel::load(&a.model, &opts).with_context(|| format!("--model {}", a.model))?;
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
        enable_thinking: None,
    };
    let (completions, stats) = match a.logprobs {
        Some(k) => lm.generate_with_logprobs(&prompts, &params, k)?,
        None => lm.generate(&prompts, &params)?,
    };
    let prompt_logprobs = match a.prompt_logprobs {
        Some(k) => {
            pb.set_message("scoring the prompts");
            let mut all = Vec::with_capacity(prompts.len());
            for p in &prompts {
                all.push(lm.prompt_logprobs(&lm.prompt_ids(p)?, k)?);
            }
            Some(all)
        }
        None => None,
    };
    pb.finish_and_clear();
    let show = |lps: &[TokenLogprob]| -> Vec<serde_json::Value> {
        lps.iter().map(|t| logprob_json(&lm, t)).collect()
    };
    match out {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = completions
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut v = serde_json::json!({
                        "text": c.text,
                        "token_ids": c.token_ids,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "finish_reason": c.finish_reason,
                        "prefill_tokens_per_s": stats.prefill_tokens_per_s,
                        "decode_tokens_per_s": stats.decode_tokens_per_s,
                    });
                    if let Some(lps) = &c.logprobs {
                        v["logprobs"] = show(lps).into();
                    }
                    if let Some(all) = &prompt_logprobs {
                        v["prompt_logprobs"] = show(&all[i]).into();
                    }
                    v
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
                if let Some(all) = &prompt_logprobs {
                    println!("prompt log-probabilities (from the second token):");
                    print_logprobs(&lm, &all[i]);
                }
                if let Some(lps) = &c.logprobs {
                    println!("log-probabilities of the generated tokens:");
                    print_logprobs(&lm, lps);
                }
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

/// A token's text as the tokenizer decodes it alone (special tokens kept).
fn token_text(lm: &LanguageModel, id: u32) -> String {
    lm.tokenizer.decode(&[id], false).unwrap_or_default()
}

/// One position as JSON, in the shape of OpenAI's `logprobs.content` entries (plus the ids).
pub(crate) fn logprob_json(lm: &LanguageModel, t: &TokenLogprob) -> serde_json::Value {
    let top: Vec<serde_json::Value> = t
        .top
        .iter()
        .map(|c| {
            serde_json::json!({
                "token_id": c.token_id,
                "token": token_text(lm, c.token_id),
                "logprob": c.logprob,
            })
        })
        .collect();
    serde_json::json!({
        "token_id": t.token_id,
        "token": token_text(lm, t.token_id),
        "logprob": t.logprob,
        "top_logprobs": top,
    })
}

fn print_logprobs(lm: &LanguageModel, lps: &[TokenLogprob]) {
    for t in lps {
        let top: Vec<String> = t
            .top
            .iter()
            .map(|c| format!("{:?} {:.3}", token_text(lm, c.token_id), c.logprob))
            .collect();
        println!(
            "  {:>8.3}  {:<16}  {}",
            t.logprob,
            format!("{:?}", token_text(lm, t.token_id)),
            top.join(", ")
        );
    }
}
