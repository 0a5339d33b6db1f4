//! Log-probabilities of tokens, as OpenAI's `logprobs` / `top_logprobs` and vLLM's `logprobs` /
//! `prompt_logprobs` report them: the chosen (or given) token's log-probability and the `k`
//! most likely tokens at that position, all from the model's raw logits (before a repetition
//! penalty, temperature, top-k or top-p change them).
//!
//! They make two runs of one model comparable position by position (CPU against GPU, one
//! quantization against another) where greedy text alone diverges at the first near-tie.

use crate::error::{Error, Result};
use crate::loader::LanguageModel;
use crate::models::llama::KvCache;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// The most alternatives a caller may ask for per position (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Prompt positions scored per forward pass: bounds the logits held at once (positions x
/// vocabulary floats) for long prompts.
const PROMPT_CHUNK: usize = 128;

/// One candidate token at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub token_id: u32,
    pub logprob: f32,
}

/// One position: the token that was chosen (generation) or given (prompt), its
/// log-probability, and the `top` most likely tokens there, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    pub top: Vec<Candidate>,
}

/// Check a requested number of alternatives.
pub fn check_top(top: usize, what: &str) -> Result<()> {
    if top > MAX_TOP_LOGPROBS {
        return Err(Error::input(format!(
            "{what} is {top}; at most {MAX_TOP_LOGPROBS} alternatives per position"
        )));
    }
    Ok(())
}

/// `token`'s log-probability under `logits` (one position's raw logits) and the `top` most
/// likely tokens (ties: the lower id first).
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let at = |id: u32| {
        logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| (l as f64 - lse) as f32)
    };
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = top.min(logits.len());
    let mut ids: Vec<u32> = if k == 0 {
        Vec::new()
    } else {
        (0..logits.len() as u32).collect()
    };
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
    }
    ids.truncate(k);
    ids.sort_by(order);
    TokenLogprob {
        token_id: token,
        logprob: at(token),
        top: ids
            .into_iter()
            .map(|id| Candidate {
                token_id: id,
                logprob: at(id),
            })
            .collect(),
    }
}

/// log(sum(exp(x))) in f64, stable for any finite maximum.
fn log_sum_exp(xs: &[f32]) -> f64 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = xs.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

impl LanguageModel {
    /// Teacher-forced log-probabilities of a prompt's tokens: for each token after the first,
    /// its log-probability given the tokens before it, and the `top` most likely there.
    /// Returns `prompt.len() - 1` positions.
    pub fn prompt_logprobs(&self, prompt: &[u32], top: usize) -> Result<Vec<TokenLogprob>> {
        check_top(top, "the number of prompt alternatives")?;
        crate::device::in_engine_pool(|| self.prompt_logprobs_in_pool(prompt, top))
    }

    fn prompt_logprobs_in_pool(&self, prompt: &[u32], top: usize) -> Result<Vec<TokenLogprob>> {
        if prompt.is_empty() {
            return Err(Error::input("the prompt has no tokens"));
        }
        let ctx = self.model.config().max_position_embeddings;
        if prompt.len() > ctx {
            return Err(Error::input(format!(
                "the prompt has {} tokens but the model's context is {ctx} tokens",
                prompt.len()
            )));
        }
        let device = self.model.device().clone();
        let mut cache = KvCache::new(self.model.config().num_layers, vec![0]);
        let mut out = Vec::with_capacity(prompt.len().saturating_sub(1));
        // Every position but the last predicts the next prompt token.
        let inputs = &prompt[..prompt.len() - 1];
        for (c, chunk) in inputs.chunks(PROMPT_CHUNK).enumerate() {
            let input = Tensor::new(chunk, &device)?.unsqueeze(0)?;
            let rows = self
                .model
                .forward(&input, &mut cache, true)?
                .squeeze(0)?
                .to_vec2::<f32>()?;
            for (j, row) in rows.iter().enumerate() {
                let next = prompt[c * PROMPT_CHUNK + j + 1];
                out.push(token_logprob(row, next, top));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_normalise_and_rank() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let t = token_logprob(&logits, 2, 3);
        let total: f64 = logits
            .iter()
            .map(|&l| (token_logprob(&logits, 0, 0).logprob as f64 + (l - 1.0) as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to {total}");
        // Ties go to the lower id; the given token's value is its own, not the best's.
        let ids: Vec<u32> = t.top.iter().map(|c| c.token_id).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((t.logprob - (t.top[0].logprob - 1.0)).abs() < 1e-6);
        assert_eq!(t.top[0].logprob, t.top[1].logprob);
        assert!(token_logprob(&logits, 99, 0).logprob.is_infinite());
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 9).top.len(), logits.len());
    }

    #[test]
    fn too_many_alternatives_is_an_input_error() {
        let e = check_top(21, "--logprobs").unwrap_err().to_string();
        assert!(
            e.contains("--logprobs is 21") && e.contains("at most 20"),
            "{e}"
        );
        assert!(check_top(20, "--logprobs").is_ok());
    }
}
