//! `report.md`: the human report.

use super::{Comparison, Report, TrainingRun};
use crate::stats::{Summary, MIN_PAIRED_N};

fn f(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(f).unwrap_or_else(|| "-".into())
}

/// A metric's mean with its CI, or `-`.
fn with_ci(s: Option<&Summary>) -> String {
    match s {
        Some(s) if s.n > 0 => format!("{} [{}, {}]", f(s.mean), f(s.ci_low), f(s.ci_high)),
        _ => "-".into(),
    }
}

/// The human report: the warnings and the judge sanity check first, then one table of
/// configurations, one of reference metrics, and the comparisons in the seed-study style.
pub fn markdown(report: &Report) -> String {
    let mut s = format!(
        "# flotilla eval report\n\nScale {}-{}, seed {}. Scores are judge ratings (mean of valid ratings per case); \
         CI is a 95% bootstrap interval of the mean.\n\n",
        report.scale.min, report.scale.max, report.seed
    );
    for w in &report.warnings {
        s.push_str(&format!("> **Warning:** {w}\n>\n"));
    }
    if !report.warnings.is_empty() {
        s.push('\n');
    }
    s.push_str(&judges_markdown(report));
    s.push_str("## Configurations\n\nAn unparsed answer (a structured reply that did not parse after the retry) is a failure: it is not judged, it counts at the scale's minimum.\n\n");
    s.push_str("| model | adapter | variant | task | lang | n | judge mean | std | 95% CI | G-Eval | invalid | errors | parse fail (first) | unparsed |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &report.configurations {
        let k = &c.key;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | [{}, {}] | {} | {} | {} | {} | {} |\n",
            k.model,
            k.adapter,
            k.variant,
            k.task,
            k.language,
            c.score.n,
            f(c.score.mean),
            f(c.score.std),
            f(c.score.ci_low),
            f(c.score.ci_high),
            opt(c.mean_geval),
            c.invalid_ratings,
            c.errors,
            c.parse_failures,
            c.unparsed,
        ));
    }
    s.push_str("\n## Reference metrics\n\nMean [95% CI] over the cases that have each metric (`-`: none do). Exact and regex match and the fabricated rates are shares of answers (0-1); token F1 is on words (characters for Japanese). recall@k is over the top-k chunks retrieved; in context, over those that fit the context budget.\n\n");
    s.push_str("| configuration | token F1 | exact match | regex match | recall@k | in context | fabricated URLs | fabricated numbers |\n|---|---|---|---|---|---|---|---|\n");
    for c in &report.configurations {
        let m = |name: &str| with_ci(c.metrics.get(name));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.key.label(),
            m("token_f1"),
            m("exact_match"),
            m("regex_match"),
            m("recall_at_k"),
            m("context_recall"),
            m("fabricated_url_rate"),
            m("fabricated_number_rate"),
        ));
    }
    let judged: Vec<&Comparison> = report
        .comparisons
        .iter()
        .filter(|c| c.metric == "judge")
        .collect();
    if !judged.is_empty() {
        s.push_str(&format!(
            "\n## Paired comparisons\n\nDelta in scale points with its 95% paired-bootstrap CI; p from a paired sign-flip test, \
             and adjusted by Holm's method over the {} comparisons of the judge score in this report. A comparison on fewer than {MIN_PAIRED_N} \
             cases cannot be significant whatever the data and is marked *too few cases*.\n\n\
             | comparison | held fixed | model / task / lang | n | mean a -> b | delta [95% CI] | change | p | p (Holm) |\n|---|---|---|---|---|---|---|---|---|\n",
            judged.len()
        ));
        for c in &judged {
            s.push_str(&comparison_row(c, false));
        }
        let few = judged.iter().filter(|c| c.underpowered).count();
        if few > 0 {
            s.push_str(&format!(
                "\n**{few} of {} comparisons have fewer than {MIN_PAIRED_N} paired cases**: add cases (or datasets) before reading them.\n",
                judged.len()
            ));
        }
    }
    let others: Vec<&Comparison> = report
        .comparisons
        .iter()
        .filter(|c| c.metric != "judge")
        .collect();
    if !others.is_empty() {
        s.push_str(
            "\n## Paired comparisons on the other metrics\n\nAs above, Holm's adjustment within each metric.\n\n\
             | metric | comparison | held fixed | model / task / lang | n | mean a -> b | delta [95% CI] | change | p | p (Holm) |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &others {
            s.push_str(&comparison_row(c, true));
        }
    }
    s.push_str(&super::pairwise_markdown(&report.pairwise));
    if !report.training.is_empty() {
        s.push_str(&training_markdown(&report.training));
    }
    s.push_str("\n## Timings\n\nTokens per case; a structured retry's tokens are counted apart.\n\n| configuration | mean latency (s) | prompt tokens | completion tokens | retry prompt tokens | retry completion tokens |\n|---|---|---|---|---|---|\n");
    for t in &report.timings {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            t.key.label(),
            t.mean_latency_s,
            t.mean_prompt_tokens,
            t.mean_completion_tokens,
            t.mean_retry_prompt_tokens,
            t.mean_retry_completion_tokens
        ));
    }
    s
}

/// One row of a comparisons table (with the metric's column when `metric`).
fn comparison_row(c: &Comparison, metric: bool) -> String {
    // The other factor is held fixed: name it, so rows of the same pair stay apart.
    let (a, b, fixed) = if c.axis == "variant" {
        (
            &c.a.variant,
            &c.b.variant,
            format!("adapter {}", c.b.adapter),
        )
    } else {
        (
            &c.a.adapter,
            &c.b.adapter,
            format!("variant {}", c.b.variant),
        )
    };
    let pct = c
        .stats
        .percent_change
        .map(|p| format!("{p:+.1}%"))
        .unwrap_or_else(|| "n/a".into());
    format!(
        "| {}{b} vs {a} | {fixed} | {} / {} / {} | {}{} | {} -> {} | {:+.2} [{:+.2}, {:+.2}] | {pct} | {:.3} | {:.3} |\n",
        if metric { format!("{} | ", c.metric) } else { String::new() },
        c.b.model,
        c.b.task,
        c.b.language,
        c.stats.n,
        if c.underpowered { " (too few cases)" } else { "" },
        f(c.stats.mean_a),
        f(c.stats.mean_b),
        c.stats.delta,
        c.stats.ci_low,
        c.stats.ci_high,
        c.stats.p_value,
        c.p_holm
    )
}

/// The judge sanity check: per judge, its ratings' histogram, spread and agreement with the
/// reference metrics.
fn judges_markdown(report: &Report) -> String {
    if report.judges.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "## Judge sanity check\n\nRatings per whole value of the scale, their spread, and the rank (Spearman) correlation of each judge's ratings with the reference metrics on the cases that have them (a judge that reads the answers should rise with them).\n\n\
         | judge | ratings | invalid | histogram | mean | std | most common | agreement |\n|---|---|---|---|---|---|---|---|\n",
    );
    for j in &report.judges {
        let hist = j
            .histogram
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{}: {c}", i as u32 + report.scale.min))
            .collect::<Vec<_>>()
            .join(", ");
        let agreement = j
            .agreement
            .iter()
            .map(|a| {
                format!(
                    "{} {} (n {})",
                    a.metric,
                    a.spearman
                        .map(|r| format!("{r:+.2}"))
                        .unwrap_or_else(|| "-".into()),
                    a.n
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            j.judge,
            j.ratings,
            j.invalid,
            if hist.is_empty() { "-".into() } else { hist },
            opt(j.mean),
            opt(j.std),
            j.top_share
                .map(|t| format!("{:.0}%", 100.0 * t))
                .unwrap_or_else(|| "-".into()),
            if agreement.is_empty() {
                "-".into()
            } else {
                agreement
            },
        ));
    }
    s.push('\n');
    s
}

/// The report's training section: one row per trained adapter, then its loss by step/round.
fn training_markdown(runs: &[TrainingRun]) -> String {
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let mut s = String::from(
        "\n## Training\n\n| adapter | model | mode | workers | steps | rounds | sent | received | final loss | held-out loss (before) | wall (s) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in runs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            t.adapter,
            t.model,
            t.mode,
            t.workers.join(", "),
            t.steps,
            t.rounds,
            human_bytes(t.bytes_sent),
            human_bytes(t.bytes_received),
            opt(t.loss.last().map(|l| l.loss)),
            format!("{} ({})", opt(t.heldout_loss), opt(t.heldout_loss_before)),
            t.wall_s
        ));
    }
    for t in runs.iter().filter(|t| !t.checkpoints.is_empty()) {
        s.push_str(&format!(
            "\n{} on {}, checkpoints kept:\n\n| round | step | loss | held-out | folder | adapter sha256 |\n|---|---|---|---|---|---|\n",
            t.adapter, t.model
        ));
        for k in &t.checkpoints {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                k.round,
                k.step,
                opt(k.loss),
                opt(k.heldout_loss),
                k.path,
                &k.sha256[..k.sha256.len().min(12)]
            ));
        }
    }
    for t in runs.iter().filter(|t| t.loss.len() > 1) {
        s.push_str(&format!(
            "\n{} on {} ({}), loss by round:\n\n| round | step | loss | held-out |\n|---|---|---|---|\n",
            t.adapter, t.model, t.mode
        ));
        for l in &t.loss {
            s.push_str(&format!(
                "| {} | {} | {:.4} | {} |\n",
                l.round.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                l.step,
                l.loss,
                opt(l.heldout_loss)
            ));
        }
    }
    s
}

/// Bytes as B / KiB / MiB / GiB.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
