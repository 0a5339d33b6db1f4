//! The report's statistics: comparisons are adjusted by Holm's method over the whole report
//! and marked when they have too few cases to be significant; flow_results.json uses the same
//! (sample) standard deviation as results.json and histogram cut-offs placed on the report's
//! scale.

use flotilla_contract::case_result::{CaseResult, Metrics};
use flotilla_contract::dataset::Task;
use flotilla_contract::judging::Scale;
use flotilla_contract::report::{build_report, markdown, write_outputs};
use flotilla_contract::stats::MIN_PAIRED_N;

fn case(id: usize, variant: &str, score: f64) -> CaseResult {
    CaseResult {
        case_id: format!("c{id}"),
        task: Task::Rag,
        language: "en".into(),
        model: "m".into(),
        adapter: "base".into(),
        variant: variant.into(),
        query: "q".into(),
        reference_answer: None,
        prompt: "p".into(),
        raw_answer: "a".into(),
        answer: "a".into(),
        hits: Vec::new(),
        recall_at_k: None,
        truncation: None,
        parse_error: None,
        parse_retried: false,
        verdicts: Vec::new(),
        score: Some(score),
        metrics: Metrics::default(),
        prompt_tokens: 1,
        completion_tokens: 1,
        latency_s: 0.1,
        error: None,
    }
}

/// `n` cases of the baseline variant scored `base`, and of `other` scored `base + lift`
/// (plus a little per-case noise so the bootstrap is not degenerate).
fn cell(n: usize, other: &str, base: f64, lift: f64) -> Vec<CaseResult> {
    (0..n)
        .flat_map(|i| {
            let wobble = (i % 3) as f64 * 0.1;
            [
                case(i, "query_first", base + wobble),
                case(i, other, base + wobble + lift),
            ]
        })
        .collect()
}

#[test]
fn comparisons_are_holm_adjusted_and_small_ones_are_marked() {
    let mut results = cell(12, "query_last", 5.0, 2.0);
    // A second, tiny comparison in another language.
    for mut r in cell(MIN_PAIRED_N - 1, "structured", 5.0, 1.0) {
        r.language = "ja".into();
        r.case_id = format!("ja-{}", r.case_id);
        results.push(r);
    }
    let report = build_report(
        &results,
        7,
        Scale { min: 1, max: 10 },
        &[("variant", "query_first")],
    );
    let big = report
        .comparisons
        .iter()
        .find(|c| c.b.variant == "query_last" && c.b.language == "en")
        .unwrap();
    let small = report
        .comparisons
        .iter()
        .find(|c| c.b.variant == "structured" && c.b.language == "ja")
        .unwrap();
    assert!(!big.underpowered && small.underpowered);
    let m = report.comparisons.len() as f64;
    assert!(m >= 2.0);
    for c in &report.comparisons {
        assert!(
            c.p_holm >= c.stats.p_value && c.p_holm <= (m * c.stats.p_value).min(1.0) + 1e-12,
            "{c:?}"
        );
    }
    assert!(
        big.p_holm < 0.05,
        "twelve cases all improving by 2: {big:?}"
    );
    let md = markdown(&report);
    assert!(md.contains("(too few cases)"), "{md}");
    assert!(md.contains("p (Holm)"), "{md}");
    assert!(md.contains("+2.00 ["), "the delta in scale points: {md}");
}

#[test]
fn flow_results_use_the_sample_std_and_cut_offs_on_the_reports_scale() {
    // Scale 1-5: Flow's 1-10 cut-offs 4.5 and 7.5 fall at 2.56 and 3.89.
    let results = vec![
        case(0, "query_first", 2.0),
        case(1, "query_first", 3.0),
        case(2, "query_first", 4.0),
        case(3, "query_first", 5.0),
    ];
    let report = build_report(&results, 1, Scale { min: 1, max: 5 }, &[]);
    let dir = std::env::temp_dir().join(format!("flotilla-report-{}", std::process::id()));
    write_outputs(&dir, &report, &results).unwrap();
    let flow: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("flow_results.json")).unwrap())
            .unwrap();
    let metrics = &flow["runs"][0]["metrics"];
    assert_eq!(metrics["histogram"]["poor"], 1, "{metrics}");
    assert_eq!(metrics["histogram"]["fair"], 1, "{metrics}");
    assert_eq!(metrics["histogram"]["good"], 2, "{metrics}");
    let flow_std = metrics["std_dev"].as_f64().unwrap();
    let std = report.configurations[0].score.std;
    assert!((flow_std - std).abs() < 1e-12, "{flow_std} vs {std}");
    assert!(
        (std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12,
        "sample std of 2..5: {std}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
