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
        context_recall: None,
        truncation: None,
        parse_error: None,
        parse_retried: false,
        parse_failed: false,
        sample: 0,
        context: String::new(),
        retry_prompt_tokens: 0,
        retry_completion_tokens: 0,
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

/// `n` cases answered by model `smollm2`, each judged by `judge` with `rate(i, f1)`, where the
/// case's token F1 against its reference runs 0..1 over the cases.
fn judged_cells(n: usize, judge: &str, rate: impl Fn(usize, f64) -> f64) -> Vec<CaseResult> {
    use flotilla_contract::judging::Verdict;
    (0..n)
        .flat_map(|i| {
            ["query_first", "query_last"].map(|variant| {
                let f1 = ((i * 7 + variant.len()) % n) as f64 / (n - 1) as f64;
                let rating = rate(i, f1);
                let mut r = case(i, variant, rating);
                r.model = "smollm2".into();
                r.reference_answer = Some("ref".into());
                r.metrics.token_f1 = f1;
                r.metrics.exact_match = f1 > 0.9;
                r.verdicts = vec![Verdict {
                    judge: judge.into(),
                    rating: Some(rating),
                    geval: Some(rating),
                    explanation: String::new(),
                    raw: String::new(),
                    error: None,
                    context_cut: None,
                }];
                r
            })
        })
        .collect()
}

#[test]
fn a_planted_judge_that_barely_varies_and_grades_itself_is_warned_about() {
    // The quickstart's judge: the model under test, rating almost everything 5.
    let results = judged_cells(12, "smollm2", |i, _| if i == 3 { 1.0 } else { 5.0 });
    let report = build_report(&results, 1, Scale::default(), &[("variant", "query_first")]);
    let check = &report.judges[0];
    assert_eq!(check.judge, "smollm2");
    assert_eq!(check.histogram[5], 22, "{check:?}");
    assert_eq!(check.judges_itself, vec!["smollm2".to_string()]);
    let w = report.warnings.join("\n");
    assert!(
        w.contains("barely varies: 22 of its 24 ratings are 5"),
        "{w}"
    );
    assert!(w.contains("is the model under test (smollm2)"), "{w}");
    assert!(w.contains("disagrees with the references"), "{w}");
    let md = markdown(&report);
    assert!(
        md.contains("> **Warning:** judge `smollm2` barely varies"),
        "{md}"
    );
    assert!(md.contains("## Judge sanity check"), "{md}");
}

#[test]
fn a_sensible_judge_is_not_warned_about() {
    // Another model, whose ratings follow the answers' agreement with the references.
    let results = judged_cells(12, "qwen-judge", |_, f1| (10.0 * f1).round());
    let report = build_report(&results, 1, Scale::default(), &[("variant", "query_first")]);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let check = &report.judges[0];
    let f1 = check
        .agreement
        .iter()
        .find(|a| a.metric == "token_f1")
        .unwrap();
    assert_eq!(f1.n, 24);
    assert!(f1.spearman.unwrap() > 0.9, "{check:?}");
    assert!(!markdown(&report).contains("Warning"));

    // The same spread, but against the references: it disagrees.
    let results = judged_cells(12, "qwen-judge", |_, f1| (10.0 * (1.0 - f1)).round());
    let report = build_report(&results, 1, Scale::default(), &[("variant", "query_first")]);
    let w = report.warnings.join("\n");
    assert!(
        w.contains("`qwen-judge` disagrees with the references"),
        "{w}"
    );
    assert!(
        !w.contains("barely varies") && !w.contains("model under test"),
        "{w}"
    );
}

#[test]
fn unparsed_answers_are_failures_and_every_metric_is_aggregated() {
    let mut results = judged_cells(8, "qwen-judge", |_, f1| (10.0 * f1).round());
    // Two structured answers that never parsed: not judged, the scale's minimum, no F1.
    for r in results
        .iter_mut()
        .filter(|r| r.variant == "query_last")
        .take(2)
    {
        r.parse_failed = true;
        r.verdicts.clear();
        r.score = Some(0.0);
        r.metrics.token_f1 = 0.0;
        r.metrics.fabricated_urls = vec!["http://x.invalid".into()];
        r.retry_completion_tokens = 10;
    }
    let report = build_report(&results, 1, Scale::default(), &[("variant", "query_first")]);
    let last = report
        .configurations
        .iter()
        .find(|c| c.key.variant == "query_last")
        .unwrap();
    assert_eq!(last.unparsed, 2);
    assert_eq!(
        last.metrics["geval"].n, 8,
        "unparsed answers count at the minimum"
    );
    assert_eq!(last.metrics["fabricated_url_rate"].mean, 0.25);
    for m in [
        "judge",
        "geval",
        "token_f1",
        "exact_match",
        "fabricated_number_rate",
    ] {
        let s = &last.metrics[m];
        assert!(s.ci_low <= s.mean && s.mean <= s.ci_high, "{m}: {s:?}");
        assert!(
            report
                .comparisons
                .iter()
                .any(|c| c.metric == m && c.b.variant == "query_last"),
            "a paired comparison of {m}"
        );
    }
    assert!(
        !last.metrics.contains_key("recall_at_k"),
        "no case has gold passages"
    );
    assert_eq!(
        last.metrics["judge"], last.score,
        "the judge metric is the score"
    );
    let t = report
        .timings
        .iter()
        .find(|t| t.key.variant == "query_last")
        .unwrap();
    assert_eq!(t.mean_retry_completion_tokens, 2.5);
    let md = markdown(&report);
    assert!(md.contains("## Reference metrics"), "{md}");
    assert!(
        md.contains("| fabricated_url_rate | query_last vs query_first"),
        "{md}"
    );
}

#[test]
fn several_samples_of_a_case_count_as_one_case() {
    // Six cases, three samples each: the baseline's samples score i, i+1, i+2 (mean i + 1);
    // the other variant's i + 2, i + 3, i + 4 (mean i + 3).
    let mut results = Vec::new();
    for i in 0..6 {
        for s in 0..3 {
            for (variant, lift) in [("query_first", 0.0), ("query_last", 2.0)] {
                let mut r = case(i, variant, i as f64 + s as f64 + lift);
                r.sample = s;
                results.push(r);
            }
        }
    }
    let report = build_report(&results, 3, Scale::default(), &[("variant", "query_first")]);
    let first = &report.configurations[0];
    assert_eq!((first.cases, first.answers), (6, 18));
    assert_eq!(first.score.n, 6, "the case is the unit: {first:?}");
    assert!((first.score.mean - 3.5).abs() < 1e-12, "{first:?}");
    let c = report
        .comparisons
        .iter()
        .find(|c| c.metric == "judge" && c.a.task == "rag")
        .unwrap();
    assert_eq!(c.stats.n, 6);
    assert!((c.stats.delta - 2.0).abs() < 1e-12, "{c:?}");
    assert!(!c.underpowered);
}
