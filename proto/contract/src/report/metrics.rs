//! The metrics a report aggregates, and each one's value for one case.

use crate::case_result::CaseResult;
use crate::dataset::Task;
use crate::judging::Scale;

/// Every metric a configuration reports, in table order:
/// - `judge`: the jury's mean valid rating (the scale's minimum for an unparsed answer);
/// - `geval`: the probability-weighted rating of local judges (likewise);
/// - `token_f1`, `exact_match` (0/1): against the reference answer, where the case has one;
/// - `regex_match` (0/1): where the case gives `answer_regex`;
/// - `recall_at_k`: share of gold passages retrieved, where the case names them;
/// - `fabricated_url_rate`, `fabricated_number_rate` (0/1 per answer, so the mean is the share
///   of answers with at least one URL / number found in neither the documents nor the prompt).
pub const METRICS: [&str; 9] = [
    "judge",
    "geval",
    "token_f1",
    "exact_match",
    "regex_match",
    "recall_at_k",
    "context_recall",
    "fabricated_url_rate",
    "fabricated_number_rate",
];

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The value of `metric` for one case; `None` when the case does not have it (it failed to
/// run, has no reference, no regex, no gold passages, or is a criteria case with no answer).
pub fn case_metric(r: &CaseResult, metric: &str, scale: Scale) -> Option<f64> {
    if r.error.is_some() {
        return None;
    }
    let generated = r.task != Task::Criteria;
    let has_reference = generated && r.reference_answer.is_some();
    match metric {
        "judge" => r.score,
        "geval" => {
            if r.parse_failed {
                return Some(scale.min as f64);
            }
            let g: Vec<f64> = r.verdicts.iter().filter_map(|v| v.geval).collect();
            (!g.is_empty()).then(|| g.iter().sum::<f64>() / g.len() as f64)
        }
        "token_f1" => has_reference.then_some(r.metrics.token_f1),
        "exact_match" => has_reference.then(|| flag(r.metrics.exact_match)),
        "regex_match" => r.metrics.regex_match.filter(|_| generated).map(flag),
        "recall_at_k" => r.recall_at_k,
        "context_recall" => r.context_recall,
        "fabricated_url_rate" => generated.then(|| flag(!r.metrics.fabricated_urls.is_empty())),
        "fabricated_number_rate" => {
            generated.then(|| flag(!r.metrics.fabricated_numbers.is_empty()))
        }
        _ => None,
    }
}
