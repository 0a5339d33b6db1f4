//! The one client of a coordinator (`flotilla-client`), plus what only the coordinator's
//! crate knows: which files a sweep names. [`SubmitSweep::submit_file`] checks a sweep file
//! here, uploads every file it names and submits it.

pub use flotilla_client::client::*;

use crate::error::{CoordinatorError, CoordinatorResult};
use crate::sweep::{FileRoot, ModelCheck, Sweep};
use flotilla_proto::v1 as pb;
use std::path::Path;

/// Submitting a sweep file with everything it names.
#[allow(async_fn_in_trait)]
pub trait SubmitSweep {
    /// Check a sweep file here (models for spelling only: the workers hold them), upload every
    /// file it names, and submit it.
    async fn submit_file(&self, path: &Path) -> CoordinatorResult<pb::SweepStatus> {
        self.submit_file_checked(path, ModelCheck::Syntax).await
    }

    /// As [`SubmitSweep::submit_file`], choosing how models are checked (`Local` for embedded
    /// runs, where the workers share this machine's models).
    async fn submit_file_checked(
        &self,
        path: &Path,
        models: ModelCheck,
    ) -> CoordinatorResult<pb::SweepStatus>;

    /// Submit sweep text that stands for the file `path` (the files it names are read
    /// beside `path`).
    async fn submit_text(
        &self,
        yaml: &str,
        path: &Path,
        models: ModelCheck,
    ) -> CoordinatorResult<pb::SweepStatus> {
        self.submit_pushed(yaml, path, models, Default::default())
            .await
    }

    /// [`SubmitSweep::submit_text`], with models already pushed for it (`pushed`: the
    /// sweep's model name -> the pushed model's name), which then load as `coordinator:NAME`.
    async fn submit_pushed(
        &self,
        yaml: &str,
        path: &Path,
        models: ModelCheck,
        pushed: std::collections::HashMap<String, String>,
    ) -> CoordinatorResult<pb::SweepStatus>;
}

impl SubmitSweep for Client {
    async fn submit_file_checked(
        &self,
        path: &Path,
        models: ModelCheck,
    ) -> CoordinatorResult<pb::SweepStatus> {
        let yaml = std::fs::read_to_string(path)
            .map_err(|e| CoordinatorError::Invalid(format!("{}: {e}", path.display())))?;
        self.submit_text(&yaml, path, models).await
    }

    async fn submit_pushed(
        &self,
        yaml: &str,
        path: &Path,
        models: ModelCheck,
        pushed: std::collections::HashMap<String, String>,
    ) -> CoordinatorResult<pb::SweepStatus> {
        let sweep = Sweep::load_text(yaml, path, models)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let files = sweep.local_files(&FileRoot::local(&dir)).map_err(|e| {
            CoordinatorError::Invalid(format!("listing the files {} names: {e}", path.display()))
        })?;
        let mut refs = Vec::new();
        for (sweep_path, local) in files {
            let art = self.upload_file(&local).await?;
            refs.push(pb::FileRef {
                path: sweep_path,
                artifact: Some(art),
            });
        }
        let status = self
            .grpc()
            .submit_sweep(pb::SubmitSweepRequest {
                yaml: yaml.to_string(),
                source_path: path.display().to_string(),
                files: refs,
                pushed_models: pushed,
            })
            .await
            .map_err(|s| CoordinatorError::Invalid(explain(&s)))?;
        Ok(status.into_inner())
    }
}
