//! A user embeds sentences with MiniLM: vectors match sentence-transformers' and similarity
//! ranks paraphrases above unrelated text.
//!
//! `tests/fixtures/minilm-reference.json` is the recorded output of
//! `scripts/minilm_reference.py` (sentence-transformers on the same model directory).

use flotilla_engine::embed::cosine;
use flotilla_tests::{json_fixture, minilm};

#[test]
fn vectors_match_sentence_transformers() {
    let f = json_fixture("minilm-reference.json");
    let sentences: Vec<&str> = f["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let reference: Vec<Vec<f32>> = f["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
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
