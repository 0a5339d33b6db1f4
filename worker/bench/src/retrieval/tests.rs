use super::*;

fn minilm_dir() -> PathBuf {
    let d = flotilla_engine::loader::model_cache().join("all-MiniLM-L6-v2");
    assert!(
        d.join("tokenizer.json").exists(),
        "{} is missing: run scripts/fetch-models.sh",
        d.display()
    );
    d
}

fn hit(text: &str) -> Hit {
    Hit {
        document: PathBuf::from("d.txt"),
        chunk: 0,
        score: 0.0,
        text: text.to_string(),
    }
}

#[test]
fn token_sized_chunks_never_exceed_the_minilm_window_in_english_or_japanese() {
    let tok = EmbedderTokens::load(&minilm_dir(), None).unwrap();
    assert_eq!(tok.window, 256);
    assert_eq!(tok.specials, 2);
    let en = "Debian uses the Advanced Package Tool (APT) to install software. \
              The apt command resolves dependencies automatically! "
        .repeat(60);
    // Japanese with long runs and a sentence with no end at all.
    let ja = "パッケージ管理にはAPTを使います。依存関係は自動的に解決されます！".repeat(40)
        + &"シャドウパスワード".repeat(200);
    for text in [en.as_str(), ja.as_str()] {
        for (size, overlap) in [(200, 40), (254, 0), (1000, 100)] {
            let size = size.min(tok.content_window());
            let chunks = chunk_tokens(text, size, overlap, &tok).unwrap();
            assert!(chunks.len() > 1);
            for c in &chunks {
                let n = tok.spans(&c.text).unwrap().len();
                assert!(n <= size, "{n} tokens > {size}: {c:?}");
                assert!(n + tok.specials <= tok.window);
                let at: String = text.chars().skip(c.start).take(c.end - c.start).collect();
                assert_eq!(at, c.text, "offsets point at the chunk's text");
            }
            // Everything is covered, in order.
            assert_eq!(chunks[0].start, 0);
            assert_eq!(chunks.last().unwrap().end, text.trim_end().chars().count());
            // Consecutive chunks overlap or are a few spaces apart: no text is lost.
            let chars: Vec<char> = text.chars().collect();
            for w in chunks.windows(2) {
                assert!(w[1].start > w[0].start);
                if w[1].start > w[0].end {
                    let gap: String = chars[w[0].end..w[1].start].iter().collect();
                    assert!(gap.trim().is_empty(), "lost {gap:?}");
                }
            }
        }
    }
    // Sentence ends are kept where they can be.
    let chunks = chunk_tokens(&en, 200, 40, &tok).unwrap();
    assert!(chunks
        .iter()
        .all(|c| c.text.ends_with('.') || c.text.ends_with('!')));
}

#[test]
fn the_context_budget_keeps_hits_best_first_and_cuts_the_last_visibly() {
    // A word is a token here.
    let count = |t: &str| -> Result<usize> { Ok(t.split_whitespace().count()) };
    let hits = vec![
        hit("one two three four"),
        hit("five six seven eight nine ten"),
        hit("eleven twelve"),
    ];
    // Everything fits: "[1] one two three four" is 5 words, etc.
    let all = fit_context(hits.clone(), 100, &count).unwrap();
    assert_eq!(all, hits);
    // 5 + 7 = 12 words for two hits; a budget of 10 cuts the second.
    let cut = fit_context(hits.clone(), 10, &count).unwrap();
    assert_eq!(cut.len(), 2, "{cut:?}");
    assert_eq!(cut[0], hits[0]);
    assert!(cut[1].text.ends_with("[...]"), "{cut:?}");
    assert!(cut[1].text.starts_with("five six"), "{cut:?}");
    assert!(count(&numbered_context(&cut)).unwrap() <= 10);
    // A budget that the first hit's number and mark alone exceed drops everything.
    assert!(fit_context(hits, 1, &count).unwrap().is_empty());
}

#[test]
fn bm25_retrieval_needs_no_embedding_weights() {
    let settings = ChunkSettings {
        mode: RetrievalMode::Bm25,
        ..ChunkSettings::default()
    };
    let dir = minilm_dir();
    let r = Retriever::lexical(dir.to_str().unwrap(), settings, None).unwrap();
    let docs = vec![
        Document {
            path: "ja.txt".into(),
            text: "ネットワークの設定はinterfacesファイルで行います。\n\
                   パスワードはシャドウファイルに保存されます。"
                .repeat(30),
            sha256: "ja".into(),
        },
        Document {
            path: "en.txt".into(),
            text: "Passwords are stored in the shadow file.".into(),
            sha256: "en".into(),
        },
    ];
    let hits = r.retrieve("shadow passwords", &docs, 3).unwrap();
    assert_eq!(hits.len(), 1, "only the matching chunk: {hits:?}");
    assert_eq!(hits[0].document, PathBuf::from("en.txt"));
    assert!(hits[0].score > 0.0);
    let hits = r.retrieve("パスワードの保存場所", &docs, 2).unwrap();
    assert!(
        !hits.is_empty() && hits[0].document == Path::new("ja.txt"),
        "{hits:?}"
    );
    assert_eq!(
        r.embedded_count.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Dense and hybrid refuse to run without the model.
    let dense = ChunkSettings {
        mode: RetrievalMode::Dense,
        ..ChunkSettings::default()
    };
    let e = Retriever::lexical("minilm", dense, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dense"), "{e}");
}
