//! Cutting document text into overlapping chunks for retrieval: by characters, at sentence
//! ends where possible, in English and Japanese alike (`.`, `!`, `?`, `。`, `！`, `？`, and
//! line breaks end a sentence).

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

/// Chunks of at most `size` characters, each beginning with up to `overlap` characters of
/// the previous chunk's last sentences. A sentence longer than `size` is cut at `size`.
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    let size = size.max(1);
    let overlap = overlap.min(size / 2);
    let chars: Vec<char> = text.chars().collect();
    // Pieces no longer than `size`: sentences, with over-long ones cut.
    let mut pieces = Vec::new();
    for (s, e) in sentences(&chars) {
        let mut a = s;
        while e - a > size {
            pieces.push((a, a + size));
            a += size - overlap;
        }
        pieces.push((a, e));
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i].0;
        let mut end = pieces[i].1;
        let mut j = i + 1;
        while j < pieces.len() && pieces[j].1 - start <= size {
            end = pieces[j].1;
            j += 1;
        }
        let body: String = chars[start..end].iter().collect();
        if !body.trim().is_empty() {
            chunks.push(Chunk {
                index: chunks.len(),
                start,
                end,
                text: body.trim().to_string(),
            });
        }
        if j >= pieces.len() {
            break;
        }
        // Step back over whole trailing pieces that fit in the overlap.
        let mut k = j;
        while k > i + 1 && end - pieces[k - 1].0 <= overlap {
            k -= 1;
        }
        i = k;
    }
    chunks
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
