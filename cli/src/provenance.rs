//! Provenance on the CLI's side: the commit this binary was built from, the command line that
//! wrote a results folder, and running a results folder again (`flotilla run --from DIR`):
//! its recorded sweep or eval command, after checking that every recorded input file that is
//! on this machine still has the recorded sha256.

use anyhow::{bail, Context, Result};
use flotilla_contract::provenance::{hash_path, Provenance};
use flotilla_contract::report::Report;
use std::path::{Path, PathBuf};

/// The commit this binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("FLOTILLA_COMMIT");

/// Stamps `p` with this binary's commit and, when `command_line`, this process's command line
/// and folder (the command that can run the results again).
pub fn stamp(p: &mut Provenance, command_line: bool) {
    p.flotilla_commit = COMMIT.to_string();
    if command_line {
        p.argv = std::env::args().collect();
        p.cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
    }
}

/// What a results folder says to run again.
pub enum Rerun {
    /// A sweep: its file's text as submitted, read as if it were at `path`.
    Sweep { yaml: String, path: PathBuf },
    /// `flotilla eval`: its command line (without the program) and folder.
    Eval { args: Vec<String>, cwd: PathBuf },
}

/// Reads `dir/results.json`'s provenance and checks the recorded inputs.
pub fn from_results(dir: &Path) -> Result<Rerun> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--from {}: cannot read {}", dir.display(), path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("--from: {} is not flotilla results", path.display()))?;
    let Some(p) = report.provenance else {
        bail!(
            "--from: {} has no `provenance` (written by a flotilla without it); run the sweep \
             file or the eval command again instead",
            path.display()
        );
    };
    let cwd = PathBuf::from(&p.cwd);
    let rerun = match p.command.as_str() {
        "sweep" => {
            let (Some(yaml), Some(sweep_path)) = (p.sweep_yaml.clone(), p.sweep_path.clone())
            else {
                bail!("--from: {}'s provenance has no sweep file", path.display());
            };
            let sweep_path = PathBuf::from(sweep_path);
            let sweep_path = if sweep_path.is_relative() && !p.cwd.is_empty() {
                cwd.join(sweep_path)
            } else {
                sweep_path
            };
            Rerun::Sweep {
                yaml,
                path: sweep_path,
            }
        }
        "eval" => {
            if p.argv.len() < 2 {
                bail!(
                    "--from: {}'s provenance has no eval command line",
                    path.display()
                );
            }
            Rerun::Eval {
                args: p.argv[1..].to_vec(),
                cwd: cwd.clone(),
            }
        }
        other => bail!(
            "--from: {} records an unknown command `{other}`",
            path.display()
        ),
    };
    let base = match &rerun {
        Rerun::Sweep { path, .. } => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        Rerun::Eval { cwd, .. } => cwd.clone(),
    };
    check_files(&p, &base)?;
    Ok(rerun)
}

/// Every recorded input with a hash that is on this machine must still have it; inputs not
/// here (a worker's model on another PC) are named on stderr and left to the run to find.
fn check_files(p: &Provenance, base: &Path) -> Result<()> {
    let mut changed = Vec::new();
    // The sweep's text is the recorded one; files merely uploaded beside it (`input`) and the
    // adapters it trained are not what the run depends on.
    let skip = ["sweep", "input", "trained_adapter"];
    for f in p
        .files
        .iter()
        .filter(|f| !f.sha256.is_empty() && !skip.contains(&f.role.as_str()))
    {
        let recorded = Path::new(&f.path);
        let local = if recorded.is_absolute() {
            recorded.to_path_buf()
        } else {
            base.join(recorded)
        };
        match hash_path(&local) {
            Ok((sha, _)) if sha == f.sha256 => {}
            Ok((sha, _)) => changed.push(format!(
                "{} {} ({}): sha256 {} recorded, {} now",
                f.role,
                f.name,
                local.display(),
                short(&f.sha256),
                short(&sha)
            )),
            Err(_) => eprintln!(
                "warning: --from: {} {} ({}) is not on this machine; not checked",
                f.role,
                f.name,
                local.display()
            ),
        }
    }
    if !changed.is_empty() {
        bail!(
            "--from: {} input{} changed since the recorded run, so it cannot be repeated as it was:\n  {}",
            changed.len(),
            if changed.len() == 1 { "" } else { "s" },
            changed.join("\n  ")
        );
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Runs a recorded `flotilla eval` again (this binary, the recorded folder), writing to `out`.
pub fn exec_eval(args: &[String], cwd: &Path, out: &Path) -> Result<()> {
    let mut args = args.to_vec();
    // Replace the recorded --out (or add one).
    let mut i = 0;
    let mut replaced = false;
    while i < args.len() {
        if args[i] == "--out" && i + 1 < args.len() {
            args[i + 1] = out.display().to_string();
            replaced = true;
            i += 2;
            continue;
        }
        if args[i].starts_with("--out=") {
            args[i] = format!("--out={}", out.display());
            replaced = true;
        }
        i += 1;
    }
    if !replaced {
        args.push("--out".into());
        args.push(out.display().to_string());
    }
    let exe = std::env::current_exe().context("--from: cannot find this flotilla binary")?;
    let status = std::process::Command::new(exe)
        .args(&args)
        .current_dir(cwd)
        .status()
        .with_context(|| format!("--from: running flotilla {}", args.join(" ")))?;
    if !status.success() {
        bail!("--from: the eval run again failed ({status})");
    }
    Ok(())
}
