//! How a RAG case's chunks are ranked: [`RetrievalMode`], a sweep's `retrieval.mode` and
//! `flotilla eval --retrieval-mode`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How chunks are ranked against a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalMode {
    /// BM25 and the dense embedder, fused by reciprocal rank fusion (k = 60).
    #[default]
    Hybrid,
    /// Cosine similarity of the embedder's vectors only.
    Dense,
    /// BM25 only (words for Latin text, character bigrams for CJK runs); no embedder runs.
    Bm25,
}

impl RetrievalMode {
    pub const ALL: [RetrievalMode; 3] = [
        RetrievalMode::Hybrid,
        RetrievalMode::Dense,
        RetrievalMode::Bm25,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetrievalMode::Hybrid => "hybrid",
            RetrievalMode::Dense => "dense",
            RetrievalMode::Bm25 => "bm25",
        }
    }

    /// Whether this mode needs the embedding model's vectors.
    pub fn uses_embedder(self) -> bool {
        !matches!(self, RetrievalMode::Bm25)
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "retrieval mode `{s}`: expected hybrid, dense or bm25"
                ))
            })
    }
}

impl std::str::FromStr for RetrievalMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RetrievalMode::parse(s)
    }
}

impl std::fmt::Display for RetrievalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_hybrid_is_the_default() {
        for m in RetrievalMode::ALL {
            assert_eq!(RetrievalMode::parse(m.as_str()).unwrap(), m);
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert_eq!(RetrievalMode::default(), RetrievalMode::Hybrid);
        let e = RetrievalMode::parse("sparse").unwrap_err().to_string();
        assert!(e.contains("hybrid, dense or bm25"), "{e}");
    }
}
