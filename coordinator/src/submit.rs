//! `SubmitSweep`: from the YAML and the uploaded files to queued jobs.
//!
//! The coordinator links every uploaded file into `sweeps/<id>/files/<key>` under the data
//! folder, checks the sweep against that copy exactly as the CLI checked it against the user's
//! disk (models only for spelling: they live on the workers), plans the jobs and stores them
//! in one transaction. A sweep with any problem is refused whole, with every problem listed.

use crate::core::{slug, Core, SweepRecord};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::plan::{self, FileEntry};
use crate::sweep::{self, file_key, FileRoot, ModelCheck, SweepErrors};
use flotilla_proto::v1 as pb;
use std::collections::BTreeMap;
use std::path::Path;

fn refused(e: SweepErrors) -> CoordinatorError {
    CoordinatorError::Invalid(e.to_string())
}

/// Validate, plan and queue a sweep.
pub async fn submit_sweep(
    core: &Core,
    req: pb::SubmitSweepRequest,
) -> CoordinatorResult<pb::SweepStatus> {
    let source = if req.source_path.is_empty() {
        "sweep.yaml".to_string()
    } else {
        req.source_path.clone()
    };
    let mut parsed = sweep::parse(&req.yaml, Path::new(&source)).map_err(refused)?;
    // Models pushed with this submission load from the coordinator.
    for (name, pushed) in &req.pushed_models {
        let m = parsed
            .models
            .iter_mut()
            .find(|m| &m.name == name)
            .ok_or_else(|| {
                CoordinatorError::Invalid(format!(
                    "pushed model for `{name}`: the sweep names no such model"
                ))
            })?;
        crate::models::check_name(pushed).map_err(CoordinatorError::Invalid)?;
        m.model = format!("{}{pushed}", crate::models::PREFIX);
    }
    let seq = core
        .next_sweep_seq()
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let sweep_id = format!("{}-{seq}", slug(&parsed.name));
    let root = core.data_dir.join("sweeps").join(&sweep_id).join("files");

    // The uploads, by key; each must be in the artifact store.
    let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut missing = Vec::new();
    for f in &req.files {
        let art = f.artifact.clone().unwrap_or_default();
        let key = file_key(&f.path);
        if key.is_empty() {
            missing.push(format!("file `{}`: empty path", f.path));
            continue;
        }
        if !core.artifacts.exists(&art.sha256) {
            missing.push(format!(
                "file {}: artifact {} was not uploaded",
                f.path, art.sha256
            ));
            continue;
        }
        files.insert(
            key.clone(),
            FileEntry {
                path: key,
                sha256: art.sha256,
                size: art.size,
            },
        );
    }
    if !missing.is_empty() {
        return Err(CoordinatorError::Invalid(missing.join("\n")));
    }
    // Pushed models (`coordinator:NAME`) travel as the sweep's files.
    let mut specs: Vec<String> = parsed.models.iter().map(|m| m.model.clone()).collect();
    specs.extend(parsed.judge.judges.iter().cloned());
    files.extend(crate::models::sweep_files(core, &specs).await?);
    let materialized = {
        let root = root.clone();
        let files = files.clone();
        let artifacts = core.artifacts.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for (key, f) in &files {
                let dst = root.join(key);
                if let Some(p) = dst.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let src = artifacts
                    .path(&f.sha256)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let _ = std::fs::remove_file(&dst);
                if std::fs::hard_link(&src, &dst).is_err() {
                    std::fs::copy(&src, &dst)?;
                }
            }
            std::fs::create_dir_all(&root)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?
    };
    materialized.map_err(|e| CoordinatorError::Internal(format!("{}: {e}", root.display())))?;

    let checked = {
        let root = FileRoot::uploaded(root.clone());
        let parsed = parsed.clone();
        tokio::task::spawn_blocking(move || {
            parsed.check(&root, ModelCheck::Syntax)?;
            parsed.cells(&root)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?
    };
    let cells = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(root.parent().unwrap_or(&root));
            return Err(refused(e));
        }
    };
    let jobs = plan::plan(&sweep_id, &parsed, &cells, &files)
        .map_err(|e| CoordinatorError::Invalid(format!("{source}: {e}")))?;
    core.add_sweep(
        sweep_id.clone(),
        seq,
        parsed.name.clone(),
        source,
        req.yaml,
        SweepRecord {
            retries: parsed.retries,
            sweep: Some(parsed),
        },
        files.into_values().collect(),
        jobs,
    )
    .await
    .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    core.status(&sweep_id)
        .ok_or_else(|| CoordinatorError::Internal("the sweep vanished after it was stored".into()))
}
