//! RAG retrieval on the Flow sample documents with MiniLM: the right passage comes back, and
//! each document is embedded once (then served from the memory and disk caches).
//!
//! A question that hinges on a rare name ("Floridaceras", in a list of genera and dates) is
//! BM25's: the list-like chunk is far down MiniLM's ranking, and with the default hybrid
//! fusion it ranks 10th (docs/EVAL.md, "Retrieval"). A question about meaning ("what software
//! ...") is the dense model's.

use flotilla_bench::documents::load_document;
use flotilla_bench::retrieval::{recall_at_k, ChunkSettings, Retriever};
use flotilla_tests::{minilm, peer_dir, temp_dir};
use std::sync::atomic::Ordering;

#[test]
fn the_relevant_passage_is_retrieved_and_embeddings_are_cached() {
    let files = peer_dir("flow_benchmark_tools").join("files");
    let docs = vec![
        load_document(&files.join("Rhinoceros_Wikipedia.pdf")).unwrap(),
        load_document(&files.join("Jane_Gilbert_resume.docx")).unwrap(),
    ];
    let cache = temp_dir("emb-cache");
    let lexical = ChunkSettings {
        mode: flotilla_contract::RetrievalMode::Bm25,
        ..ChunkSettings::default()
    };
    let bm25 = Retriever::new(minilm(), lexical, None);
    let hits = bm25
        .retrieve("When did the Floridaceras go extinct?", &docs, 4)
        .unwrap();
    assert_eq!(hits.len(), 4);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(
        recall_at_k(&hits, &["Floridaceras".to_string()]),
        Some(1.0),
        "{hits:#?}"
    );
    assert_eq!(
        bm25.embedded_count.load(Ordering::Relaxed),
        0,
        "BM25 embeds nothing"
    );

    // The default (hybrid) retriever.
    let r = Retriever::new(
        minilm(),
        ChunkSettings::default(),
        Some(cache.path().to_path_buf()),
    );
    let hits = r
        .retrieve("What software is the candidate proficient in?", &docs, 3)
        .unwrap();
    assert!(
        hits[0].document.ends_with("Jane_Gilbert_resume.docx"),
        "{hits:#?}"
    );
    assert_eq!(
        r.embedded_count.load(Ordering::Relaxed),
        2,
        "each document embedded once"
    );
    let _ = r
        .retrieve("When did the Floridaceras go extinct?", &docs, 4)
        .unwrap();
    assert_eq!(
        r.embedded_count.load(Ordering::Relaxed),
        2,
        "a second question embeds nothing new"
    );

    // A new run finds the embeddings on disk.
    let again = Retriever::new(
        minilm(),
        ChunkSettings::default(),
        Some(cache.path().to_path_buf()),
    );
    let hits2 = again
        .retrieve("What software is the candidate proficient in?", &docs, 3)
        .unwrap();
    assert_eq!(again.embedded_count.load(Ordering::Relaxed), 0);
    assert_eq!(hits2, hits);
    assert_eq!(recall_at_k(&hits, &[]), None);
}
