//! Deterministic metrics beside the judge: exact and regex match, token F1 (characters for
//! Japanese), and fabrication checks: URLs and numbers in the answer that appear nowhere in
//! the documents or the prompt.

pub use flotilla_contract::case_result::Metrics;
use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Lowercase, drop punctuation and symbols, collapse whitespace.
fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Tokens for F1: words for space-separated languages, characters for Japanese.
fn tokens(text: &str, language: &str) -> Vec<String> {
    let n = normalize(text);
    if language == "ja" {
        n.chars()
            .filter(|c| !c.is_whitespace())
            .map(String::from)
            .collect()
    } else {
        n.split_whitespace().map(String::from).collect()
    }
}

/// SQuAD-style F1 over token multisets.
pub fn token_f1(answer: &str, reference: &str, language: &str) -> f64 {
    let a = tokens(answer, language);
    let r = tokens(reference, language);
    if a.is_empty() || r.is_empty() {
        return if a.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &a {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / a.len() as f64;
    let rc = common as f64 / r.len() as f64;
    2.0 * p * rc / (p + rc)
}

fn url_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"(?i)\b(?:https?://|www\.)[^\s<>"'\)\]\}]+"#).expect("url regex")
    })
}

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\d+(?:[.,]\d+)*").expect("number regex"))
}

fn clean_url(u: &str) -> String {
    u.trim_end_matches(['.', ',', ';', ':', '!', '?'])
        .trim_end_matches('/')
        .to_lowercase()
}

/// URLs in `answer` that do not occur in `sources` (the documents and the prompt).
pub fn fabricated_urls(answer: &str, sources: &str) -> Vec<String> {
    let known: Vec<String> = url_re()
        .find_iter(sources)
        .map(|m| clean_url(m.as_str()))
        .collect();
    let mut out: Vec<String> = url_re()
        .find_iter(answer)
        .map(|m| clean_url(m.as_str()))
        .filter(|u| !known.iter().any(|k| k == u || k.starts_with(u.as_str())))
        .collect();
    out.dedup();
    out
}

fn norm_number(s: &str) -> String {
    let s = s.replace(',', "");
    match s.split_once('.') {
        Some((i, f)) => {
            let f = f.trim_end_matches('0');
            if f.is_empty() {
                i.to_string()
            } else {
                format!("{i}.{f}")
            }
        }
        None => s,
    }
}

/// Numbers in `answer` that occur nowhere in `sources`. Whole numbers below 10 are ignored:
/// they are list markers and counts far more often than facts.
pub fn fabricated_numbers(answer: &str, sources: &str) -> Vec<String> {
    let known: std::collections::HashSet<String> = number_re()
        .find_iter(sources)
        .map(|m| norm_number(m.as_str()))
        .collect();
    let mut out = Vec::new();
    for m in number_re().find_iter(answer) {
        let n = norm_number(m.as_str());
        let small = n.parse::<u64>().map(|v| v < 10).unwrap_or(false);
        if !small && !known.contains(&n) && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// All metrics for one answer.
pub fn score(
    answer: &str,
    reference: Option<&str>,
    pattern: Option<&Regex>,
    sources: &str,
    language: &str,
) -> Metrics {
    Metrics {
        exact_match: reference
            .map(|r| normalize(r) == normalize(answer))
            .unwrap_or(false),
        regex_match: pattern.map(|p| p.is_match(answer)),
        token_f1: reference
            .map(|r| token_f1(answer, r, language))
            .unwrap_or(0.0),
        fabricated_urls: fabricated_urls(answer, sources),
        fabricated_numbers: fabricated_numbers(answer, sources),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_counts_words_in_english_and_characters_in_japanese() {
        assert_eq!(token_f1("Paris", "Paris.", "en"), 1.0);
        let f = token_f1("the capital is Paris", "Paris", "en");
        assert!((f - 0.4).abs() < 1e-9, "{f}");
        assert_eq!(token_f1("London", "Paris", "en"), 0.0);
        let f = token_f1("東京です", "東京", "ja");
        assert!((f - 2.0 * 0.5 * 1.0 / 1.5).abs() < 1e-9, "{f}");
    }

    #[test]
    fn urls_and_numbers_not_in_the_sources_are_fabricated() {
        let sources = "See https://example.org/rhino for more. Floridaceras died 16.3 million years ago; 1,200 remain.";
        let answer = "Per https://example.org/rhino, and www.fake-source.com/x. It was 16.30 million years; 1200 remain, 45 zoos, 3 species.";
        assert_eq!(
            fabricated_urls(answer, sources),
            vec!["www.fake-source.com/x"]
        );
        assert_eq!(fabricated_numbers(answer, sources), vec!["45"]);
        let m = score(
            "16.3 million years",
            Some("16.3 million years."),
            Some(&Regex::new(r"16\.3").unwrap()),
            sources,
            "en",
        );
        assert!(m.exact_match && m.regex_match == Some(true) && m.token_f1 == 1.0);
    }
}
