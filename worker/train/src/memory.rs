//! Training memory from tensor sizes: what a LoRA / QLoRA run holds at its peak, counted from
//! the model's shapes and the tensors this crate's training graph keeps (see
//! [`super::model`]). Used to say whether a model fits a card before trying, and checked
//! against the measured peak of real runs on the CPU (docs/PERFORMANCE.md).

use flotilla_engine::models::config::{Architecture, ModelConfig};
use serde::Serialize;

/// How attention keeps its activations for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKeeps {
    /// The CPU custom op: only q, k, v (probabilities recomputed in the backward).
    Inputs,
    /// candle's ops (CUDA, Metal, or `FLOTILLA_COMPOSED_OPS`): scores and probabilities too,
    /// heads x t x t per row.
    Probabilities,
}

/// What is trained, and how.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryOptions {
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    /// LoRA on all seven projections (true) or on q_proj and v_proj only.
    pub all_projections: bool,
    /// Bits per weight of the frozen projections: 32 (f32), 16 (bf16), or a GGUF format's
    /// (Q4_0 / Q4_K: 4.5, Q4_1: 5, Q8_0: 8.5).
    pub weight_bits: f64,
    /// Bytes per activation and per dense frozen tensor (embeddings, lm_head): 4 or 2 (bf16).
    pub act_bytes: usize,
    pub checkpoint: bool,
    pub attention: AttentionKeeps,
}

/// The peak, by part, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub frozen_projections: u64,
    /// Embeddings and (untied) lm_head, dense.
    pub embeddings: u64,
    /// LoRA weights, their gradients and AdamW's two moments, f32.
    pub lora_and_optimizer: u64,
    /// Activations kept for the backward (all blocks, or block inputs plus one block's with
    /// checkpointing).
    pub activations: u64,
    /// The largest transient: the backward's gradients of one block's activations, a
    /// dequantized weight (QLoRA), and the loss's logits chunk.
    pub transient: u64,
    pub lora_parameters: u64,
    pub total: u64,
}

/// Bytes that one block keeps per token for its backward, and one block's attention
/// probabilities per token (`t` = sequence length).
fn block_bytes_per_token(c: &ModelConfig, o: &MemoryOptions) -> f64 {
    let (a, f) = (o.act_bytes as f64, 4.0);
    let mixed = o.act_bytes != 4;
    let h = c.hidden_size as f64;
    let kvd = (c.num_kv_heads * c.head_dim) as f64;
    let qd = (c.num_heads * c.head_dim) as f64;
    let ff = c.intermediate_size as f64;
    let r = o.rank as f64;
    // RMS norm in f32: the f32 copy (bf16 only), x^2, x * inv, * w, and the cast back.
    let norm = (3.0 * f + if mixed { f + a } else { 0.0 }) * h;
    // A projection: the frozen product and the sum (activation dtype); with LoRA the f32
    // input copy (bf16 only), the rank-r product, the up product and its scaled copy, and the
    // cast back (bf16 only).
    let proj = |inp: f64, out: f64, lora: bool| -> f64 {
        let base = 2.0 * a * out;
        if !lora {
            return base;
        }
        base + f * r + 2.0 * f * out + if mixed { f * inp + a * out } else { 0.0 }
    };
    let all = o.all_projections;
    let projections = proj(h, qd, true)
        + proj(h, kvd, all)
        + proj(h, kvd, true)
        + proj(qd, h, all)
        + proj(h, ff, all)
        + proj(h, ff, all)
        + proj(ff, h, all);
    // Contiguous copies of q, k, v; RoPE on q and k (four half products, two halves, the
    // concatenation: four full-width tensors each); the attention output's reshape copy.
    let shapes = a * (qd + 2.0 * kvd) + 4.0 * a * (qd + kvd) + a * qd;
    // Attention: f32 copies of q, k, v in bf16 runs; its output.
    let attn_io = if mixed { f * (qd + 2.0 * kvd) } else { 0.0 } + f * qd;
    // The probabilities (composed attention): scores, scaled, masked, and softmax's
    // shifted, exponentiated and normalised copies, heads x t per token, f32.
    let probs = match o.attention {
        AttentionKeeps::Inputs => 0.0,
        AttentionKeeps::Probabilities => 6.0 * f * c.num_heads as f64 * o.seq as f64,
    };
    // Block input, two residual sums, SiLU, gate * up.
    let rest = 3.0 * a * h + 2.0 * a * ff;
    2.0 * norm + projections + shapes + attn_io + probs + rest
}

/// The estimate for `config` trained as `o` says.
pub fn estimate(c: &ModelConfig, o: &MemoryOptions) -> MemoryEstimate {
    let (h, ff) = (c.hidden_size as u64, c.intermediate_size as u64);
    let qd = (c.num_heads * c.head_dim) as u64;
    let kvd = (c.num_kv_heads * c.head_dim) as u64;
    let layers = c.num_layers as u64;
    let shapes: [(u64, u64, bool); 7] = [
        (h, qd, true),
        (h, kvd, o.all_projections),
        (h, kvd, true),
        (qd, h, o.all_projections),
        (h, ff, o.all_projections),
        (h, ff, o.all_projections),
        (ff, h, o.all_projections),
    ];
    let proj_params: u64 = shapes.iter().map(|(i, out, _)| i * out).sum::<u64>() * layers;
    let frozen_projections = (proj_params as f64 * o.weight_bits / 8.0) as u64;
    let vocab = c.vocab_size as u64;
    let tables = if c.tie_word_embeddings { 1 } else { 2 };
    let embeddings = tables * vocab * h * o.act_bytes as u64;
    let rank = o.rank as u64;
    let lora_parameters: u64 = shapes
        .iter()
        .filter(|s| s.2)
        .map(|(i, out, _)| rank * (i + out))
        .sum::<u64>()
        * layers;
    let lora_and_optimizer = 4 * 4 * lora_parameters;
    let tokens = (o.batch * o.seq) as f64;
    let per_block = block_bytes_per_token(c, o) * tokens;
    let activations = if o.checkpoint {
        (layers as f64 * tokens * (o.act_bytes as u64 * h) as f64 + per_block) as u64
    } else {
        (layers as f64 * per_block) as u64
    };
    // Backward: gradients of one block's activations at once (candle frees a node's gradient
    // once it is passed on); QLoRA's dequantized weight (f32, and its cast); the loss's
    // chunk of 256 rows x vocabulary (logits, the f32 copy, the gradient).
    let dequant = if o.weight_bits < 16.0 {
        let largest = shapes.iter().map(|(i, out, _)| i * out).max().unwrap_or(0);
        largest * (4 + o.act_bytes as u64)
    } else {
        0
    };
    let logits = 256u64.min((o.batch * o.seq) as u64) * vocab * 3 * 4;
    let transient = per_block as u64 + dequant + logits;
    let total = frozen_projections + embeddings + lora_and_optimizer + activations + transient;
    MemoryEstimate {
        frozen_projections,
        embeddings,
        lora_and_optimizer,
        activations,
        transient,
        lora_parameters,
        total,
    }
}

/// Shapes of models users ask about, from their published configs: `smollm2-135m`,
/// `llama-3.2-3b`, `qwen2.5-7b`.
pub fn known_shape(name: &str) -> Option<ModelConfig> {
    let base = |arch, h, ff, layers, heads, kv, vocab, tied, bias| ModelConfig {
        architecture: arch,
        hidden_size: h,
        intermediate_size: ff,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: h / heads,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: tied,
        attention_bias: bias,
        rope_scaling: None,
        gemma3: None,
    };
    Some(match name {
        "smollm2-135m" => base(Architecture::Llama, 576, 1536, 30, 9, 3, 49152, true, false),
        "llama-3.2-3b" => base(
            Architecture::Llama,
            3072,
            8192,
            28,
            24,
            8,
            128256,
            true,
            false,
        ),
        "qwen2.5-7b" => base(
            Architecture::Qwen2,
            3584,
            18944,
            28,
            28,
            4,
            152064,
            false,
            true,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MemoryOptions {
        MemoryOptions {
            batch: 1,
            seq: 1024,
            rank: 16,
            all_projections: true,
            weight_bits: 4.5,
            act_bytes: 2,
            checkpoint: true,
            attention: AttentionKeeps::Probabilities,
        }
    }

    #[test]
    fn parameter_counts_match_the_published_models() {
        // Llama-3.2-3B's projections: 28 x (2 x 3072^2 + 2 x 3072 x 1024 + 3 x 3072 x 8192).
        let c = known_shape("llama-3.2-3b").unwrap();
        let e = estimate(
            &c,
            &MemoryOptions {
                weight_bits: 8.0,
                ..opts()
            },
        );
        assert_eq!(
            e.frozen_projections,
            28 * (2 * 3072 * 3072 + 2 * 3072 * 1024 + 3 * 3072 * 8192)
        );
        // LoRA r=16 on all seven: 28 x 16 x sum(in + out).
        let per_layer = 16 * ((3072 + 3072) * 2 + (3072 + 1024) * 2 + (3072 + 8192) * 3);
        assert_eq!(e.lora_parameters, 28 * per_layer);
    }

    #[test]
    fn checkpointing_and_recomputed_attention_cut_activations() {
        let c = known_shape("qwen2.5-7b").unwrap();
        let full = estimate(
            &c,
            &MemoryOptions {
                checkpoint: false,
                ..opts()
            },
        );
        let ckpt = estimate(&c, &opts());
        assert!(ckpt.activations * 5 < full.activations);
        let inputs = estimate(
            &c,
            &MemoryOptions {
                attention: AttentionKeeps::Inputs,
                ..opts()
            },
        );
        assert!(inputs.activations < ckpt.activations);
    }
}
