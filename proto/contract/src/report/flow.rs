//! `flow_results.json`: Flow Benchmark Tools' layout of a report.

use super::{ConfigKey, Report};
use crate::case_result::CaseResult;

/// Flow Benchmark Tools' layout: one run per configuration, one benchmark output per case,
/// one evaluation per judge-scored case, integer ratings on the run's scale.
pub(super) fn flow_results(report: &Report, results: &[CaseResult]) -> serde_json::Value {
    let mut runs = Vec::new();
    for c in &report.configurations {
        let rs: Vec<&CaseResult> = results
            .iter()
            .filter(|r| ConfigKey::of(r) == c.key)
            .collect();
        let outputs: Vec<serde_json::Value> = rs
            .iter()
            .map(|r| {
                let ratings: Vec<Option<i64>> = r.verdicts.iter().map(|v| v.rating.map(|x| x.round() as i64)).collect();
                let valid: Vec<i64> = ratings.iter().flatten().copied().collect();
                let rating = (!valid.is_empty()).then(|| (valid.iter().sum::<i64>() as f64 / valid.len() as f64).round() as i64);
                serde_json::json!({
                    "info": {"query": r.query, "reference_answer": r.reference_answer, "labels": [r.task.name(), r.language]},
                    "repeats": 1,
                    "evaluations": [{
                        "evaluator": r.verdicts.iter().map(|v| v.judge.clone()).collect::<Vec<_>>().join("+"),
                        "query": r.query,
                        "reference_answer": r.reference_answer.clone().unwrap_or_default(),
                        "test_answer": r.answer,
                        "evaluation": r.verdicts.iter().map(|v| v.explanation.clone()).collect::<Vec<_>>(),
                        "ratings": ratings,
                        "rating": rating,
                        "rating_min": report.scale.min,
                        "rating_max": report.scale.max,
                        "extras": {"case_id": r.case_id, "error": r.error},
                    }],
                    "average_rating": rating.map(|x| x as f64).unwrap_or(0.0),
                })
            })
            .collect();
        let ratings: Vec<Option<f64>> = rs.iter().map(|r| r.score).collect();
        let valid: Vec<f64> = ratings.iter().flatten().copied().collect();
        let mean = (!valid.is_empty()).then(|| valid.iter().sum::<f64>() / valid.len() as f64);
        // The sample std, as results.json and report.md give it.
        let std = mean.map(|_| crate::stats::std(&valid));
        // Flow's cut-offs on its 1-10 scale (poor <= 4.5 < fair <= 7.5 < good), placed at the
        // same fractions of this report's scale.
        let (lo, hi) = (report.scale.min as f64, report.scale.max as f64);
        let cut = |x: f64| lo + (hi - lo) * (x - 1.0) / 9.0;
        let (mut poor, mut fair, mut good) = (0, 0, 0);
        for v in &valid {
            match *v {
                x if x <= cut(4.5) => poor += 1,
                x if x <= cut(7.5) => fair += 1,
                _ => good += 1,
            }
        }
        runs.push(serde_json::json!({
            "agent_name": c.key.label(),
            "benchmark_outputs": outputs,
            "metrics": {
                "num_benchmarks": rs.len(),
                "ratings": ratings,
                "num_valid_ratings": valid.len(),
                "mean_rating": mean,
                "std_dev": std,
                "histogram": {"invalid": rs.len() - valid.len(), "poor": poor, "fair": fair, "good": good},
            }
        }));
    }
    serde_json::json!({ "runs": runs })
}
