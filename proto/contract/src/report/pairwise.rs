//! Pairwise judging's results: per case, which of two variants' answers the judge preferred
//! (asked twice, positions swapped), and per pair of variants the win rate of the challenger
//! with a bootstrap CI and a sign-flip p-value, the case as the unit.

use crate::stats::{compare_paired, summarize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which answer won: `a` (the baseline variant's), `b`, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairChoice {
    A,
    B,
    Tie,
}

/// One case compared by one judge (`pairwise.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairVerdict {
    pub case_id: String,
    pub judge: String,
    /// The baseline variant and the one compared with it.
    pub a: String,
    pub b: String,
    pub adapter: String,
    pub model: String,
    pub task: String,
    pub language: String,
    #[serde(default)]
    pub sample: usize,
    /// The choice when `a`'s answer was shown first, and when `b`'s was.
    pub a_first: Option<PairChoice>,
    pub b_first: Option<PairChoice>,
    /// Both askings agreeing, else a tie (the position decided); an unparsed answer loses
    /// without asking.
    pub outcome: PairChoice,
    /// The judge's replies.
    pub raw: Vec<String>,
    pub error: Option<String>,
}

/// A pair of variants under one judge, pooled over tasks and languages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairwise {
    pub judge: String,
    pub model: String,
    pub adapter: String,
    pub a: String,
    pub b: String,
    /// Cases compared (a case's samples count once).
    pub n: usize,
    pub wins_b: usize,
    pub wins_a: usize,
    pub ties: usize,
    /// Comparisons whose two askings disagreed (counted as ties): the judge's position bias.
    pub inconsistent: usize,
    pub errors: usize,
    /// (wins of b + half the ties) / comparisons.
    pub win_rate_b: f64,
    /// Mean per case of +1 (b won), 0 (tie), -1 (a won), with its 95% bootstrap CI.
    pub net_b: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided sign-flip p of `net_b` against 0.
    pub p_value: f64,
}

fn score(c: PairChoice) -> f64 {
    match c {
        PairChoice::A => -1.0,
        PairChoice::B => 1.0,
        PairChoice::Tie => 0.0,
    }
}

/// One summary per (judge, model, adapter, a, b), in that order.
pub fn summarize_pairs(verdicts: &[PairVerdict], seed: u64) -> Vec<Pairwise> {
    type Key = (String, String, String, String, String);
    let mut groups: BTreeMap<Key, Vec<&PairVerdict>> = BTreeMap::new();
    for v in verdicts {
        let key = (
            v.judge.clone(),
            v.model.clone(),
            v.adapter.clone(),
            v.a.clone(),
            v.b.clone(),
        );
        groups.entry(key).or_default().push(v);
    }
    let mut out = Vec::new();
    for (i, ((judge, model, adapter, a, b), vs)) in groups.into_iter().enumerate() {
        let ok: Vec<&&PairVerdict> = vs.iter().filter(|v| v.error.is_none()).collect();
        let count = |c: PairChoice| ok.iter().filter(|v| v.outcome == c).count();
        // Per case (over tasks and languages: case ids with their task and language).
        let mut per_case: BTreeMap<(String, String, String), (f64, usize)> = BTreeMap::new();
        for v in &ok {
            let e = per_case
                .entry((v.task.clone(), v.language.clone(), v.case_id.clone()))
                .or_default();
            e.0 += score(v.outcome);
            e.1 += 1;
        }
        let scores: Vec<f64> = per_case.values().map(|(s, n)| s / *n as f64).collect();
        let s = summarize(&scores, seed.wrapping_add(i as u64));
        let zeros = vec![0.0; scores.len()];
        let p = compare_paired(&zeros, &scores, seed.wrapping_add(i as u64))
            .map(|c| c.p_value)
            .unwrap_or(1.0);
        let (wins_b, wins_a, ties) = (
            count(PairChoice::B),
            count(PairChoice::A),
            count(PairChoice::Tie),
        );
        let asked = wins_a + wins_b + ties;
        out.push(Pairwise {
            judge,
            model,
            adapter,
            a,
            b,
            n: scores.len(),
            wins_b,
            wins_a,
            ties,
            inconsistent: ok
                .iter()
                .filter(|v| matches!((v.a_first, v.b_first), (Some(x), Some(y)) if x != y))
                .count(),
            errors: vs.len() - ok.len(),
            win_rate_b: if asked == 0 {
                f64::NAN
            } else {
                (wins_b as f64 + ties as f64 / 2.0) / asked as f64
            },
            net_b: s.mean,
            ci_low: s.ci_low,
            ci_high: s.ci_high,
            p_value: p,
        });
    }
    out
}

/// The report's pairwise section.
pub fn pairwise_markdown(pairs: &[Pairwise]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Pairwise comparisons\n\nEach case judged twice with the answers' positions swapped; a win needs both askings to agree (a disagreement is a tie, counted as *inconsistent*). Net = mean per case of +1 (b better), 0, -1 (a better), with its 95% bootstrap CI; p from a sign-flip test.\n\n\
         | judge | model / adapter | b vs a | n | b wins | a wins | ties (inconsistent) | b win rate | net [95% CI] | p |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in pairs {
        s.push_str(&format!(
            "| {} | {} / {} | {} vs {} | {} | {} | {} | {} ({}) | {:.2} | {:+.2} [{:+.2}, {:+.2}] | {:.3} |\n",
            p.judge, p.model, p.adapter, p.b, p.a, p.n, p.wins_b, p.wins_a, p.ties, p.inconsistent,
            p.win_rate_b, p.net_b, p.ci_low, p.ci_high, p.p_value
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(case: usize, a_first: PairChoice, b_first: PairChoice) -> PairVerdict {
        PairVerdict {
            case_id: format!("c{case}"),
            judge: "j".into(),
            a: "query_first".into(),
            b: "query_last".into(),
            adapter: "base".into(),
            model: "m".into(),
            task: "rag".into(),
            language: "en".into(),
            sample: 0,
            a_first: Some(a_first),
            b_first: Some(b_first),
            outcome: if a_first == b_first {
                a_first
            } else {
                PairChoice::Tie
            },
            raw: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn wins_need_both_askings_and_disagreements_are_ties() {
        use PairChoice::*;
        let mut vs: Vec<PairVerdict> = (0..8).map(|i| v(i, B, B)).collect();
        vs.push(v(8, A, B)); // position decided: a tie
        vs.push(v(9, A, A));
        let p = &summarize_pairs(&vs, 1)[0];
        assert_eq!(
            (p.n, p.wins_b, p.wins_a, p.ties, p.inconsistent),
            (10, 8, 1, 1, 1)
        );
        assert!((p.win_rate_b - 0.85).abs() < 1e-12, "{p:?}");
        assert!((p.net_b - 0.7).abs() < 1e-12, "{p:?}");
        assert!(p.ci_low > 0.0 && p.p_value < 0.05, "{p:?}");
        assert!(pairwise_markdown(&[p.clone()])
            .contains("| query_last vs query_first | 10 | 8 | 1 | 1 (1) | 0.85 |"));
    }
}
