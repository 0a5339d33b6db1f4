//! Lexical retrieval: BM25 over chunks, and reciprocal rank fusion with the dense ranking.
//!
//! Terms are found per character run, so one text may mix scripts: a run of letters and
//! digits in Latin (or any non-CJK) script is one lowercased word; a run of CJK characters
//! (kanji, hiragana, katakana, hangul, CJK punctuation excluded) gives its overlapping
//! character bigrams (a one-character run gives that character). Full-width ASCII letters and
//! digits are read as their ASCII forms, so `ＡＰＴ` and `apt` are one term.

use std::collections::HashMap;

/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalisation.
pub const B: f32 = 0.75;
/// Reciprocal rank fusion's constant (Cormack et al.): a rank r contributes 1 / (K + r).
pub const RRF_K: f32 = 60.0;

/// Whether `c` belongs to a CJK run (indexed by character bigrams).
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x309F     // hiragana
        | 0x30A0..=0x30FF   // katakana
        | 0x31F0..=0x31FF   // katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width katakana
        | 0xAC00..=0xD7AF   // hangul syllables
        | 0x20000..=0x2FA1F // CJK extensions B-F, compatibility supplement
    ) || c == '々'
        || c == 'ー'
}

/// Full-width ASCII (U+FF01..U+FF5E) as ASCII; other characters unchanged.
fn narrow(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// The BM25 terms of `text`: lowercased words outside CJK runs, character bigrams inside.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut cjk: Vec<char> = Vec::new();
    let flush_word = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    };
    let flush_cjk = |cjk: &mut Vec<char>, out: &mut Vec<String>| {
        match cjk.len() {
            0 => {}
            1 => out.push(cjk[0].to_string()),
            _ => out.extend(cjk.windows(2).map(|w| w.iter().collect::<String>())),
        }
        cjk.clear();
    };
    for c in text.chars().map(narrow) {
        if is_cjk(c) {
            flush_word(&mut word, &mut out);
            cjk.push(c);
        } else if c.is_alphanumeric() {
            flush_cjk(&mut cjk, &mut out);
            word.extend(c.to_lowercase());
        } else {
            flush_word(&mut word, &mut out);
            flush_cjk(&mut cjk, &mut out);
        }
    }
    flush_word(&mut word, &mut out);
    flush_cjk(&mut cjk, &mut out);
    out
}

/// Term counts of one text and its length in terms.
#[derive(Debug, Clone, Default)]
pub struct TermCounts {
    pub counts: HashMap<String, u32>,
    pub len: usize,
}

impl TermCounts {
    pub fn of(text: &str) -> Self {
        let t = terms(text);
        let mut counts = HashMap::new();
        for term in &t {
            *counts.entry(term.clone()).or_insert(0) += 1;
        }
        Self {
            counts,
            len: t.len(),
        }
    }
}

/// BM25 scores of `query` against each of `docs` (the collection is `docs` itself: document
/// frequencies and the mean length are taken over it). Lucene's idf,
/// ln(1 + (N - df + 0.5) / (df + 0.5)), so no score is negative; a document sharing no term
/// with the query scores 0. A term repeated in the query counts once per occurrence.
pub fn scores(query: &str, docs: &[&TermCounts]) -> Vec<f32> {
    let n = docs.len();
    if n == 0 {
        return Vec::new();
    }
    let avg = (docs.iter().map(|d| d.len).sum::<usize>() as f32 / n as f32).max(1.0);
    let q = terms(query);
    let mut out = vec![0f32; n];
    let mut idf_cache: HashMap<&str, f32> = HashMap::new();
    for term in &q {
        let idf = *idf_cache.entry(term.as_str()).or_insert_with(|| {
            let df = docs.iter().filter(|d| d.counts.contains_key(term)).count() as f32;
            (1.0 + (n as f32 - df + 0.5) / (df + 0.5)).ln()
        });
        for (s, d) in out.iter_mut().zip(docs) {
            if let Some(&tf) = d.counts.get(term) {
                let tf = tf as f32;
                let norm = K1 * (1.0 - B + B * d.len as f32 / avg);
                *s += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
    }
    out
}

/// Indices of `scores` best first (ties: lower index first), leaving out those for which
/// `keep` is false.
pub fn ranking(scores: &[f32], keep: impl Fn(f32) -> bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| keep(scores[i])).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// Reciprocal rank fusion: each item's score is the sum over the rankings it appears in of
/// 1 / (RRF_K + rank), rank counted from 1. Returns one score per item (`n` items); an item
/// in no ranking scores 0.
pub fn rrf(n: usize, rankings: &[&[usize]]) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for r in rankings {
        for (rank, &i) in r.iter().enumerate() {
            if i < n {
                out[i] += 1.0 / (RRF_K + rank as f32 + 1.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_terms_are_lowercased_words() {
        assert_eq!(
            terms("The apt-get tool, APT 2.6!"),
            vec!["the", "apt", "get", "tool", "apt", "2", "6"]
        );
    }

    #[test]
    fn japanese_runs_become_character_bigrams_and_latin_words_stay_words() {
        assert_eq!(
            terms("東京都のsudoコマンド。猫"),
            vec!["東京", "京都", "都の", "sudo", "コマ", "マン", "ンド", "猫"]
        );
        // Full-width letters are their ASCII words.
        assert_eq!(terms("ＰＡＭの設定"), vec!["pam", "の設", "設定"]);
        assert!(terms("。、「」").is_empty());
    }

    #[test]
    fn bm25_ranks_the_document_with_the_rare_query_terms_first() {
        let corpus = [
            "The cat sat on the mat.",
            "Passwords are stored in /etc/shadow as salted hashes.",
            "The dog sat on the log. The dog barked.",
            "Shadow passwords: the shadow file is readable by root only.",
        ];
        let counts: Vec<TermCounts> = corpus.iter().map(|t| TermCounts::of(t)).collect();
        let refs: Vec<&TermCounts> = counts.iter().collect();
        let s = scores("where are shadow passwords stored?", &refs);
        let order = ranking(&s, |x| x > 0.0);
        assert_eq!(order, vec![1, 3], "{s:?}");
        assert_eq!(s[0], 0.0);
        assert_eq!(s[2], 0.0);
        // The repeated rare term raises a document's score.
        let s = scores("dog", &refs);
        assert_eq!(ranking(&s, |x| x > 0.0), vec![2]);
    }

    #[test]
    fn bm25_finds_japanese_by_bigrams() {
        let corpus = [
            "パスワードはシャドウファイルに保存されます。",
            "ネットワークの設定はinterfacesファイルで行います。",
            "猫がマットの上に座った。",
        ];
        let counts: Vec<TermCounts> = corpus.iter().map(|t| TermCounts::of(t)).collect();
        let refs: Vec<&TermCounts> = counts.iter().collect();
        let s = scores("ネットワークを設定するには？", &refs);
        assert_eq!(ranking(&s, |x| x > 0.0)[0], 1, "{s:?}");
        let s = scores("パスワードはどこに保存されますか", &refs);
        assert_eq!(ranking(&s, |x| x > 0.0)[0], 0, "{s:?}");
    }

    #[test]
    fn rrf_rewards_agreement_between_rankings() {
        // Dense: 0, 1, 2, 3. BM25: 2, 1 (0 and 3 share no term).
        let dense = [0usize, 1, 2, 3];
        let bm25 = [2usize, 1];
        let f = rrf(4, &[&dense, &bm25]);
        let order = ranking(&f, |_| true);
        // 1: 1/62 + 1/62; 2: 1/63 + 1/61; 0: 1/61; 3: 1/64.
        assert_eq!(order, vec![2, 1, 0, 3], "{f:?}");
        assert!((f[0] - 1.0 / 61.0).abs() < 1e-7);
        assert!((f[1] - 2.0 / 62.0).abs() < 1e-7);
    }
}
