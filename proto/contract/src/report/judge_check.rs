//! The judge sanity check every report carries: per judge, the distribution of its ratings,
//! their spread, whether it graded the model it is, and how its ratings agree with the
//! reference-based metrics on the cases that have them; with a plain warning for each sign
//! that its scores cannot be trusted.

use super::metrics::case_metric;
use crate::case_result::CaseResult;
use crate::judging::Scale;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The share of ratings one value may take before the judge is said to barely vary.
pub const TOP_SHARE_LIMIT: f64 = 0.8;
/// The std, as a share of the scale's range, below which the judge is said to barely vary.
pub const SPREAD_LIMIT: f64 = 0.05;
/// The rank correlation with the reference metrics below which the judge disagrees with them.
pub const AGREEMENT_LIMIT: f64 = 0.2;
/// The fewest ratings (or paired cases, for agreement) a check speaks on.
pub const MIN_CHECKED: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeCheck {
    pub judge: String,
    /// Valid ratings.
    pub ratings: usize,
    /// Verdicts without a valid rating.
    pub invalid: usize,
    /// Count of ratings per whole value of the scale, from its minimum (ratings rounded).
    pub histogram: Vec<usize>,
    pub mean: Option<f64>,
    /// Sample standard deviation of the ratings.
    pub std: Option<f64>,
    /// Share of the ratings that are the most common value.
    pub top_share: Option<f64>,
    /// The models under test this judge is (it graded their answers).
    pub judges_itself: Vec<String>,
    /// Spearman correlation of its ratings with each reference metric, over the cases that
    /// have both.
    pub agreement: Vec<Agreement>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub metric: String,
    pub n: usize,
    /// None when either side does not vary.
    pub spearman: Option<f64>,
}

/// A model name as it can be compared with a judge's: the file or folder name without its
/// extension, lower-cased (`models/SmolLM2.gguf` and `smollm2.gguf` are both `smollm2`).
fn stem(name: &str) -> String {
    let base = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name);
    let base = base.rsplit_once('.').map(|(s, _)| s).unwrap_or(base);
    base.to_lowercase()
}

/// Ranks (1-based, ties averaged).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|a, b| xs[*a].total_cmp(&xs[*b]));
    let mut out = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in &order[i..=j] {
            out[*k] = r;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation; None when either side is constant or there are under 3 pairs.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The reference metrics a judge's ratings should rise with.
const REFERENCE_METRICS: [&str; 3] = ["token_f1", "exact_match", "regex_match"];

/// One check per judge that gave a verdict in `results`, in name order.
pub fn check(results: &[CaseResult], scale: Scale) -> Vec<JudgeCheck> {
    // judge -> (case index, rating)
    let mut by_judge: BTreeMap<&str, Vec<(usize, Option<f64>)>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        for v in &r.verdicts {
            by_judge.entry(&v.judge).or_default().push((i, v.rating));
        }
    }
    by_judge
        .into_iter()
        .map(|(judge, verdicts)| one(judge, &verdicts, results, scale))
        .collect()
}

fn one(
    judge: &str,
    verdicts: &[(usize, Option<f64>)],
    results: &[CaseResult],
    scale: Scale,
) -> JudgeCheck {
    let valid: Vec<(usize, f64)> = verdicts
        .iter()
        .filter_map(|(i, r)| r.map(|r| (*i, r)))
        .collect();
    let ratings: Vec<f64> = valid.iter().map(|(_, r)| *r).collect();
    let width = (scale.max - scale.min + 1) as usize;
    let mut histogram = vec![0usize; width];
    for r in &ratings {
        let bin = (r.round() - scale.min as f64).clamp(0.0, (width - 1) as f64) as usize;
        histogram[bin] += 1;
    }
    let n = ratings.len();
    let mean = (n > 0).then(|| ratings.iter().sum::<f64>() / n as f64);
    let std = mean.map(|_| crate::stats::std(&ratings));
    let top = histogram.iter().copied().max().unwrap_or(0);
    let top_share = (n > 0).then(|| top as f64 / n as f64);
    let mut judges_itself: Vec<String> = valid
        .iter()
        .map(|(i, _)| &results[*i].model)
        .filter(|m| judge == "self" || stem(m) == stem(judge))
        .cloned()
        .collect();
    judges_itself.sort();
    judges_itself.dedup();
    let agreement: Vec<Agreement> = REFERENCE_METRICS
        .iter()
        .filter_map(|metric| {
            let pairs: Vec<(f64, f64)> = valid
                .iter()
                .filter_map(|(i, r)| case_metric(&results[*i], metric, scale).map(|m| (*r, m)))
                .collect();
            (!pairs.is_empty()).then(|| {
                let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
                Agreement {
                    metric: metric.to_string(),
                    n: pairs.len(),
                    spearman: spearman(&a, &b),
                }
            })
        })
        .collect();

    let mut warnings = Vec::new();
    let range = (scale.max - scale.min) as f64;
    if let (Some(std), Some(share)) = (std, top_share) {
        if n >= MIN_CHECKED && (share >= TOP_SHARE_LIMIT || std < SPREAD_LIMIT * range) {
            let mode = histogram
                .iter()
                .position(|c| *c == top)
                .map(|p| p as u32 + scale.min)
                .unwrap_or(scale.min);
            warnings.push(format!(
                "judge `{judge}` barely varies: {top} of its {n} ratings are {mode} (std {std:.2} on \
                 {scale}); its scores cannot tell configurations apart. Use a larger judge."
            ));
        }
    }
    if !judges_itself.is_empty() {
        warnings.push(format!(
            "judge `{judge}` is the model under test ({}): it grades its own answers. Use a \
             different, larger judge.",
            judges_itself.join(", ")
        ));
    }
    let checked: Vec<&Agreement> = agreement
        .iter()
        .filter(|a| a.n >= MIN_CHECKED && a.spearman.is_some())
        .collect();
    let best = checked
        .iter()
        .filter_map(|a| a.spearman.map(|s| (s, *a)))
        .max_by(|x, y| x.0.total_cmp(&y.0));
    if let Some((rho, a)) = best {
        if rho < AGREEMENT_LIMIT {
            warnings.push(format!(
                "judge `{judge}` disagrees with the references: its ratings' rank correlation \
                 with {} is {rho:+.2} over {} cases (below {AGREEMENT_LIMIT} with every \
                 reference metric); a judge that reads the answers should rate the ones that \
                 match the reference higher.",
                a.metric, a.n
            ));
        }
    }
    JudgeCheck {
        judge: judge.to_string(),
        ratings: n,
        invalid: verdicts.len() - n,
        histogram,
        mean,
        std,
        top_share,
        judges_itself,
        agreement,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_known_orders() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&a, &[5.0; 4]), None);
        // Ties take their average rank.
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn model_names_compare_by_stem() {
        assert_eq!(stem("models/SmolLM2.gguf"), stem("smollm2"));
        assert_ne!(stem("smollm2"), stem("qwen"));
    }
}
