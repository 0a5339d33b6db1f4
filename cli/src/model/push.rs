//! `flotilla model push PATH` and `flotilla model pushed`: models the coordinator holds for
//! workers that lack them. A sweep names a pushed model as `coordinator:NAME`; a worker
//! fetches its files by sha256 (resuming a cut download), keeps them within its
//! `--cache-budget-gb`, and is preferred for the model's shards while it holds them.

use crate::cluster::connect::ConnectArgs;
use crate::output::{bar, print_json, OutputFormat};
use anyhow::{bail, Context, Result};
use flotilla_engine::loader::{resolve, ModelSource};
use flotilla_proto::v1 as pb;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PushArgs {
    /// A GGUF file, a Hugging Face model folder, or a demo alias.
    pub path: String,
    /// The name sweeps use (`coordinator:NAME`); default: the file's or folder's name.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct PushedArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Every regular file under `dir`, as (path inside it, `/`-separated; full path), sorted.
fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in
            std::fs::read_dir(&d).with_context(|| format!("{}: cannot read it", d.display()))?
        {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .map(|r| {
                        r.components()
                            .map(|c| c.as_os_str().to_string_lossy())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                if !rel.split('/').any(|part| part.starts_with('.')) {
                    out.push((rel, p));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A default name from a path: its file or folder name without `.gguf`, with anything but
/// letters, digits, `.`, `_` and `-` made `-`.
fn default_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_default();
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

fn entry_json(m: &pb::ModelEntry) -> Value {
    json!({
        "name": m.name,
        "spec": format!("{}{}", flotilla_coordinator::models::PREFIX, m.name),
        "size": m.size,
        "pushed_unix_ms": m.pushed_unix_ms,
        "files": m.files.iter().map(|f| json!({
            "path": f.path,
            "sha256": f.artifact.as_ref().map(|a| a.sha256.clone()),
            "size": f.artifact.as_ref().map(|a| a.size),
        })).collect::<Vec<_>>(),
    })
}

/// Upload the model `spec` (a GGUF file, a Hugging Face folder or a demo alias) and name it
/// `name` (default: its file's or folder's name) on the coordinator, with a progress bar.
pub async fn push_model(
    client: &flotilla_coordinator::client::Client,
    spec: &str,
    name: Option<&str>,
) -> Result<pb::ModelEntry> {
    let source = resolve(spec).with_context(|| format!("model {spec}"))?;
    let (root, files): (PathBuf, Vec<(String, PathBuf)>) = match &source {
        ModelSource::Gguf(p) => {
            let file = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (p.clone(), vec![(file, p.clone())])
        }
        ModelSource::HfDir(d) => (d.clone(), files_under(d)?),
    };
    if files.is_empty() {
        bail!("model {spec}: {} holds no files", root.display());
    }
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| default_name(&root));
    flotilla_coordinator::models::check_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let total: u64 = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let pb = bar(
        files.len() as u64,
        format!("uploading {name} ({:.1} GB)", total as f64 / 1e9),
    );
    let mut refs = Vec::new();
    for (rel, path) in &files {
        pb.set_message(format!("uploading {name}: {rel}"));
        let art = client
            .upload_file(path)
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        refs.push(pb::FileRef {
            path: rel.clone(),
            artifact: Some(art),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(client.push_model(&name, refs).await?)
}

pub fn push(a: PushArgs, out: OutputFormat) -> Result<()> {
    crate::cluster::runtime()?.block_on(async move {
        let client = a.connect.connect().await?;
        let entry = push_model(&client, &a.path, a.name.as_deref()).await?;
        match out {
            OutputFormat::Json => print_json(&entry_json(&entry)),
            OutputFormat::Text => {
                println!(
                    "pushed {}{} ({} files, {:.2} GB): name it in a sweep as `model: {}{}`",
                    flotilla_coordinator::models::PREFIX,
                    entry.name,
                    entry.files.len(),
                    entry.size as f64 / 1e9,
                    flotilla_coordinator::models::PREFIX,
                    entry.name
                );
                Ok(())
            }
        }
    })
}

pub fn pushed(a: PushedArgs, out: OutputFormat) -> Result<()> {
    crate::cluster::runtime()?.block_on(async move {
        let models = a.connect.connect().await?.list_models().await?;
        match out {
            OutputFormat::Json => {
                print_json(&Value::Array(models.iter().map(entry_json).collect()))
            }
            OutputFormat::Text => {
                if models.is_empty() {
                    println!("no models pushed (flotilla model push PATH)");
                }
                for m in &models {
                    println!(
                        "{}{}\t{} files\t{:.2} GB",
                        flotilla_coordinator::models::PREFIX,
                        m.name,
                        m.files.len(),
                        m.size as f64 / 1e9
                    );
                }
                Ok(())
            }
        }
    })
}
