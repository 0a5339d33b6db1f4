use flotilla_contract::RetrievalMode;
use std::path::Path;

const HEAD: &str =
    "name: t\nmodels: [smollm2]\nadapters:\n  - name: lora\n    train: {data: d.jsonl, steps: 2}\n";

#[test]
fn retrieval_mode_and_context_budget_parse_and_default_to_hybrid() {
    let s = super::parse(HEAD, Path::new("t.yaml")).unwrap();
    assert_eq!(s.retrieval.chunks.mode, RetrievalMode::Hybrid);
    assert_eq!(s.retrieval.chunks.size, 200);
    let text = format!(
        "{HEAD}retrieval:\n  mode: bm25\n  context_tokens: 600\n  chunk_size: 120\n  chunk_overlap: 20\n"
    );
    let s = super::parse(&text, Path::new("t.yaml")).unwrap();
    assert_eq!(s.retrieval.chunks.mode, RetrievalMode::Bm25);
    assert_eq!(s.retrieval.chunks.context_tokens, 600);
    assert_eq!(s.retrieval.chunks.size, 120);
    let bad = format!("{HEAD}retrieval:\n  mode: sparse\n  context_tokens: 0\n");
    let e = super::parse(&bad, Path::new("t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.yaml:7: retrieval.mode: `sparse` is not hybrid, dense or bm25"),
        "{e}"
    );
    assert!(
        e.contains("t.yaml:8: `retrieval.context_tokens` must be at least 1"),
        "{e}"
    );
}
