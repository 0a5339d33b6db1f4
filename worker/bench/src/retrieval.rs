//! Retrieval for RAG cases. Documents are cut into chunks sized in the embedding model's own
//! tokens (never past its window) and indexed once: embedded for the dense ranking (cached by
//! the sha256 of the document's bytes, the chunking settings and unit, and the embedding model,
//! in memory and on disk) and counted into BM25 terms for the lexical one. A question ranks the
//! chunks of its case's documents by the mode of [`ChunkSettings::mode`]:
//!
//! - `hybrid` (default): reciprocal rank fusion (k = 60) of the dense ranking (every chunk) and
//!   the BM25 ranking (the chunks sharing a term with the question); `Hit.score` is the fused
//!   score, the sum of 1 / (60 + rank) over the two rankings (at most 2/61 ≈ 0.033);
//! - `dense`: cosine similarity of the embedder's vectors; `Hit.score` is the cosine;
//! - `bm25`: BM25 only (no embedder runs; only chunks sharing a term with the question are
//!   returned); `Hit.score` is the BM25 score.
//!
//! [`Retriever::retrieve_within`] then spends the context budget (`context_tokens`, in the
//! generator's tokens) on the hits best first.

use super::bm25::{self, TermCounts};
use super::chunk::{chunk_tokens, Chunk, TokenSpans};
use super::documents::{hex, Document};
pub use flotilla_contract::case_result::{ChunkSettings, Hit};
pub use flotilla_contract::retrieval::RetrievalMode;
use flotilla_engine::embed::{cosine, EmbeddingModel, Prompts, Role};
use flotilla_engine::error::{Error, Result};
use flotilla_engine::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The version of the chunking recipe in the cache key: bump it when chunks would change.
const CHUNKING: &str = "v2:embedder-tokens";

#[derive(Serialize, Deserialize)]
struct Embedded {
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
}

/// A document's chunks, their vectors (empty in `bm25` mode) and BM25 term counts (empty in
/// `dense` mode).
struct Indexed {
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
    terms: Vec<TermCounts>,
}

type SpanFn = dyn Fn(&str) -> std::result::Result<Vec<(usize, usize)>, String> + Send + Sync;

/// An embedding model's tokenizer as the chunker uses it (no truncation, no padding, no
/// special tokens), with the model's window.
pub struct EmbedderTokens {
    spans: Box<SpanFn>,
    /// Longest input the model reads, in tokens, special tokens included.
    pub window: usize,
    /// Tokens the model adds around every passage: special tokens (`[CLS]`, `[SEP]`: 2) and
    /// the passage prompt where the model has one (e5's `passage: `).
    pub specials: usize,
}

impl EmbedderTokens {
    /// The tokenizer of the model directory `dir`; `window` as the loaded model reports it, or
    /// read as the engine reads it (`sentence_bert_config.json`'s `max_seq_length`, else
    /// `config.json`'s `max_position_embeddings`).
    pub fn load(dir: &Path, window: Option<usize>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::model(
                dir,
                "no tokenizer.json in this model directory",
            ));
        }
        let tt = TextTokenizer::from_file(&path, None, &[])?;
        let mut tk = tt.inner().clone();
        tk.with_truncation(None)
            .map_err(|e| Error::model(&path, format!("truncation: {e}")))?;
        tk.with_padding(None);
        let prompt = Prompts::read(dir)?.passage;
        let specials = tk
            .encode(prompt.as_str(), true)
            .map_err(|e| Error::model(&path, format!("cannot tokenize: {e}")))?
            .get_ids()
            .len();
        let window = match window {
            Some(w) => w,
            None => read_window(dir)?,
        };
        if window <= specials {
            return Err(Error::model(
                dir,
                format!(
                    "a window of {window} tokens leaves no room beside {specials} special tokens"
                ),
            ));
        }
        let spans = move |text: &str| -> std::result::Result<Vec<(usize, usize)>, String> {
            let enc = tk
                .encode_char_offsets(text, false)
                .map_err(|e| format!("cannot tokenize: {e}"))?;
            Ok(enc.get_offsets().to_vec())
        };
        Ok(Self {
            spans: Box::new(spans),
            window,
            specials,
        })
    }

    /// Tokens a chunk may have: the window less the special tokens.
    pub fn content_window(&self) -> usize {
        self.window - self.specials
    }
}

impl TokenSpans for EmbedderTokens {
    fn spans(&self, text: &str) -> std::result::Result<Vec<(usize, usize)>, String> {
        (self.spans)(text)
    }
}

fn read_window(dir: &Path) -> Result<usize> {
    let read = |name: &str, key: &str| -> Option<usize> {
        let t = std::fs::read_to_string(dir.join(name)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        v.get(key)?.as_u64().map(|m| m as usize)
    };
    read("sentence_bert_config.json", "max_seq_length")
        .or_else(|| read("config.json", "max_position_embeddings"))
        .ok_or_else(|| {
            Error::model(
                dir,
                "no max_seq_length (sentence_bert_config.json) nor max_position_embeddings \
                 (config.json): the embedder's window is unknown",
            )
        })
}

/// Chunks of every document seen, keyed by content, and the question-time ranking.
pub struct Retriever<'a> {
    model: Option<&'a EmbeddingModel>,
    /// The embedder's folder: part of the cache key (tokenizer and vectors come from it).
    model_dir: PathBuf,
    tokens: std::result::Result<EmbedderTokens, String>,
    settings: ChunkSettings,
    cache_dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Arc<Indexed>>>,
    /// How many documents were embedded (not found in a cache): for tests and progress.
    pub embedded_count: std::sync::atomic::AtomicUsize,
}

impl<'a> Retriever<'a> {
    /// A retriever over `model` (its tokenizer sizes the chunks). A tokenizer that cannot be
    /// read is reported by the first [`Retriever::retrieve`].
    pub fn new(
        model: &'a EmbeddingModel,
        settings: ChunkSettings,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        let tokens =
            EmbedderTokens::load(&model.path, Some(model.max_tokens)).map_err(|e| e.to_string());
        Self::with(Some(model), model.path.clone(), tokens, settings, cache_dir)
    }

    /// A `bm25` retriever that loads only the embedder's tokenizer (to size chunks exactly as
    /// the other modes do), not its weights. `embedder` is a model spec (`minilm`, a folder).
    pub fn lexical(
        embedder: &str,
        settings: ChunkSettings,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self> {
        if settings.mode.uses_embedder() {
            return Err(Error::input(format!(
                "retrieval mode {} needs the embedding model loaded",
                settings.mode
            )));
        }
        let dir = match flotilla_engine::loader::resolve(embedder)? {
            flotilla_engine::loader::ModelSource::HfDir(d) => d,
            flotilla_engine::loader::ModelSource::Gguf(p) => {
                return Err(Error::model(
                    p,
                    "embedding models load from a Hugging Face directory, not GGUF",
                ))
            }
        };
        let tokens = EmbedderTokens::load(&dir, None)?;
        Ok(Self::with(None, dir, Ok(tokens), settings, cache_dir))
    }

    fn with(
        model: Option<&'a EmbeddingModel>,
        model_dir: PathBuf,
        tokens: std::result::Result<EmbedderTokens, String>,
        settings: ChunkSettings,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            model,
            model_dir,
            tokens,
            settings,
            cache_dir,
            memory: Mutex::new(HashMap::new()),
            embedded_count: Default::default(),
        }
    }

    fn tokens(&self) -> Result<&EmbedderTokens> {
        self.tokens
            .as_ref()
            .map_err(|e| Error::model(&self.model_dir, format!("embedder tokenizer: {e}")))
    }

    /// The chunk size in use, in embedder tokens: `chunk_size` capped at the embedder's window
    /// less its special tokens.
    pub fn chunk_size(&self) -> Result<usize> {
        Ok(self
            .settings
            .size
            .min(self.tokens()?.content_window())
            .max(1))
    }

    fn key(&self, doc: &Document) -> Result<String> {
        let mut h = Sha256::new();
        h.update(doc.sha256.as_bytes());
        h.update(format!(
            "{CHUNKING}:{}:{}:{}",
            self.chunk_size()?,
            self.settings.overlap,
            self.model_dir.display()
        ));
        Ok(hex(&h.finalize()))
    }

    fn indexed(&self, doc: &Document) -> Result<Arc<Indexed>> {
        let key = self.key(doc)?;
        if let Some(e) = self
            .memory
            .lock()
            .map_err(|_| Error::input("retrieval cache poisoned"))?
            .get(&key)
        {
            return Ok(e.clone());
        }
        let mode = self.settings.mode;
        let disk = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.json")));
        let from_disk = disk
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Embedded>(&b).ok())
            .filter(|e| e.vectors.len() == e.chunks.len());
        let e = match from_disk {
            Some(e) => e,
            None => {
                let size = self.chunk_size()?;
                let chunks = chunk_tokens(&doc.text, size, self.settings.overlap, self.tokens()?)
                    .map_err(|e| Error::input(format!("{}: {e}", doc.path.display())))?;
                match self.model.filter(|_| mode.uses_embedder()) {
                    None => Embedded {
                        chunks,
                        vectors: Vec::new(),
                    },
                    Some(model) => {
                        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
                        let mut vectors = Vec::with_capacity(texts.len());
                        for batch in texts.chunks(32) {
                            vectors.extend(model.embed_as(Role::Passage, batch)?);
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
                }
            }
        };
        let terms = if mode == RetrievalMode::Dense {
            Vec::new()
        } else {
            e.chunks.iter().map(|c| TermCounts::of(&c.text)).collect()
        };
        let e = Arc::new(Indexed {
            chunks: e.chunks,
            vectors: e.vectors,
            terms,
        });
        self.memory
            .lock()
            .map_err(|_| Error::input("retrieval cache poisoned"))?
            .insert(key, e.clone());
        Ok(e)
    }

    /// The `k` chunks of `docs` best for `query` under the retrieval mode, best first (ties:
    /// document order, then chunk order). In `bm25` mode only chunks sharing a term with the
    /// question are returned, so there may be fewer than `k`.
    pub fn retrieve(&self, query: &str, docs: &[Document], k: usize) -> Result<Vec<Hit>> {
        let mode = self.settings.mode;
        let model = match (mode.uses_embedder(), self.model) {
            (true, None) => {
                return Err(Error::input(format!(
                    "retrieval mode {mode} needs an embedding model (--embedder)"
                )))
            }
            (_, m) => m.filter(|_| mode.uses_embedder()),
        };
        let indexed = docs
            .iter()
            .map(|d| self.indexed(d))
            .collect::<Result<Vec<_>>>()?;
        // Every chunk of every document, in document order.
        let all: Vec<(usize, &Chunk)> = indexed
            .iter()
            .enumerate()
            .flat_map(|(d, e)| e.chunks.iter().map(move |c| (d, c)))
            .collect();
        let dense: Vec<f32> = match model {
            Some(m) => {
                let q = m.embed_as(Role::Query, &[query])?.remove(0);
                indexed
                    .iter()
                    .flat_map(|e| e.vectors.iter().map(|v| cosine(&q, v)).collect::<Vec<_>>())
                    .collect()
            }
            None => Vec::new(),
        };
        let lexical: Vec<f32> = if mode == RetrievalMode::Dense {
            Vec::new()
        } else {
            let terms: Vec<&TermCounts> = indexed.iter().flat_map(|e| e.terms.iter()).collect();
            bm25::scores(query, &terms)
        };
        let (order, scores) = match mode {
            RetrievalMode::Dense => (bm25::ranking(&dense, |_| true), dense),
            RetrievalMode::Bm25 => (bm25::ranking(&lexical, |s| s > 0.0), lexical),
            RetrievalMode::Hybrid => {
                let by_dense = bm25::ranking(&dense, |_| true);
                let by_lexical = bm25::ranking(&lexical, |s| s > 0.0);
                let fused = bm25::rrf(all.len(), &[&by_dense, &by_lexical]);
                // Ties on the fused score go to the better dense rank.
                let mut dense_rank = vec![usize::MAX; all.len()];
                for (r, &i) in by_dense.iter().enumerate() {
                    dense_rank[i] = r;
                }
                let mut order: Vec<usize> = (0..all.len()).collect();
                order.sort_by(|&a, &b| {
                    fused[b]
                        .total_cmp(&fused[a])
                        .then(dense_rank[a].cmp(&dense_rank[b]))
                });
                (order, fused)
            }
        };
        Ok(order
            .into_iter()
            .take(k)
            .map(|i| {
                let (d, c) = all[i];
                Hit {
                    document: docs[d].path.clone(),
                    chunk: c.index,
                    score: scores[i],
                    text: c.text.clone(),
                }
            })
            .collect())
    }

    /// [`Retriever::retrieve`], then the hits that fit the context budget
    /// (`context_tokens`), counted by `count` (the generator's tokenizer) over the numbered
    /// context exactly as the prompt gets it: hits are kept best first while the context fits;
    /// the first that does not is cut to fit and ends with a visible `[...]` (or dropped when
    /// not even that fits), and the lower-ranked ones are dropped.
    pub fn retrieve_within(
        &self,
        query: &str,
        docs: &[Document],
        k: usize,
        count: &dyn Fn(&str) -> Result<usize>,
    ) -> Result<Vec<Hit>> {
        let hits = self.retrieve(query, docs, k)?;
        self.fit(hits, count)
    }

    /// `hits` cut to the context budget, as [`fit_context`] describes.
    pub fn fit(&self, hits: Vec<Hit>, count: &dyn Fn(&str) -> Result<usize>) -> Result<Vec<Hit>> {
        fit_context(hits, self.settings.context_tokens, count)
    }
}

/// Marks a hit cut to fit the context budget.
pub const CUT_MARK: &str = " [...]";

/// `hits` (best first) within `budget` tokens of numbered context, as
/// [`Retriever::retrieve_within`] describes.
pub fn fit_context(
    hits: Vec<Hit>,
    budget: usize,
    count: &dyn Fn(&str) -> Result<usize>,
) -> Result<Vec<Hit>> {
    let mut kept: Vec<Hit> = Vec::new();
    for h in hits {
        kept.push(h);
        if count(&numbered_context(&kept))? <= budget {
            continue;
        }
        let Some(mut last) = kept.pop() else { break };
        let chars: Vec<char> = last.text.chars().collect();
        // The longest prefix that fits with the mark (binary search on characters).
        let fits = |n: usize, kept: &mut Vec<Hit>| -> Result<bool> {
            let mut h = last.clone();
            h.text = chars[..n].iter().collect::<String>().trim_end().to_string() + CUT_MARK;
            kept.push(h);
            let ok = count(&numbered_context(kept))? <= budget;
            kept.pop();
            Ok(ok)
        };
        let (mut lo, mut hi) = (0usize, chars.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid, &mut kept)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let prefix: String = chars[..lo].iter().collect();
        if !prefix.trim().is_empty() {
            last.text = prefix.trim_end().to_string() + CUT_MARK;
            kept.push(last);
        }
        break;
    }
    Ok(kept)
}

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

/// Share of gold passages found (as substrings, case-insensitive) in the retrieved chunks.
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

#[cfg(test)]
mod tests;
