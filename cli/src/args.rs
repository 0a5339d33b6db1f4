//! Flags that several commands share, declared once: the case files a command reads and the
//! retrieval settings of RAG cases. Values are parsed by the contract's types.

use flotilla_contract::{ChunkSettings, RetrievalMode};
use std::path::PathBuf;

/// Which cases: `--cases FILE` (repeatable) and where their documents are.
#[derive(clap::Args, Clone, Debug)]
pub struct CaseFiles {
    /// Case file (Flow or flotilla JSONL); repeat for several. (A sweep's `datasets[].cases`.)
    #[arg(long, required = true, aliases = ["dataset", "benchmark"])]
    pub cases: Vec<PathBuf>,
    /// Folder the cases' documents are in (default: each case file's folder).
    #[arg(long)]
    pub documents: Option<PathBuf>,
}

/// Retrieval for RAG cases (a sweep's `retrieval:` block; each flag is the key of the same
/// name there, `--retrieval-mode` its `mode`).
#[derive(clap::Args, Clone, Debug)]
pub struct RetrievalArgs {
    /// Embedding model for RAG retrieval; its tokenizer sizes the chunks.
    #[arg(long, default_value = "minilm")]
    pub embedder: String,
    /// How chunks are ranked: hybrid (BM25 + dense, reciprocal rank fusion), dense or bm25.
    #[arg(long = "retrieval-mode", value_name = "MODE", default_value = "hybrid")]
    pub mode: RetrievalMode,
    /// Chunks retrieved per question (`retrieval.top_k`; `--top-k` is the sampling setting,
    /// `generation.top_k`).
    #[arg(id = "retrieval_top_k", long = "retrieval-top-k", value_name = "K", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub top_k: usize,
    /// Chunk size in the embedder's tokens (capped at its window: 254 for MiniLM).
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub chunk_size: usize,
    /// Tokens of a chunk repeated from the previous one (embedder tokens).
    #[arg(long, default_value_t = 40)]
    pub chunk_overlap: usize,
    /// Budget of the retrieved context in the generator's tokens: chunks best first while they
    /// fit, the next one cut visibly (`[...]`), the rest dropped.
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub context_tokens: usize,
}

impl RetrievalArgs {
    pub fn chunks(&self) -> ChunkSettings {
        ChunkSettings {
            size: self.chunk_size,
            overlap: self.chunk_overlap,
            mode: self.mode,
            context_tokens: self.context_tokens,
        }
    }
}
