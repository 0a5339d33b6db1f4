//! Results of an eval: per-configuration statistics, paired comparisons, and the output
//! folder: `results.json` (flotilla's schema, docs/EVAL.md), `flow_results.json` (Flow
//! Benchmark Tools' `runs[].benchmark_outputs[].evaluations[]` layout), `cases.jsonl` (every
//! prompt, answer, retrieval hit and score) and `report.md`.
//!
//! Everything in `results.json` except its `timings` object is a pure function of the cases,
//! the models and the seed: the same inputs give byte-identical scores.

use crate::case_result::CaseResult;
use crate::error::{Error, Result};
use crate::judging::Scale;
use crate::stats::{compare_paired, holm, summarize, PairedComparison, Summary, MIN_PAIRED_N};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The axes that name a configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigKey {
    pub model: String,
    pub adapter: String,
    pub variant: String,
    pub task: String,
    pub language: String,
}

impl ConfigKey {
    fn of(r: &CaseResult) -> Self {
        Self {
            model: r.model.clone(),
            adapter: r.adapter.clone(),
            variant: r.variant.clone(),
            task: r.task.name().to_string(),
            language: r.language.clone(),
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} / {} / {} / {} / {}",
            self.model, self.adapter, self.variant, self.task, self.language
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigResult {
    #[serde(flatten)]
    pub key: ConfigKey,
    pub cases: usize,
    /// Cases that could not run (missing document, ...).
    pub errors: usize,
    /// Cases that ran but got no valid rating from any judge.
    pub invalid_ratings: usize,
    /// Structured variants: first replies that did not parse.
    pub parse_failures: usize,
    #[serde(flatten)]
    pub score: Summary,
    pub mean_geval: Option<f64>,
    pub mean_token_f1: f64,
    pub fabricated_urls: usize,
    pub fabricated_numbers: usize,
    pub mean_recall_at_k: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The axis that differs: `variant` or `adapter`.
    pub axis: String,
    pub a: ConfigKey,
    pub b: ConfigKey,
    #[serde(flatten)]
    pub stats: PairedComparison,
    /// `p_value` adjusted by Holm's method over every comparison of the report.
    #[serde(default)]
    pub p_holm: f64,
    /// Fewer than `stats::MIN_PAIRED_N` paired cases: no difference can be significant.
    #[serde(default)]
    pub underpowered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    #[serde(flatten)]
    pub key: ConfigKey,
    pub mean_latency_s: f64,
    pub mean_prompt_tokens: f64,
    pub mean_completion_tokens: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub flotilla_version: String,
    pub seed: u64,
    pub scale: Scale,
    pub configurations: Vec<ConfigResult>,
    pub comparisons: Vec<Comparison>,
    /// Per case and configuration: the score (null when invalid or failed).
    pub case_scores: Vec<CaseScore>,
    /// Wall-clock figures: the only part that differs between identical runs.
    pub timings: Vec<Timing>,
    /// One entry per trained adapter of a sweep (empty for `flotilla eval`); its `wall_s` and
    /// `workers` differ between identical runs.
    #[serde(default)]
    pub training: Vec<TrainingRun>,
}

/// How an adapter of a sweep was trained (`results.json` `training`, docs/EVAL.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRun {
    pub adapter: String,
    pub model: String,
    /// `single` (one worker), `sync` or `diloco`.
    pub mode: String,
    /// The workers that contributed.
    pub workers: Vec<String>,
    /// Optimizer steps (diloco: inner steps per worker, summed over rounds).
    pub steps: usize,
    /// Rounds applied by the coordinator (0 for `single`).
    pub rounds: usize,
    /// Bytes of gradients, deltas and adapters the workers uploaded.
    pub bytes_sent: u64,
    /// Bytes of global adapters the workers downloaded.
    pub bytes_received: u64,
    /// Tokens the workers trained on (all positions of their batches).
    #[serde(default)]
    pub tokens: u64,
    /// Training loss per step (sync, single: the final step only) or round (diloco).
    pub loss: Vec<LossPoint>,
    /// Held-out loss of the final adapter, where the data has a held-out split.
    pub heldout_loss: Option<f64>,
    /// Held-out loss of the adapter before training (LoRA B = 0: the base model's).
    #[serde(default)]
    pub heldout_loss_before: Option<f64>,
    pub wall_s: f64,
    /// The checkpoints kept in the coordinator's artifact store (the last `keep_checkpoints`).
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
}

/// The training loss after a round (the step it ends on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub round: Option<usize>,
    pub step: usize,
    pub loss: f64,
    /// The held-out loss of the adapter after this round, where it was measured.
    pub heldout_loss: Option<f64>,
}

/// A kept adapter checkpoint: a PEFT folder in the artifact store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub round: usize,
    pub step: usize,
    pub loss: Option<f64>,
    pub heldout_loss: Option<f64>,
    /// The sweep path of its folder (`adapters/<job>/round-NNNNN`).
    pub path: String,
    /// sha256 of its `adapter_model.safetensors`.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseScore {
    pub case_id: String,
    #[serde(flatten)]
    pub key: ConfigKey,
    pub score: Option<f64>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Aggregate case results. `baselines` name the reference value of each axis for the paired
/// comparisons (e.g. variant `query_first`, adapter `base`).
pub fn build_report(
    results: &[CaseResult],
    seed: u64,
    scale: Scale,
    baselines: &[(&str, &str)],
) -> Report {
    let mut groups: BTreeMap<ConfigKey, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        groups.entry(ConfigKey::of(r)).or_default().push(r);
    }
    let mut configurations = Vec::new();
    let mut timings = Vec::new();
    for (i, (key, rs)) in groups.iter().enumerate() {
        let scores: Vec<f64> = rs.iter().filter_map(|r| r.score).collect();
        configurations.push(ConfigResult {
            key: key.clone(),
            cases: rs.len(),
            errors: rs.iter().filter(|r| r.error.is_some()).count(),
            invalid_ratings: rs
                .iter()
                .filter(|r| r.error.is_none() && r.score.is_none())
                .count(),
            parse_failures: rs.iter().filter(|r| r.parse_error.is_some()).count(),
            score: summarize(&scores, seed.wrapping_add(i as u64)),
            mean_geval: mean(
                rs.iter()
                    .flat_map(|r| r.verdicts.iter().filter_map(|v| v.geval)),
            ),
            mean_token_f1: mean(
                rs.iter()
                    .filter(|r| r.error.is_none())
                    .map(|r| r.metrics.token_f1),
            )
            .unwrap_or(0.0),
            fabricated_urls: rs.iter().map(|r| r.metrics.fabricated_urls.len()).sum(),
            fabricated_numbers: rs.iter().map(|r| r.metrics.fabricated_numbers.len()).sum(),
            mean_recall_at_k: mean(rs.iter().filter_map(|r| r.recall_at_k)),
        });
        timings.push(Timing {
            key: key.clone(),
            mean_latency_s: mean(rs.iter().map(|r| r.latency_s)).unwrap_or(0.0),
            mean_prompt_tokens: mean(rs.iter().map(|r| r.prompt_tokens as f64)).unwrap_or(0.0),
            mean_completion_tokens: mean(rs.iter().map(|r| r.completion_tokens as f64))
                .unwrap_or(0.0),
        });
    }

    // Paired comparisons per (model, task, language), then pooled over tasks and languages
    // (task and language `all`), the seed-study's headline figures.
    let mut comparisons = paired(&groups, baselines, seed);
    let mut pooled: BTreeMap<ConfigKey, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        let mut k = ConfigKey::of(r);
        k.task = "all".into();
        k.language = "all".into();
        pooled.entry(k).or_default().push(r);
    }
    if pooled.len() < groups.len() {
        comparisons.extend(paired(&pooled, baselines, seed));
    }
    let ps: Vec<f64> = comparisons.iter().map(|c| c.stats.p_value).collect();
    for (c, p) in comparisons.iter_mut().zip(holm(&ps)) {
        c.p_holm = p;
        c.underpowered = c.stats.n < MIN_PAIRED_N;
    }
    let case_scores = results
        .iter()
        .map(|r| CaseScore {
            case_id: r.case_id.clone(),
            key: ConfigKey::of(r),
            score: r.score,
        })
        .collect();
    Report {
        training: Vec::new(),
        flotilla_version: env!("CARGO_PKG_VERSION").to_string(),
        seed,
        scale,
        configurations,
        comparisons,
        case_scores,
        timings,
    }
}

/// Each configuration against the one that differs only in one axis and holds that axis's
/// baseline value, over the cases both scored.
fn paired(
    groups: &BTreeMap<ConfigKey, Vec<&CaseResult>>,
    baselines: &[(&str, &str)],
    seed: u64,
) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for (axis, base) in baselines {
        let field = |k: &ConfigKey| -> String {
            if *axis == "variant" {
                k.variant.clone()
            } else {
                k.adapter.clone()
            }
        };
        for b in groups.keys() {
            if field(b) == *base {
                continue;
            }
            let other_axis_matches = |a: &ConfigKey| {
                if *axis == "variant" {
                    a.adapter == b.adapter
                } else {
                    a.variant == b.variant
                }
            };
            let a = groups.keys().find(|a| {
                field(a) == *base
                    && a.model == b.model
                    && a.task == b.task
                    && a.language == b.language
                    && other_axis_matches(a)
            });
            let Some(a) = a else { continue };
            let by_case = |k: &ConfigKey| -> BTreeMap<String, f64> {
                groups[k]
                    .iter()
                    .filter_map(|r| r.score.map(|s| (r.case_id.clone(), s)))
                    .collect()
            };
            let (sa, sb) = (by_case(a), by_case(b));
            let common: Vec<&String> = sa.keys().filter(|c| sb.contains_key(*c)).collect();
            let xa: Vec<f64> = common.iter().map(|c| sa[*c]).collect();
            let xb: Vec<f64> = common.iter().map(|c| sb[*c]).collect();
            if let Some(stats) = compare_paired(&xa, &xb, seed) {
                comparisons.push(Comparison {
                    axis: axis.to_string(),
                    a: a.clone(),
                    b: b.clone(),
                    stats,
                    // Set over the whole family in build_report.
                    p_holm: 1.0,
                    underpowered: true,
                });
            }
        }
    }
    comparisons
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Write the output folder; returns the files written.
pub fn write_outputs(dir: &Path, report: &Report, results: &[CaseResult]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    let p = dir.join("results.json");
    write(
        &p,
        (serde_json::to_string_pretty(report).map_err(|e| Error::file(&p, e))? + "\n").as_bytes(),
    )?;
    files.push(p);

    let p = dir.join("cases.jsonl");
    let mut lines = String::new();
    for r in results {
        lines.push_str(&serde_json::to_string(r).map_err(|e| Error::file(&p, e))?);
        lines.push('\n');
    }
    write(&p, lines.as_bytes())?;
    files.push(p);

    let p = dir.join("flow_results.json");
    write(
        &p,
        (serde_json::to_string_pretty(&flow_results(report, results))
            .map_err(|e| Error::file(&p, e))?
            + "\n")
            .as_bytes(),
    )?;
    files.push(p);

    let p = dir.join("report.md");
    write(&p, markdown(report).as_bytes())?;
    files.push(p);
    Ok(files)
}

/// Flow Benchmark Tools' layout: one run per configuration, one benchmark output per case,
/// one evaluation per judge-scored case, integer ratings on the run's scale.
fn flow_results(report: &Report, results: &[CaseResult]) -> serde_json::Value {
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

fn f(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}

/// The human report: one table of configurations, one of comparisons in the seed-study style.
pub fn markdown(report: &Report) -> String {
    let mut s = format!(
        "# flotilla eval report\n\nScale {}-{}, seed {}. Scores are judge ratings (mean of valid ratings per case); \
         CI is a 95% bootstrap interval of the mean.\n\n",
        report.scale.min, report.scale.max, report.seed
    );
    s.push_str("| model | adapter | variant | task | lang | n | mean | std | 95% CI | invalid | errors | parse fail | G-Eval | F1 | fab. URLs | fab. numbers | recall@k |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &report.configurations {
        let k = &c.key;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | [{}, {}] | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            k.model, k.adapter, k.variant, k.task, k.language, c.score.n, f(c.score.mean), f(c.score.std),
            f(c.score.ci_low), f(c.score.ci_high), c.invalid_ratings, c.errors, c.parse_failures,
            c.mean_geval.map(f).unwrap_or("-".into()), f(c.mean_token_f1), c.fabricated_urls, c.fabricated_numbers,
            c.mean_recall_at_k.map(f).unwrap_or("-".into()),
        ));
    }
    if !report.comparisons.is_empty() {
        s.push_str(&format!(
            "\n## Paired comparisons\n\nDelta in scale points with its 95% paired-bootstrap CI; p from a paired sign-flip test, \
             and adjusted by Holm's method over the {} comparisons of this report. A comparison on fewer than {MIN_PAIRED_N} \
             cases cannot be significant whatever the data and is marked *too few cases*.\n\n\
             | comparison | held fixed | model / task / lang | n | mean a -> b | delta [95% CI] | change | p | p (Holm) |\n|---|---|---|---|---|---|---|---|---|\n",
            report.comparisons.len()
        ));
        for c in &report.comparisons {
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
            s.push_str(&format!(
                "| {b} vs {a} | {fixed} | {} / {} / {} | {}{} | {} -> {} | {:+.2} [{:+.2}, {:+.2}] | {pct} | {:.3} | {:.3} |\n",
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
            ));
        }
        let few = report.comparisons.iter().filter(|c| c.underpowered).count();
        if few > 0 {
            s.push_str(&format!(
                "\n**{few} of {} comparisons have fewer than {MIN_PAIRED_N} paired cases**: add cases (or datasets) before reading them.\n",
                report.comparisons.len()
            ));
        }
    }
    if !report.training.is_empty() {
        s.push_str(&training_markdown(&report.training));
    }
    s.push_str("\n## Timings\n\n| configuration | mean latency (s) | prompt tokens | completion tokens |\n|---|---|---|---|\n");
    for t in &report.timings {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} |\n",
            t.key.label(),
            t.mean_latency_s,
            t.mean_prompt_tokens,
            t.mean_completion_tokens
        ));
    }
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
