//! Text generation over a [`LanguageModel`]: prompts to token ids, one batched prefill, then
//! a decode loop that samples each sequence's next token, stops it on EOS, a stop string or
//! the token budget, and drops finished sequences from the batch.

use crate::chat::ChatMessage;
use crate::error::{Error, Result};
use crate::loader::LanguageModel;
use crate::logprobs::{check_top, token_logprob, TokenLogprob};
use crate::models::llama::KvCache;
use crate::sampling::{Sampler, SamplingParams};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What to generate from: raw text given to the tokenizer as is, or a conversation rendered
/// with the model's chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    StopString,
    Length,
}

/// One prompt's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    /// Generated ids (the EOS token that ended generation included).
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Per generated token, when asked for (`generate_with_logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Every generation of this process added up (for a worker's metrics): tokens and seconds of
/// prefill and of decode. Microseconds are counted in integers.
pub mod totals {
    use std::sync::atomic::{AtomicU64, Ordering};

    static PREFILL_TOKENS: AtomicU64 = AtomicU64::new(0);
    static PREFILL_MICROS: AtomicU64 = AtomicU64::new(0);
    static DECODE_TOKENS: AtomicU64 = AtomicU64::new(0);
    static DECODE_MICROS: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn add(s: &super::GenerationStats) {
        PREFILL_TOKENS.fetch_add(s.prefill_tokens as u64, Ordering::Relaxed);
        PREFILL_MICROS.fetch_add((s.prefill_seconds * 1e6) as u64, Ordering::Relaxed);
        DECODE_TOKENS.fetch_add(s.decode_tokens as u64, Ordering::Relaxed);
        DECODE_MICROS.fetch_add((s.decode_seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// (prefill tokens, prefill seconds, decode tokens, decode seconds) so far.
    pub fn snapshot() -> (u64, f64, u64, f64) {
        (
            PREFILL_TOKENS.load(Ordering::Relaxed),
            PREFILL_MICROS.load(Ordering::Relaxed) as f64 / 1e6,
            DECODE_TOKENS.load(Ordering::Relaxed),
            DECODE_MICROS.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Timings of one `generate` call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub batch_size: usize,
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

struct Sequence {
    index: usize,
    history: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    finish: Option<FinishReason>,
    text: String,
    logprobs: Vec<TokenLogprob>,
}

impl LanguageModel {
    /// The token ids a prompt becomes. Raw text gets the special tokens the tokenizer's own
    /// config adds (e.g. BOS); a chat is rendered with the template, which writes its own.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        self.prompt_ids_with(prompt, None)
    }

    /// [`prompt_ids`](Self::prompt_ids) with a chat template's `enable_thinking` defined as
    /// given (`SamplingParams::enable_thinking`).
    pub fn prompt_ids_with(
        &self,
        prompt: &Prompt,
        enable_thinking: Option<bool>,
    ) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(text) => {
                if text.is_empty() {
                    return Err(Error::input("the prompt is empty"));
                }
                self.tokenizer.encode(text, true)?
            }
            Prompt::Chat(messages) => {
                let rendered = self.render_chat_with(messages, true, enable_thinking)?;
                self.tokenizer.encode(&rendered, false)?
            }
        };
        if ids.is_empty() {
            return Err(Error::input("the prompt has no tokens"));
        }
        Ok(ids)
    }

    /// Render a conversation with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_chat_with(messages, add_generation_prompt, None)
    }

    /// [`render_chat`](Self::render_chat) with the template's `enable_thinking` defined as given
    /// (Qwen3: `Some(false)` answers without a think block), or left to its default with `None`.
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::model(
                &self.info.path,
                "the model has no chat template (tokenizer.chat_template / chat_template); use a raw prompt",
            )
        })?;
        if messages.iter().all(|m| m.content.is_empty()) {
            return Err(Error::input("the chat has no text"));
        }
        template.render_with(messages, add_generation_prompt, enable_thinking)
    }

    /// Generate for each prompt, all prompts run together as one batch.
    pub fn generate(
        &self,
        prompts: &[Prompt],
        params: &SamplingParams,
    ) -> Result<(Vec<Completion>, GenerationStats)> {
        let ids = prompts
            .iter()
            .map(|p| self.prompt_ids_with(p, params.enable_thinking))
            .collect::<Result<Vec<_>>>()?;
        self.generate_ids(&ids, params)
    }

    /// [`generate`](Self::generate), and for every generated token its log-probability and
    /// the `top` most likely tokens at that position ([`Completion::logprobs`]).
    pub fn generate_with_logprobs(
        &self,
        prompts: &[Prompt],
        params: &SamplingParams,
        top: usize,
    ) -> Result<(Vec<Completion>, GenerationStats)> {
        check_top(top, "the number of alternatives")?;
        let ids = prompts
            .iter()
            .map(|p| self.prompt_ids_with(p, params.enable_thinking))
            .collect::<Result<Vec<_>>>()?;
        crate::device::in_engine_pool(|| self.generate_ids_in_pool(&ids, params, Some(top)))
    }

    /// Generate from prompts already tokenized.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<(Vec<Completion>, GenerationStats)> {
        crate::device::in_engine_pool(|| self.generate_ids_in_pool(prompts, params, None))
    }

    fn generate_ids_in_pool(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        logprobs: Option<usize>,
    ) -> Result<(Vec<Completion>, GenerationStats)> {
        params.validate()?;
        if prompts.is_empty() {
            return Ok((Vec::new(), GenerationStats::default()));
        }
        let ctx = self.model.config().max_position_embeddings;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::input("a prompt has no tokens"));
        }
        if longest >= ctx {
            return Err(Error::input(format!(
                "the prompt has {longest} tokens but the model's context is {ctx} tokens"
            )));
        }
        let max_new = params.max_tokens.min(ctx - longest);
        let device = self.model.device().clone();
        let pad_id = self.tokenizer.eos_ids.first().copied().unwrap_or(0);

        let b = prompts.len();
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut flat = Vec::with_capacity(b * longest);
        for (p, &pad) in prompts.iter().zip(&pads) {
            flat.extend(std::iter::repeat_n(pad_id, pad));
            flat.extend_from_slice(p);
        }
        let mut seqs: Vec<Sequence> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Sequence {
                index: i,
                history: p.clone(),
                generated: Vec::new(),
                sampler: Sampler::new(params, i),
                finish: None,
                text: String::new(),
                logprobs: Vec::new(),
            })
            .collect();
        let mut cache = KvCache::new(self.model.config().num_layers, pads);
        let mut stats = GenerationStats {
            batch_size: b,
            prefill_tokens: prompts.iter().map(Vec::len).sum(),
            ..Default::default()
        };

        let t0 = Instant::now();
        let input = Tensor::from_vec(flat, (b, longest), &device)?;
        let logits = self.model.forward(&input, &mut cache, false)?;
        let mut active: Vec<usize> = (0..b).collect();
        self.step(&logits, &mut seqs, &active, params, max_new, logprobs)?;
        stats.prefill_seconds = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        loop {
            let keep: Vec<usize> = (0..active.len())
                .filter(|&k| seqs[active[k]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            cache.retain(&keep)?;
            active = keep.iter().map(|&k| active[k]).collect();
            let last: Vec<u32> = active
                .iter()
                .map(|&i| *seqs[i].generated.last().unwrap_or(&pad_id))
                .collect();
            let input = Tensor::from_vec(last, (active.len(), 1), &device)?;
            let logits = self.model.forward(&input, &mut cache, false)?;
            stats.decode_tokens += active.len();
            self.step(&logits, &mut seqs, &active, params, max_new, logprobs)?;
        }
        stats.decode_seconds = t1.elapsed().as_secs_f64();
        stats.prefill_tokens_per_s = rate(stats.prefill_tokens, stats.prefill_seconds);
        stats.decode_tokens_per_s = rate(stats.decode_tokens, stats.decode_seconds);
        totals::add(&stats);

        let completions = seqs
            .into_iter()
            .map(|s| Completion {
                text: s.text,
                prompt_tokens: prompts[s.index].len(),
                completion_tokens: s.generated.len(),
                token_ids: s.generated,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
                logprobs: logprobs.map(|_| s.logprobs),
            })
            .collect();
        Ok((completions, stats))
    }

    /// Log-probability of each candidate continuation after `prompt` (teacher-forced, one
    /// batch: the prompt is run once and its cache shared by every candidate).
    pub fn continuation_logprobs(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
    ) -> Result<Vec<f64>> {
        crate::device::in_engine_pool(|| self.continuation_logprobs_in_pool(prompt, candidates))
    }

    fn continuation_logprobs_in_pool(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
    ) -> Result<Vec<f64>> {
        if prompt.is_empty() || candidates.is_empty() || candidates.iter().any(Vec::is_empty) {
            return Err(Error::input(
                "continuation scoring needs a prompt and non-empty candidates",
            ));
        }
        let ctx = self.model.config().max_position_embeddings;
        let longest = candidates.iter().map(Vec::len).max().unwrap_or(0);
        if prompt.len() + longest > ctx {
            return Err(Error::input(format!(
                "prompt of {} tokens plus a {longest}-token continuation exceeds the context ({ctx})",
                prompt.len()
            )));
        }
        let device = self.model.device().clone();
        let mut cache = KvCache::new(self.model.config().num_layers, vec![0]);
        let input = Tensor::new(prompt, &device)?.unsqueeze(0)?;
        let first =
            candle_nn::ops::log_softmax(&self.model.forward(&input, &mut cache, false)?, 1)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
        let mut scores: Vec<f64> = candidates
            .iter()
            .map(|c| first[c[0] as usize] as f64)
            .collect();
        if longest > 1 {
            let n = candidates.len();
            cache.retain(&vec![0; n])?;
            let pad = self.tokenizer.eos_ids.first().copied().unwrap_or(0);
            let mut flat = Vec::with_capacity(n * (longest - 1));
            for c in candidates {
                for j in 0..longest - 1 {
                    flat.push(*c.get(j).unwrap_or(&pad));
                }
            }
            let input = Tensor::from_vec(flat, (n, longest - 1), &device)?;
            let logits = self.model.forward(&input, &mut cache, true)?;
            let logp = candle_nn::ops::log_softmax(&logits, 2)?.to_vec3::<f32>()?;
            for (i, c) in candidates.iter().enumerate() {
                for j in 1..c.len() {
                    scores[i] += logp[i][j - 1][c[j] as usize] as f64;
                }
            }
        }
        Ok(scores)
    }

    /// Sample one token for each active sequence and decide whether it is finished.
    fn step(
        &self,
        logits: &Tensor,
        seqs: &mut [Sequence],
        active: &[usize],
        params: &SamplingParams,
        max_new: usize,
        logprobs: Option<usize>,
    ) -> Result<()> {
        let rows = logits.to_vec2::<f32>()?;
        for (row, &i) in rows.into_iter().zip(active) {
            let seq = &mut seqs[i];
            // The sampler edits the row (repetition penalty): log-probabilities are of the
            // model's own logits, so keep them.
            let raw = logprobs.map(|_| row.clone());
            let mut row = row;
            let tok = seq.sampler.sample(&mut row, &seq.history);
            if let (Some(top), Some(raw)) = (logprobs, raw) {
                seq.logprobs.push(token_logprob(&raw, tok, top));
            }
            seq.history.push(tok);
            seq.generated.push(tok);
            if !params.ignore_eos && self.tokenizer.eos_ids.contains(&tok) {
                seq.finish = Some(FinishReason::Eos);
                let body = &seq.generated[..seq.generated.len() - 1];
                seq.text = self.tokenizer.decode(body, true)?;
                continue;
            }
            seq.text = self.tokenizer.decode(&seq.generated, true)?;
            if let Some(cut) = params
                .stop
                .iter()
                .filter_map(|s| seq.text.find(s.as_str()))
                .min()
            {
                seq.text.truncate(cut);
                seq.finish = Some(FinishReason::StopString);
            } else if seq.generated.len() >= max_new {
                seq.finish = Some(FinishReason::Length);
            }
        }
        Ok(())
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}
