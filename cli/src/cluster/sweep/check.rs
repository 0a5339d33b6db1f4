//! `flotilla sweep check FILE`: check a sweep here exactly as `sweep submit` (or, with
//! `--local`, `flotilla run`) checks it — every problem at once, each with its file and line —
//! and show what it would become, without running anything: the coordinator's own plan
//! (jobs, shards), the answers and verdicts it asks for, training steps, the files it uploads,
//! and an estimate of the tokens it reads and writes ([`super::tokens`]).

use super::tokens::{estimate, Estimate};
use crate::output::{print_json, OutputFormat};
use anyhow::Result;
use flotilla_coordinator::sweep::{preview, FileRoot, ModelCheck, Preview, Sweep, SweepErrors};
use serde_json::{json, Value};
use std::path::Path;

/// Check `file`; print the plan, or every problem (and exit with status 1).
pub fn run(file: &Path, local: bool, list_jobs: bool, out: OutputFormat) -> Result<()> {
    let models = if local {
        ModelCheck::Local
    } else {
        ModelCheck::Syntax
    };
    let checked = Sweep::load(file, models).and_then(|sweep| {
        let root = FileRoot::local(file.parent().unwrap_or(Path::new(".")));
        let plan = preview(&sweep, &root)?;
        Ok((sweep, plan))
    });
    let (sweep, plan) = match checked {
        Ok(v) => v,
        Err(e) => return invalid(&e, out),
    };
    let tokens = estimate(&sweep, &plan);
    match out {
        OutputFormat::Json => print_json(&plan_json(&sweep, &plan, &tokens)),
        OutputFormat::Text => {
            print!("{}", plan_text(&sweep, &plan, &tokens, list_jobs));
            Ok(())
        }
    }
}

/// Every problem, and exit status 1. With `--output json`, one document that lists them.
fn invalid(e: &SweepErrors, out: OutputFormat) -> Result<()> {
    if out == OutputFormat::Json {
        print_json(&json!({
            "valid": false,
            "error": e.to_string(),
            "errors": e.errors.iter().map(|p| json!({
                "file": p.file.display().to_string(),
                "line": (p.line > 0).then_some(p.line),
                "message": p.message,
            })).collect::<Vec<_>>(),
        }))?;
    }
    eprintln!("error: {e}");
    std::process::exit(1)
}

fn adapter_source(a: &flotilla_coordinator::sweep::AdapterEntry) -> Value {
    use flotilla_coordinator::sweep::AdapterSource;
    match &a.source {
        AdapterSource::None => json!("none"),
        AdapterSource::Dir(d) => json!({ "path": d }),
        AdapterSource::Train(_) => json!("train"),
    }
}

fn plan_json(sweep: &Sweep, plan: &Preview, tokens: &Estimate) -> Value {
    json!({
        "valid": true,
        "sweep": sweep.name,
        "file": sweep.source.display().to_string(),
        "models": sweep.models.iter().map(|m| json!({"name": m.name, "model": m.model})).collect::<Vec<_>>(),
        "variants": sweep.variants,
        "adapters": sweep.adapters.iter().map(|a| json!({"name": a.name, "source": adapter_source(a)})).collect::<Vec<_>>(),
        "judges": sweep.judge.judges,
        "cells": plan.cells.iter().map(|c| json!({
            "dataset": c.dataset, "task": c.task.name(), "language": c.language, "cases": c.cases.len(),
        })).collect::<Vec<_>>(),
        "cases": plan.cells.iter().map(|c| c.cases.len()).sum::<usize>(),
        "totals": plan.totals,
        "files": {"count": plan.files.len(), "bytes": plan.upload_bytes()},
        "jobs": plan.jobs,
        "tokens": {
            "estimate": true,
            "generate": tokens.generate,
            "judge": tokens.judge,
            "train_max": tokens.train_max,
            "total_max": tokens.total_max,
            "counted_with": tokens.counted_with,
            "note": "prompt templates and chat markup are not counted; completions and training \
                     sequences are taken at their limits",
        },
    })
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(",")
}

fn plan_text(sweep: &Sweep, plan: &Preview, tokens: &Estimate, list_jobs: bool) -> String {
    let t = &plan.totals;
    let mut s = format!(
        "sweep {} ({}): valid; nothing was run\n\n",
        sweep.name,
        sweep.source.display()
    );
    let names = |v: Vec<String>| v.join(", ");
    s += &format!(
        "  models       {}\n",
        names(sweep.models.iter().map(|m| m.name.clone()).collect())
    );
    s += &format!("  variants     {}\n", sweep.variants.join(", "));
    s += &format!(
        "  adapters     {}\n",
        names(
            sweep
                .adapters
                .iter()
                .map(|a| match &a.source {
                    flotilla_coordinator::sweep::AdapterSource::Train(_) =>
                        format!("{} (trained by the sweep)", a.name),
                    _ => a.name.clone(),
                })
                .collect()
        )
    );
    s += &format!("  judges       {}\n", sweep.judge.judges.join(", "));
    let cases: usize = plan.cells.iter().map(|c| c.cases.len()).sum();
    if plan.cells.is_empty() {
        s += "  cases        none: the sweep only trains\n\n";
    } else {
        s += &format!(
            "  cases        {cases} in {} cells: {}\n\n",
            plan.cells.len(),
            names(
                plan.cells
                    .iter()
                    .map(|c| format!(
                        "{} {} {} ({})",
                        c.dataset,
                        c.task.name(),
                        c.language,
                        c.cases.len()
                    ))
                    .collect()
            )
        );
    }
    s += "plan\n";
    s += &format!(
        "  jobs         {} ({} train, {} generate, {} judge)\n",
        t.jobs, t.train_jobs, t.generate_jobs, t.judge_jobs
    );
    s += &format!("  shards       {}\n", t.shards);
    s += &format!("  generations  {} answers\n", t.generations);
    s += &format!(
        "  judgements   {} verdicts ({} judge{} per answer)\n",
        t.judgements,
        sweep.judge.judges.len(),
        if sweep.judge.judges.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    s += &format!("  training     {} steps\n", t.train_steps);
    s += &format!(
        "  upload       {} file{}, {}\n\n",
        plan.files.len(),
        if plan.files.len() == 1 { "" } else { "s" },
        crate::model::cache::human_bytes(plan.upload_bytes())
    );
    s += "tokens (an estimate)\n";
    s += &format!(
        "  generation   {} prompt, up to {} completion\n",
        thousands(tokens.generate.prompt),
        thousands(tokens.generate.completion_max)
    );
    s += &format!(
        "  judging      {} prompt, up to {} completion\n",
        thousands(tokens.judge.prompt),
        thousands(tokens.judge.completion_max)
    );
    s += &format!(
        "  training     up to {} (steps x sequences x max_seq_len)\n",
        thousands(tokens.train_max)
    );
    s += &format!("  total        up to {}\n", thousands(tokens.total_max));
    for c in &tokens.counted_with {
        let model = if c.model.is_empty() {
            "(endpoint judges)"
        } else {
            c.model.as_str()
        };
        match &c.reason {
            None => s += &format!("  counted with the tokenizer of {model}\n"),
            Some(r) => {
                s += &format!(
                    "  {model}: ~4 ASCII characters or 1 other character per token ({})\n",
                    r.split(':').next().unwrap_or(r)
                )
            }
        }
    }
    s += "  prompt templates and chat markup are not counted; completions are at their limits\n";
    if list_jobs {
        s += "\njobs\n";
        for j in &plan.jobs {
            let size = match (j.kind.as_str(), &j.train) {
                ("generate", _) => format!("{} answers", j.items),
                ("judge", _) => format!("{} verdicts", j.judgements),
                (_, Some(tr)) => format!("{} steps", tr.steps),
                _ => String::new(),
            };
            s += &format!(
                "  {:<14} {:<11} {:>3} shard{}  {:<12} {}\n",
                j.id,
                j.kind,
                j.shards,
                if j.shards == 1 { " " } else { "s" },
                size,
                j.label
            );
        }
    }
    s
}
