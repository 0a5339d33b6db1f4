//! Retrieval for RAG cases: documents are chunked and embedded once (cached by the sha256 of
//! the document's bytes, the chunking settings and the embedding model, in memory and on disk),
//! and a question retrieves its top-k chunks by cosine similarity.

use super::chunk::{chunk_text, Chunk};
use super::documents::{hex, Document};
pub use flotilla_contract::case_result::{ChunkSettings, Hit};
use flotilla_engine::embed::{cosine, EmbeddingModel};
use flotilla_engine::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// A retrieved chunk with its score and where it came from.

#[derive(Serialize, Deserialize)]
struct Embedded {
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
}

/// Chunk embeddings of every document seen, keyed by content.
pub struct Retriever<'a> {
    model: &'a EmbeddingModel,
    settings: ChunkSettings,
    cache_dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, std::sync::Arc<Embedded>>>,
    /// How many documents were embedded (not found in a cache): for tests and progress.
    pub embedded_count: std::sync::atomic::AtomicUsize,
}

impl<'a> Retriever<'a> {
    pub fn new(
        model: &'a EmbeddingModel,
        settings: ChunkSettings,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            model,
            settings,
            cache_dir,
            memory: Mutex::new(HashMap::new()),
            embedded_count: Default::default(),
        }
    }

    fn key(&self, doc: &Document) -> String {
        let mut h = Sha256::new();
        h.update(doc.sha256.as_bytes());
        h.update(format!(
            "{}:{}:{}",
            self.settings.size,
            self.settings.overlap,
            self.model.path.display()
        ));
        hex(&h.finalize())
    }

    fn embedded(&self, doc: &Document) -> Result<std::sync::Arc<Embedded>> {
        let key = self.key(doc);
        if let Some(e) = self
            .memory
            .lock()
            .map_err(|_| Error::input("retrieval cache poisoned"))?
            .get(&key)
        {
            return Ok(e.clone());
        }
        let disk = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.json")));
        let from_disk = disk
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Embedded>(&b).ok());
        let e = match from_disk {
            Some(e) => e,
            None => {
                let chunks = chunk_text(&doc.text, self.settings.size, self.settings.overlap);
                let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
                let mut vectors = Vec::with_capacity(texts.len());
                for batch in texts.chunks(32) {
                    vectors.extend(self.model.embed(batch)?);
                }
                self.embedded_count
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let e = Embedded { chunks, vectors };
                if let Some(p) = &disk {
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir).map_err(|er| Error::io(dir, er))?;
                    }
                    let tmp = p.with_extension("part");
                    let bytes = serde_json::to_vec(&e).map_err(|er| Error::model(p, er))?;
                    std::fs::write(&tmp, bytes).map_err(|er| Error::io(&tmp, er))?;
                    std::fs::rename(&tmp, p).map_err(|er| Error::io(p, er))?;
                }
                e
            }
        };
        let e = std::sync::Arc::new(e);
        self.memory
            .lock()
            .map_err(|_| Error::input("retrieval cache poisoned"))?
            .insert(key, e.clone());
        Ok(e)
    }

    /// The `k` chunks of `docs` most similar to `query`, best first.
    pub fn retrieve(&self, query: &str, docs: &[Document], k: usize) -> Result<Vec<Hit>> {
        let q = self.model.embed(&[query])?.remove(0);
        let mut hits = Vec::new();
        for d in docs {
            let e = self.embedded(d)?;
            for (c, v) in e.chunks.iter().zip(&e.vectors) {
                hits.push(Hit {
                    document: d.path.clone(),
                    chunk: c.index,
                    score: cosine(&q, v),
                    text: c.text.clone(),
                });
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk)));
        hits.truncate(k);
        Ok(hits)
    }
}

/// Share of gold passages found (as substrings, case-insensitive) in the retrieved chunks.
/// The context a RAG prompt gets: the hits numbered `[1] ...`, `[2] ...`, a blank line apart.
pub fn numbered_context(hits: &[Hit]) -> String {
    hits.iter()
        .enumerate()
        .map(|(i, h)| format!("[{}] {}", i + 1, h.text))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A case's documents as one text, a blank line apart (document analysis reads it whole).
pub fn whole_text(docs: &[Document]) -> String {
    docs.iter()
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

pub fn recall_at_k(hits: &[Hit], gold: &[String]) -> Option<f64> {
    if gold.is_empty() {
        return None;
    }
    let found = gold
        .iter()
        .filter(|g| {
            let g = g.to_lowercase();
            hits.iter().any(|h| h.text.to_lowercase().contains(&g))
        })
        .count();
    Some(found as f64 / gold.len() as f64)
}
