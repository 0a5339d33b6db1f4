//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = llama`: Gemma, Llama 2,
//! Mistral), tokenized as llama.cpp's SPM tokenizer does.
//!
//! llama.cpp splits text into characters (spaces written as U+2581 `▁`), then repeatedly joins
//! the adjacent pair whose joined text is a vocabulary piece with the highest score (leftmost on
//! a tie); a character that is no piece becomes its UTF-8 bytes as `<0xNN>` tokens. That is a
//! BPE whose merges are every split of every piece into two pieces, ranked by the joined piece's
//! score, with byte fallback: built here from the `tokenizers` crate's parts, so the result
//! also saves as a `tokenizer.json` that Hugging Face loaders read.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

/// SentencePiece's space marker.
pub const SPACE: char = '\u{2581}';

/// The merges that reproduce score-greedy joining: each way to cut a piece into two pieces,
/// best joined score first (then lower id, then shorter left part, for a stable order).
fn merges_by_score(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if index.contains_key(left) && index.contains_key(right) {
                ranked.push((scores.get(id).copied().unwrap_or(0.0), id, cut));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, cut)| {
            let (l, r) = tokens[id].split_at(cut);
            (l.to_string(), r.to_string())
        })
        .collect()
}

/// A `tokenizers` pipeline for a SentencePiece vocabulary: spaces to `▁` (with a leading `▁`
/// when `add_space_prefix`), score-ranked merges with byte fallback, and the reverse on decode.
/// Special and user-defined pieces are added by the caller, matched whole before this runs.
pub fn build(
    tokens: &[String],
    scores: &[f32],
    unk: Option<&str>,
    add_space_prefix: bool,
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges_by_score(tokens, scores))
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::model(path, format!("SentencePiece vocabulary: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);

    let space = SPACE.to_string();
    let replace = Replace::new(" ", space.as_str())
        .map_err(|e| Error::model(path, format!("tokenizer normalizer: {e}")))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(space.clone()).into());
    }
    normalizers.push(replace.into());
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| Error::model(path, format!("tokenizer normalizer: {e}")))?;

    let unspace = Replace::new(space.as_str(), " ")
        .map_err(|e| Error::model(path, format!("tokenizer decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: bytes for fallback, and pieces whose scores decide the joins.
    fn toy(add_space_prefix: bool) -> tokenizers::Tokenizer {
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        let mut scores = vec![0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
        }
        for (piece, score) in [
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("▁", -1.0),
            ("ab", -5.0),
            ("bc", -2.0),
            ("abc", -3.0),
            ("▁a", -4.0),
        ] {
            tokens.push(piece.into());
            scores.push(score);
        }
        build(
            &tokens,
            &scores,
            Some("<unk>"),
            add_space_prefix,
            Path::new("toy"),
        )
        .unwrap()
    }

    fn ids(tk: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        let enc = tk.encode(text, false).unwrap();
        enc.get_tokens().to_vec()
    }

    #[test]
    fn joins_the_best_scored_pair_first() {
        let tk = toy(false);
        // "bc" (-2) joins before "ab" (-5); then "a" + "bc" is the piece "abc".
        assert_eq!(ids(&tk, "abc"), vec!["abc"]);
        // "ab" is the only join; "ab" + "a" is no piece.
        assert_eq!(ids(&tk, "aba"), vec!["ab", "a"]);
        // "bc" wins over "ab" even on the right, and "c" + "bc" is no piece.
        assert_eq!(ids(&tk, "cabc"), vec!["c", "abc"]);
    }

    #[test]
    fn spaces_become_the_marker_and_unknown_characters_their_bytes() {
        let tk = toy(false);
        assert_eq!(ids(&tk, "b a"), vec!["b", "▁a"]);
        assert_eq!(ids(&tk, "aé"), vec!["a", "<0xC3>", "<0xA9>"]);
        let decoded = tk
            .decode(&tk.encode("b aé", false).unwrap().get_ids().to_vec(), false)
            .unwrap();
        assert_eq!(decoded, "b aé");
    }

    #[test]
    fn a_space_prefix_is_added_and_stripped_back() {
        let tk = toy(true);
        assert_eq!(ids(&tk, "a"), vec!["▁a"]);
        let enc = tk.encode("ab a", false).unwrap();
        assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), "ab a");
    }
}
