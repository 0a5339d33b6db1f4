//! Memory-aware placement: a shard goes only to a worker whose free memory holds its model
//! (unless already loaded there) plus the KV cache of the shard's longest prompt; and
//! document-length prompts go to GPU workers while one has a free slot.
//!
//! Workers report each cached language model's footprint from its tensor sizes (weights as
//! loaded, KV bytes per token, context length) and their free memory with every ask; the
//! coordinator estimates a shard's longest prompt from the sizes of what goes into it, at
//! about 3 bytes a token (Japanese: one UTF-8 character of 3 bytes is about one token;
//! English runs 4 to 5 bytes a token, so the estimate errs large).

use super::WorkerMem;
use flotilla_contract::{ShardSpec, Task};

/// Bytes of text per token in the estimate.
const BYTES_PER_TOKEN: u64 = 3;
/// Tokens of chat template and instructions around a prompt's content.
const TEMPLATE_TOKENS: u64 = 256;
/// A prompt this long (estimated tokens) is document-length: a GPU worker takes it first.
pub const DOCUMENT_TOKENS: u64 = 2048;
/// Head-room over the estimate (activations, allocator slack).
const MARGIN: f64 = 1.2;

/// The longest prompt of a shard, in tokens, with its completion; 0 when not a prompt shard.
/// `size` gives a sweep file's size in bytes.
pub fn prompt_tokens(spec_json: &str, size: &dyn Fn(&str) -> Option<u64>) -> u64 {
    let Ok(spec) = ShardSpec::from_json(spec_json.as_bytes()) else {
        return 0;
    };
    let text = |s: &str| s.len() as u64 / BYTES_PER_TOKEN;
    match spec {
        ShardSpec::Generate(g) => g
            .cases
            .iter()
            .map(|c| {
                let context = match c.task {
                    Task::Rag => g.retrieval.chunks.context_tokens as u64,
                    _ => c
                        .documents
                        .iter()
                        .map(|d| size(&d.to_string_lossy()).unwrap_or(0) / BYTES_PER_TOKEN)
                        .sum(),
                };
                TEMPLATE_TOKENS + text(&c.query) + context + g.sampling.max_tokens as u64
            })
            .max()
            .unwrap_or(0),
        ShardSpec::Judge(j) => j
            .items
            .iter()
            .map(|i| {
                let r = &i.result;
                TEMPLATE_TOKENS
                    + text(&r.query)
                    + text(&r.context)
                    + text(r.reference_answer.as_deref().unwrap_or(""))
                    + text(&r.answer)
                    + j.explanation_tokens as u64
            })
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// The memory `worker` needs for a shard of `model` with `tokens` of prompt (`loaded`: the
/// model is in its memory already, or will be by an earlier shard of the same pick), or
/// `None` when it cannot say (no footprint reported for the model).
pub fn need_bytes(worker: &WorkerMem, model: &str, tokens: u64, loaded: bool) -> Option<u64> {
    let name = |s: &str| {
        std::path::Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| s.to_string())
    };
    let fp = worker
        .capabilities
        .model_footprints
        .iter()
        .find(|f| f.spec == model || name(&f.spec) == name(model))?;
    let loaded = loaded || worker.models_loaded.iter().any(|m| m == model);
    let weights = if loaded { 0 } else { fp.weights_bytes };
    let context = if fp.context_tokens > 0 {
        tokens.min(fp.context_tokens)
    } else {
        tokens
    };
    Some(((weights + fp.kv_bytes_per_token * context) as f64 * MARGIN) as u64)
}

/// Whether `worker` is a GPU worker.
pub fn is_gpu(worker: &WorkerMem) -> bool {
    let d = &worker.capabilities.device;
    d.starts_with("cuda") || d.starts_with("metal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, task: &str, query: &str, docs: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "id": id, "task": task, "language": "en", "query": query,
            "reference_answer": null, "documents": docs, "criteria": null,
            "gold_passages": [], "tags": []
        })
    }

    #[test]
    fn a_generate_shard_is_as_long_as_its_longest_prompt() {
        let mut sampling = flotilla_contract::SamplingParams::default();
        sampling.max_tokens = 64;
        let spec = serde_json::json!({
            "kind": "generate",
            "model": "m", "model_label": "m", "adapter": null, "variant": "query_last",
            "cases": [
                case("r", "rag", "what?", &["docs/a.txt"]),
                case("d", "document", "summarise", &["docs/a.txt", "docs/b.txt"]),
            ],
            "sampling": sampling,
            "truncation": "head",
            "retrieval": {"embedder": "minilm", "top_k": 2,
                "chunks": {"size": 100, "overlap": 10, "context_tokens": 1024}}
        })
        .to_string();
        let size = |k: &str| match k {
            "docs/a.txt" => Some(30_000),
            "docs/b.txt" => Some(9_000),
            _ => None,
        };
        // The document case: 256 + 3 ("summarise") + 39,000 / 3 + 64.
        assert_eq!(prompt_tokens(&spec, &size), 256 + 3 + 13_000 + 64);
        // Unknown documents count nothing; a RAG case is its context budget.
        let none = |_: &str| None;
        assert_eq!(prompt_tokens(&spec, &none), 256 + 1 + 1024 + 64);
        assert_eq!(prompt_tokens("not json", &none), 0);
    }
}
