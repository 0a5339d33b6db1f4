//! Cutting document text into overlapping chunks for retrieval, at sentence ends where
//! possible, in English and Japanese alike (`.`, `!`, `?`, `。`, `！`, `？`, and line breaks end
//! a sentence).
//!
//! Sizes count **tokens of a tokenizer** ([`TokenSpans`]): the embedding model's own for
//! retrieval ([`chunk_tokens`]), so a chunk never runs past what the embedder reads, whatever
//! the language (an 800-character Japanese chunk is about 530 MiniLM tokens, twice its
//! 256-token window). [`chunk_text`] counts characters, for callers without a tokenizer.

use serde::{Deserialize, Serialize};

/// One piece of a document; `start`/`end` are character offsets into the document text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '\n')
}

/// Sentences as (start, end) char offsets, each including its terminator and following spaces.
fn sentences(chars: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        if is_sentence_end(chars[i]) {
            let mut end = i + 1;
            // Keep closing quotes/brackets and trailing whitespace with the sentence.
            while end < chars.len()
                && (chars[end].is_whitespace()
                    || matches!(chars[end], '"' | '\'' | '」' | '』' | ')' | '）'))
            {
                end += 1;
            }
            // "3.5" or "e.g." inside a sentence: a '.' followed directly by a letter or digit
            // does not end it.
            if chars[i] == '.' && end == i + 1 && end < chars.len() && chars[end].is_alphanumeric()
            {
                i += 1;
                continue;
            }
            out.push((start, end));
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    if start < chars.len() {
        out.push((start, chars.len()));
    }
    out
}

/// A tokenizer as the chunker sees it: where each token of a text lies.
pub trait TokenSpans {
    /// The `(start, end)` character offsets of `text`'s tokens in order, without the special
    /// tokens a model adds around a sequence.
    fn spans(&self, text: &str) -> Result<Vec<(usize, usize)>, String>;
}

/// Every character is a token: sizes in characters.
pub struct CharTokens;

impl TokenSpans for CharTokens {
    fn spans(&self, text: &str) -> Result<Vec<(usize, usize)>, String> {
        Ok((0..text.chars().count()).map(|i| (i, i + 1)).collect())
    }
}

/// Chunks of at most `size` characters, each beginning with up to `overlap` characters of
/// the previous chunk's last sentences. A sentence longer than `size` is cut at `size`.
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    // Characters cannot fail to tokenize.
    chunk_tokens(text, size, overlap, &CharTokens).unwrap_or_default()
}

/// Chunks of at most `size` tokens of `tok`, each beginning with up to `overlap` tokens of
/// the previous chunk's last sentences (`overlap` is at most `size / 2`). A sentence longer
/// than `size` is cut at token boundaries into pieces that overlap by `overlap` tokens. Every
/// chunk's text, tokenized again on its own, is checked to be within `size` (and shortened
/// token by token if a tokenizer counts a piece differently out of context).
pub fn chunk_tokens(
    text: &str,
    size: usize,
    overlap: usize,
    tok: &dyn TokenSpans,
) -> Result<Vec<Chunk>, String> {
    let size = size.max(1);
    let overlap = overlap.min(size / 2);
    let chars: Vec<char> = text.chars().collect();
    // Token start offsets, ascending.
    let mut starts: Vec<usize> = tok.spans(text)?.into_iter().map(|(s, _)| s).collect();
    starts.sort_unstable();
    // Tokens beginning in [a, b).
    let count = |a: usize, b: usize| -> usize {
        starts.partition_point(|&s| s < b) - starts.partition_point(|&s| s < a)
    };
    // Pieces no longer than `size` tokens: sentences, with over-long ones cut.
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    for (s, e) in sentences(&chars) {
        let first = starts.partition_point(|&x| x < s);
        let last = starts.partition_point(|&x| x < e);
        if last - first <= size {
            pieces.push((s, e));
            continue;
        }
        let mut p = first;
        loop {
            let a = if p == first { s } else { starts[p] };
            if p + size >= last {
                pieces.push((a, e));
                break;
            }
            pieces.push((a, starts[p + size]));
            p += size - overlap;
        }
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i].0;
        let mut end = pieces[i].1;
        let mut j = i + 1;
        while j < pieces.len() && count(start, pieces[j].1) <= size {
            end = pieces[j].1;
            j += 1;
        }
        let body: String = chars[start..end].iter().collect();
        let trimmed = body.trim();
        if !trimmed.is_empty() {
            let lead = body.chars().count() - body.trim_start().chars().count();
            let (text, len) = within(trimmed, size, tok)?;
            chunks.push(Chunk {
                index: chunks.len(),
                start: start + lead,
                end: start + lead + len,
                text,
            });
        }
        if j >= pieces.len() {
            break;
        }
        // Step back over whole trailing pieces that fit in the overlap.
        let mut k = j;
        while k > i + 1 && count(pieces[k - 1].0, end) <= overlap {
            k -= 1;
        }
        i = k;
    }
    Ok(chunks)
}

/// `text` shortened, if need be, until `tok` counts at most `size` tokens in it on its own;
/// with its length in characters.
fn within(text: &str, size: usize, tok: &dyn TokenSpans) -> Result<(String, usize), String> {
    let mut text = text.to_string();
    loop {
        let spans = tok.spans(&text)?;
        if spans.len() <= size {
            let n = text.chars().count();
            return Ok((text, n));
        }
        // Cut where token `size` begins (there are more than `size` tokens).
        let cut = spans[size].0;
        let shorter: String = text.chars().take(cut).collect();
        let shorter = shorter.trim_end().to_string();
        if shorter.is_empty() || shorter.chars().count() >= text.chars().count() {
            return Err(format!(
                "the tokenizer counts more than {size} tokens in a piece it cannot shorten"
            ));
        }
        text = shorter;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_chunks_end_at_sentences_and_overlap() {
        let text = "Rhinos are large. They eat grass. Some live in Asia. Others live in Africa. \
                    Poaching threatens them.";
        let chunks = chunk_text(text, 40, 20);
        assert!(chunks.len() >= 3, "{chunks:?}");
        for c in &chunks {
            assert!(c.text.chars().count() <= 40, "{c:?}");
            assert!(
                c.text.ends_with('.'),
                "chunk does not end at a sentence: {c:?}"
            );
        }
        // Consecutive chunks share a sentence.
        assert!(chunks[1].start < chunks[0].end, "{chunks:?}");
        // Everything is covered.
        assert_eq!(chunks[0].start, 0);
        assert_eq!(chunks.last().unwrap().end, text.chars().count());
    }

    #[test]
    fn japanese_sentences_split_at_the_ideographic_full_stop() {
        let text = "東京は日本の首都です。富士山は日本で一番高い山です。京都には古い寺がたくさんあります。";
        let chunks = chunk_text(text, 30, 0);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(
            chunks[0].text,
            "東京は日本の首都です。富士山は日本で一番高い山です。"
        );
        assert_eq!(chunks[1].text, "京都には古い寺がたくさんあります。");
    }

    #[test]
    fn decimals_do_not_end_sentences_and_long_sentences_are_cut() {
        let text = "It went extinct 16.3 million years ago. ".to_string() + &"x".repeat(250);
        let chunks = chunk_text(&text, 100, 10);
        assert!(
            chunks[0].text.contains("16.3 million years ago."),
            "{chunks:?}"
        );
        assert!(chunks.iter().all(|c| c.text.chars().count() <= 100));
        let covered: usize = chunks.last().unwrap().end;
        assert_eq!(covered, text.chars().count());
    }
}
