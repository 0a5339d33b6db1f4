//! Flags that several commands share, declared once: the case files a command reads and the
//! retrieval settings of RAG cases. Values are parsed by the contract's types.

use flotilla_contract::ChunkSettings;
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

/// Retrieval for RAG cases (a sweep's `retrieval:` block).
#[derive(clap::Args, Clone, Debug)]
pub struct RetrievalArgs {
    /// Embedding model for RAG retrieval.
    #[arg(long, default_value = "minilm")]
    pub embedder: String,
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,
    #[arg(long, default_value_t = 800)]
    pub chunk_size: usize,
    #[arg(long, default_value_t = 160)]
    pub chunk_overlap: usize,
}

impl RetrievalArgs {
    pub fn chunks(&self) -> ChunkSettings {
        ChunkSettings {
            size: self.chunk_size,
            overlap: self.chunk_overlap,
        }
    }
}
