//! Results of an eval: per-configuration statistics, paired comparisons, and the output
//! folder: `results.json` (flotilla's schema, docs/EVAL.md), `flow_results.json` (Flow
//! Benchmark Tools' `runs[].benchmark_outputs[].evaluations[]` layout), `cases.jsonl` (every
//! prompt, answer, retrieval hit and score), `report.md` and `report.html` (`html.rs`: the
//! same tables with charts, the settings and every answer, in one self-contained page).
//!
//! Everything in `results.json` except its `timings` object is a pure function of the cases,
//! the models and the seed: the same inputs give byte-identical scores.

mod flow;
pub mod html;
mod judge_check;
mod markdown;
mod metrics;
mod pairwise;

pub use judge_check::{Agreement, JudgeCheck};
pub use markdown::{human_bytes, markdown};
pub use metrics::{case_metric, METRICS};
pub use pairwise::{pairwise_markdown, summarize_pairs, PairChoice, PairVerdict, Pairwise};

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
    /// Distinct cases.
    pub cases: usize,
    /// Answers: cases x samples (`generation.samples`).
    #[serde(default)]
    pub answers: usize,
    /// Answers that could not run (missing document, ...).
    pub errors: usize,
    /// Cases that ran but got no valid rating from any judge.
    pub invalid_ratings: usize,
    /// Structured variants: first replies that did not parse.
    pub parse_failures: usize,
    /// Structured variants: answers that did not parse after the retry either, scored as
    /// failures (the scale's minimum; an empty answer for the reference metrics).
    #[serde(default)]
    pub unparsed: usize,
    /// The judge score (the jury's mean valid rating per case), as `metrics.judge`.
    #[serde(flatten)]
    pub score: Summary,
    pub mean_geval: Option<f64>,
    pub mean_token_f1: Option<f64>,
    pub mean_recall_at_k: Option<f64>,
    /// The same over the chunks that fit the context budget (what the model saw).
    #[serde(default)]
    pub mean_context_recall: Option<f64>,
    /// Every metric with its mean, sample std and 95% bootstrap CI over the cases that have
    /// it, keyed by the names of [`METRICS`]; rates are shares of answers (0-1).
    #[serde(default)]
    pub metrics: BTreeMap<String, Summary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric compared (one of [`METRICS`]; `judge` is the judge score).
    #[serde(default = "judge_metric")]
    pub metric: String,
    /// The axis that differs: `variant` or `adapter`.
    pub axis: String,
    pub a: ConfigKey,
    pub b: ConfigKey,
    #[serde(flatten)]
    pub stats: PairedComparison,
    /// `p_value` adjusted by Holm's method over the report's comparisons of the same metric.
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
    /// Structured variants' retries: their tokens, per case of the configuration.
    #[serde(default)]
    pub mean_retry_prompt_tokens: f64,
    #[serde(default)]
    pub mean_retry_completion_tokens: f64,
}

fn judge_metric() -> String {
    "judge".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub flotilla_version: String,
    pub seed: u64,
    pub scale: Scale,
    /// Plain warnings about this report's numbers (a judge that barely varies, grades its own
    /// answers or disagrees with the reference metrics), also at the top of report.md.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The judge sanity check: per judge, its ratings' distribution and agreement with the
    /// reference metrics.
    #[serde(default)]
    pub judges: Vec<JudgeCheck>,
    pub configurations: Vec<ConfigResult>,
    pub comparisons: Vec<Comparison>,
    /// Pairwise judging's variant comparisons (`--pairwise`; per case in pairwise.jsonl).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairwise: Vec<Pairwise>,
    /// Per case and configuration: the score (null when invalid or failed).
    pub case_scores: Vec<CaseScore>,
    /// Wall-clock figures: the only part that differs between identical runs.
    pub timings: Vec<Timing>,
    /// One entry per trained adapter of a sweep (empty for `flotilla eval`); its `wall_s` and
    /// `workers` differ between identical runs.
    #[serde(default)]
    pub training: Vec<TrainingRun>,
    /// Where these results came from (docs/EVAL.md "Provenance"); set by the command that
    /// writes them. It differs between identical runs (times, machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::provenance::Provenance>,
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
    /// Distributed training: each worker's own training loss in this round (its mean token
    /// loss), by worker id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<String, f64>,
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
    #[serde(default)]
    pub sample: usize,
    #[serde(flatten)]
    pub key: ConfigKey,
    pub score: Option<f64>,
}

/// A metric's value per case of a configuration (by case id): the mean over the case's
/// samples, so a case drawn several times still counts once in CIs and comparisons.
fn per_case(rs: &[&CaseResult], metric: &str, scale: Scale) -> BTreeMap<String, f64> {
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in rs {
        if let Some(v) = case_metric(r, metric, scale) {
            let e = acc.entry(r.case_id.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    acc.into_iter()
        .map(|(k, (sum, n))| (k, sum / n as f64))
        .collect()
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
        let mut metrics = BTreeMap::new();
        for (m, name) in METRICS.iter().enumerate() {
            let xs: Vec<f64> = per_case(rs, name, scale).into_values().collect();
            if !xs.is_empty() {
                // The judge keeps the seed it always had; the other metrics draw their own.
                let s = seed.wrapping_add(i as u64).wrapping_add(7919 * m as u64);
                metrics.insert(name.to_string(), summarize(&xs, s));
            }
        }
        let scores: Vec<f64> = per_case(rs, "judge", scale).into_values().collect();
        let mean_of = |name: &str| metrics.get(name).map(|s: &Summary| s.mean);
        configurations.push(ConfigResult {
            key: key.clone(),
            cases: rs
                .iter()
                .map(|r| r.case_id.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            answers: rs.len(),
            errors: rs.iter().filter(|r| r.error.is_some()).count(),
            invalid_ratings: rs
                .iter()
                .filter(|r| r.error.is_none() && r.score.is_none())
                .count(),
            parse_failures: rs.iter().filter(|r| r.parse_error.is_some()).count(),
            unparsed: rs.iter().filter(|r| r.parse_failed).count(),
            score: summarize(&scores, seed.wrapping_add(i as u64)),
            mean_geval: mean_of("geval"),
            mean_token_f1: mean_of("token_f1"),
            mean_recall_at_k: mean_of("recall_at_k"),
            mean_context_recall: mean_of("context_recall"),
            metrics,
        });
        let per_case =
            |f: &dyn Fn(&CaseResult) -> usize| mean(rs.iter().map(|r| f(r) as f64)).unwrap_or(0.0);
        timings.push(Timing {
            key: key.clone(),
            mean_latency_s: mean(rs.iter().map(|r| r.latency_s)).unwrap_or(0.0),
            mean_prompt_tokens: per_case(&|r| r.prompt_tokens),
            mean_completion_tokens: per_case(&|r| r.completion_tokens),
            mean_retry_prompt_tokens: per_case(&|r| r.retry_prompt_tokens),
            mean_retry_completion_tokens: per_case(&|r| r.retry_completion_tokens),
        });
    }

    // Paired comparisons per (model, task, language), then pooled over tasks and languages
    // (task and language `all`), the seed-study's headline figures.
    let mut comparisons = paired(&groups, baselines, seed, scale);
    let mut pooled: BTreeMap<ConfigKey, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        let mut k = ConfigKey::of(r);
        k.task = "all".into();
        k.language = "all".into();
        pooled.entry(k).or_default().push(r);
    }
    if pooled.len() < groups.len() {
        comparisons.extend(paired(&pooled, baselines, seed, scale));
    }
    // Holm within each metric's family of comparisons.
    for name in METRICS {
        let idx: Vec<usize> = (0..comparisons.len())
            .filter(|&i| comparisons[i].metric == name)
            .collect();
        let ps: Vec<f64> = idx.iter().map(|&i| comparisons[i].stats.p_value).collect();
        for (&i, p) in idx.iter().zip(holm(&ps)) {
            comparisons[i].p_holm = p;
            comparisons[i].underpowered = comparisons[i].stats.n < MIN_PAIRED_N;
        }
    }
    let judges = judge_check::check(results, scale);
    let mut warnings: Vec<String> = judges.iter().flat_map(|j| j.warnings.clone()).collect();
    let few = comparisons
        .iter()
        .filter(|c| c.metric == "judge" && c.underpowered)
        .count();
    if few > 0 {
        warnings.push(format!(
            "{few} of the judge score's comparisons have fewer than {MIN_PAIRED_N} paired cases: \
             none of them can be significant; add cases before reading them"
        ));
    }
    let case_scores = results
        .iter()
        .map(|r| CaseScore {
            case_id: r.case_id.clone(),
            sample: r.sample,
            key: ConfigKey::of(r),
            score: r.score,
        })
        .collect();
    Report {
        training: Vec::new(),
        provenance: None,
        flotilla_version: env!("CARGO_PKG_VERSION").to_string(),
        seed,
        scale,
        warnings,
        judges,
        configurations,
        comparisons,
        pairwise: Vec::new(),
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
    scale: Scale,
) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for metric in METRICS {
        comparisons.extend(paired_on(groups, baselines, seed, scale, metric));
    }
    comparisons
}

/// [`paired`] on one metric.
fn paired_on(
    groups: &BTreeMap<ConfigKey, Vec<&CaseResult>>,
    baselines: &[(&str, &str)],
    seed: u64,
    scale: Scale,
    metric: &str,
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
            let by_case = |k: &ConfigKey| per_case(&groups[k], metric, scale);
            let (sa, sb) = (by_case(a), by_case(b));
            let common: Vec<&String> = sa.keys().filter(|c| sb.contains_key(*c)).collect();
            let xa: Vec<f64> = common.iter().map(|c| sa[*c]).collect();
            let xb: Vec<f64> = common.iter().map(|c| sb[*c]).collect();
            if let Some(stats) = compare_paired(&xa, &xb, seed) {
                comparisons.push(Comparison {
                    metric: metric.to_string(),
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
        (serde_json::to_string_pretty(&flow::flow_results(report, results))
            .map_err(|e| Error::file(&p, e))?
            + "\n")
            .as_bytes(),
    )?;
    files.push(p);

    let p = dir.join("report.md");
    write(&p, markdown(report).as_bytes())?;
    files.push(p);

    let p = dir.join("report.html");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "results".into());
    let run = html::Run::new(&name, &dir.display().to_string(), report, results);
    write(
        &p,
        html::page(&html::title_for(report, &name), &[run], None).as_bytes(),
    )?;
    files.push(p);
    Ok(files)
}
