//! Models the coordinator holds for workers that lack them. `flotilla model push PATH`
//! uploads a GGUF file or a Hugging Face folder's files as artifacts and names them here; a
//! sweep names the model as `coordinator:NAME`. At submission its files join the sweep's
//! files under `pushed-models/NAME/`, so every shard that loads the model lists them and a
//! worker fetches what it lacks by sha256 (resuming a cut download), keeps them, and loads
//! the model from one place on its disk.

use crate::core::Core;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::plan::FileEntry;
use flotilla_proto::v1 as pb;
use rusqlite::params;
use std::collections::BTreeMap;

/// How a sweep names a pushed model: `coordinator:NAME`.
pub const PREFIX: &str = "coordinator:";

/// Where a pushed model's files sit among a sweep's files.
pub fn files_dir(name: &str) -> String {
    format!("pushed-models/{name}")
}

/// A pushed model's name: letters, digits, `.`, `_`, `-`, at most 100 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 100
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "model name {name:?} must be 1-100 letters, digits, `.`, `_` or `-` (not starting with `.`)"
        ));
    }
    Ok(())
}

/// A path inside a model folder: relative, `/`-separated, no `..`.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!(
            "file path {path:?} must be relative and stay inside the model's folder"
        ));
    }
    Ok(())
}

fn entry(name: String, files: Vec<FileEntry>, pushed_ms: i64) -> pb::ModelEntry {
    pb::ModelEntry {
        name,
        size: files.iter().map(|f| f.size).sum(),
        files: files.into_iter().map(crate::core::file_ref).collect(),
        pushed_unix_ms: pushed_ms,
    }
}

/// `PushModel`: name (or rename) the uploaded files as a model; a second push of a name
/// replaces what it names (sweeps already submitted keep the files they were given).
pub async fn push(core: &Core, req: pb::PushModelRequest) -> CoordinatorResult<pb::ModelEntry> {
    check_name(&req.name).map_err(CoordinatorError::Invalid)?;
    if req.files.is_empty() {
        return Err(CoordinatorError::Invalid(format!(
            "model {}: no files",
            req.name
        )));
    }
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for f in &req.files {
        if let Err(e) = check_path(&f.path) {
            problems.push(format!("model {}: {e}", req.name));
            continue;
        }
        let art = f.artifact.clone().unwrap_or_default();
        if !core.artifacts.exists(&art.sha256) {
            problems.push(format!(
                "model {}: file {}: artifact {} was not uploaded",
                req.name, f.path, art.sha256
            ));
            continue;
        }
        files.push(FileEntry {
            path: f.path.clone(),
            sha256: art.sha256,
            size: art.size,
        });
    }
    if !problems.is_empty() {
        return Err(CoordinatorError::Invalid(problems.join("\n")));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    let json = serde_json::to_string(&files)
        .map_err(|e| CoordinatorError::Internal(format!("model files: {e}")))?;
    let (name, size) = (req.name.clone(), files.iter().map(|f| f.size).sum::<u64>());
    let now = crate::store::now_ms();
    core.store
        .call(move |c| {
            c.execute(
                "INSERT INTO models (name, files_json, size, pushed_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET files_json = ?2, size = ?3, pushed_ms = ?4",
                params![name, json, size as i64, now],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    tracing::info!(
        model = req.name,
        files = files.len(),
        bytes = size,
        "model pushed"
    );
    Ok(entry(req.name, files, now))
}

/// Every pushed model, by name.
pub async fn list(core: &Core) -> CoordinatorResult<Vec<pb::ModelEntry>> {
    let rows: Vec<(String, String, i64)> = core
        .store
        .call(|c| {
            let mut stmt =
                c.prepare("SELECT name, files_json, pushed_ms FROM models ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    rows.into_iter()
        .map(|(name, json, ms)| {
            let files: Vec<FileEntry> = serde_json::from_str(&json).map_err(|e| {
                CoordinatorError::Internal(format!("stored model {name}: bad files: {e}"))
            })?;
            Ok(entry(name, files, ms))
        })
        .collect()
}

/// The sweep files of the pushed models `specs` names (`coordinator:NAME`), keyed as the
/// sweep's own files are; an unknown name is an error naming the models there are.
pub async fn sweep_files(
    core: &Core,
    specs: &[String],
) -> CoordinatorResult<BTreeMap<String, FileEntry>> {
    let wanted: Vec<&str> = specs
        .iter()
        .filter_map(|s| s.strip_prefix(PREFIX))
        .collect();
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let pushed = list(core).await?;
    for name in wanted {
        let Some(m) = pushed.iter().find(|m| m.name == name) else {
            let known: Vec<&str> = pushed.iter().map(|m| m.name.as_str()).collect();
            return Err(CoordinatorError::Invalid(format!(
                "model `{PREFIX}{name}` was never pushed (flotilla model push PATH --name {name}); \
                 pushed: {}",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        };
        for f in &m.files {
            let art = f.artifact.clone().unwrap_or_default();
            let key = format!("{}/{}", files_dir(name), f.path);
            out.insert(
                key.clone(),
                FileEntry {
                    path: key,
                    sha256: art.sha256,
                    size: art.size,
                },
            );
        }
    }
    Ok(out)
}
