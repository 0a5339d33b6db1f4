//! Tiny random llama / qwen2 / qwen3 / gemma3 models, written as GGUF with SmolLM2's real
//! tokenizer: fast enough for exact checks (GGUF vs Hugging Face loaders, finite differences in
//! training).

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flotilla_engine::loader::read_gguf;
use std::path::Path;

use crate::smollm2_path;

pub const HIDDEN: usize = 64;
pub const FFN: usize = 128;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
/// qwen3 and gemma3 heads are wider than hidden / heads, as in the real models.
pub const WIDE_HEAD: usize = 32;
/// gemma3's sliding window: short enough that a test sentence slides past it.
pub const WINDOW: usize = 4;

fn rand(shape: &[usize], scale: f64) -> QTensor {
    let t = (Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap() * scale).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

fn ones_ish(n: usize) -> QTensor {
    let t = (Tensor::randn(0f32, 0.1, n, &Device::Cpu).unwrap() + 1.0).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Write a tiny random model of `arch` to `path`, reusing SmolLM2's tokenizer metadata.
pub fn write_tiny_gguf(arch: &str, path: &Path) {
    write_tiny_gguf_with(arch, path, |_| {});
}

/// [`write_tiny_gguf`] with the metadata edited by `edit` before writing (a bad file).
pub fn write_tiny_gguf_with(
    arch: &str,
    path: &Path,
    edit: impl Fn(&mut Vec<(String, gguf_file::Value)>),
) {
    let (smol, _) = read_gguf(&smollm2_path()).unwrap();
    let vocab = smol.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .len();
    let mut md: Vec<(String, gguf_file::Value)> = smol
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    use gguf_file::Value as V;
    md.push(("general.architecture".into(), V::String(arch.into())));
    for (k, v) in [
        ("block_count", V::U32(LAYERS as u32)),
        ("embedding_length", V::U32(HIDDEN as u32)),
        ("feed_forward_length", V::U32(FFN as u32)),
        ("attention.head_count", V::U32(HEADS as u32)),
        ("attention.head_count_kv", V::U32(KV_HEADS as u32)),
        ("context_length", V::U32(256)),
        ("rope.freq_base", V::F32(10_000.0)),
        ("attention.layer_norm_rms_epsilon", V::F32(1e-5)),
    ] {
        md.push((format!("{arch}.{k}"), v));
    }
    let wide = arch == "qwen3" || arch == "gemma3";
    let hd = if wide { WIDE_HEAD } else { HIDDEN / HEADS };
    if wide {
        md.push((format!("{arch}.attention.key_length"), V::U32(hd as u32)));
        md.push((format!("{arch}.attention.value_length"), V::U32(hd as u32)));
    }
    if arch == "gemma3" {
        // Layer 1 global, layer 0 sliding.
        md.push((
            format!("{arch}.attention.sliding_window"),
            V::U32(WINDOW as u32),
        ));
        md.push((
            format!("{arch}.attention.sliding_window_pattern"),
            V::U32(2),
        ));
    }
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), rand(&[vocab, HIDDEN], 0.5)),
        ("output_norm.weight".into(), ones_ish(HIDDEN)),
    ];
    if arch != "gemma3" {
        tensors.push(("output.weight".into(), rand(&[vocab, HIDDEN], 0.2)));
    }
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        tensors.push((format!("{p}.attn_norm.weight"), ones_ish(HIDDEN)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones_ish(HIDDEN)));
        tensors.push((
            format!("{p}.attn_q.weight"),
            rand(&[HEADS * hd, HIDDEN], 0.3),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            rand(&[KV_HEADS * hd, HIDDEN], 0.3),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            rand(&[KV_HEADS * hd, HIDDEN], 0.3),
        ));
        tensors.push((
            format!("{p}.attn_output.weight"),
            rand(&[HIDDEN, HEADS * hd], 0.2),
        ));
        tensors.push((format!("{p}.ffn_gate.weight"), rand(&[FFN, HIDDEN], 0.2)));
        tensors.push((format!("{p}.ffn_up.weight"), rand(&[FFN, HIDDEN], 0.2)));
        tensors.push((format!("{p}.ffn_down.weight"), rand(&[HIDDEN, FFN], 0.2)));
        if wide {
            tensors.push((format!("{p}.attn_q_norm.weight"), ones_ish(hd)));
            tensors.push((format!("{p}.attn_k_norm.weight"), ones_ish(hd)));
        }
        if arch == "gemma3" {
            tensors.push((format!("{p}.post_attention_norm.weight"), ones_ish(HIDDEN)));
            tensors.push((format!("{p}.post_ffw_norm.weight"), ones_ish(HIDDEN)));
        }
        if arch == "qwen2" {
            tensors.push((format!("{p}.attn_q.bias"), rand(&[HIDDEN], 0.5)));
            tensors.push((format!("{p}.attn_k.bias"), rand(&[KV_HEADS * hd], 0.5)));
            tensors.push((format!("{p}.attn_v.bias"), rand(&[KV_HEADS * hd], 0.5)));
        }
    }
    edit(&mut md);
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}
