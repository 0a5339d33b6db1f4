//! `flotilla report RESULTS_DIR...`: `report.html` for results written earlier (by `flotilla
//! eval`, `flotilla run` or `sweep results --out`), or one page comparing several runs: what
//! changed between them and, for each configuration they share, a paired test over the cases
//! both scored.

use crate::output::{print_json, OutputFormat};
use anyhow::{bail, Context};
use flotilla_contract::case_result::CaseResult;
use flotilla_contract::report::html::{compare, page, title_for, Run};
use flotilla_contract::report::Report;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Results folders (each with results.json and cases.jsonl); the first is the baseline
    /// the others are compared with.
    #[arg(required = true, value_name = "RESULTS_DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where to write the page. Default: RESULTS_DIR/report.html for one folder,
    /// ./flotilla-report.html for several.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The page's title.
    #[arg(long)]
    pub title: Option<String>,
    /// Seed of the comparisons' bootstrap and permutation tests.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A results folder as the page shows it; errors name the file and what is wrong.
fn read_run(dir: &Path) -> anyhow::Result<Run> {
    if !dir.is_dir() {
        bail!(
            "{}: not a results folder (no such directory)",
            dir.display()
        );
    }
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read it (a results folder has results.json)",
            path.display()
        )
    })?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{}: not flotilla's results.json", path.display()))?;
    let path = dir.join("cases.jsonl");
    let mut cases = Vec::new();
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let case: CaseResult = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a case result", path.display(), i + 1))?;
            cases.push(case);
        }
    }
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Run::new(&name, &dir.display().to_string(), &report, &cases))
}

pub fn run(a: Args, out: OutputFormat) -> anyhow::Result<()> {
    let runs = a
        .dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let comparison = (runs.len() > 1).then(|| compare(&runs, a.seed));
    let target = match (&a.out, a.dirs.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, [one]) => one.join("report.html"),
        (None, _) => PathBuf::from("flotilla-report.html"),
    };
    let title = a.title.clone().unwrap_or_else(|| match runs.as_slice() {
        [one] => title_for(&one.report, &one.name),
        many => format!(
            "flotilla: {} runs compared ({})",
            many.len(),
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    let html = page(&title, &runs, comparison.as_ref());
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--out {}: cannot create its folder", target.display()))?;
    }
    std::fs::write(&target, html)
        .with_context(|| format!("--out {}: cannot write it", target.display()))?;
    match out {
        OutputFormat::Json => print_json(&serde_json::json!({
            "out": target,
            "runs": runs.iter().map(|r| serde_json::json!({"name": r.name, "dir": r.dir,
                "configurations": r.report.configurations.len(), "cases": r.cases.len()}))
                .collect::<Vec<_>>(),
            "changes": comparison.as_ref().map(|c| &c.changes),
            "comparisons": comparison.as_ref().map(|c| &c.rows),
            "unmatched": comparison.as_ref().map(|c| &c.unmatched),
        })),
        OutputFormat::Text => {
            println!("wrote {}", target.display());
            if let Some(c) = &comparison {
                for ch in &c.changes {
                    println!("changed: {}: {}", ch.what, ch.values.join(" -> "));
                }
                for r in &c.rows {
                    println!(
                        "{} / {} / {} / {} / {}: {} -> {} ({:+.2}, 95% CI {:.2} to {:.2}, n {}, p {:.3}, Holm {:.3}) in {}",
                        r.key.model,
                        r.key.adapter,
                        r.key.variant,
                        r.key.task,
                        r.key.language,
                        fmt2(r.mean_a),
                        fmt2(r.mean_b),
                        r.delta,
                        r.ci_low,
                        r.ci_high,
                        r.n,
                        r.p_value.unwrap_or(f64::NAN),
                        r.p_holm.unwrap_or(f64::NAN),
                        runs[r.b].name
                    );
                }
                for u in &c.unmatched {
                    println!("not compared: {u}");
                }
            }
            Ok(())
        }
    }
}

fn fmt2(x: f64) -> String {
    format!("{x:.2}")
}
