//! Files moving between coordinator and worker, by content.
//!
//! A shard names the files it needs as sweep paths mapped to artifacts (sha256 + size). The
//! worker keeps one copy per hash in its [`ArtifactCache`] (downloaded in chunks, checked
//! against the hash before it is kept), and lays each shard's files out under a folder of its
//! own with the sweep's relative paths, so the engine reads ordinary files. Produced files (a
//! trained adapter) go up with `flotilla_client::Client::upload_file`, in chunks below gRPC's message cap.

use crate::error::{io, Result, WorkerError};
use flotilla_client::client::Client;
use flotilla_proto::v1::{ArtifactRef, FileRef};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Mark a cached file as just used (its modification time orders eviction).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// A pushed model (`coordinator:NAME`, files under `pushed-models/NAME/` in `files`, laid
/// out under `root`) as one loadable place on this disk: a folder of links to the cached
/// files, named by the model and its files' hashes, so every shard of the model loads the
/// same path (and the model cache keeps it loaded). Returns the GGUF file of a one-file
/// model, the folder otherwise.
pub fn pushed_model(
    models_dir: &Path,
    name: &str,
    files: &[FileRef],
    root: &Path,
) -> Result<PathBuf> {
    let prefix = format!("pushed-models/{name}/");
    let mut mine: Vec<(&str, &str)> = files
        .iter()
        .filter_map(|f| {
            let rel = f.path.strip_prefix(&prefix)?;
            Some((
                rel,
                f.artifact.as_ref().map(|a| a.sha256.as_str()).unwrap_or(""),
            ))
        })
        .collect();
    if mine.is_empty() {
        return Err(WorkerError::Invalid(format!(
            "model coordinator:{name}: the shard came without its files"
        )));
    }
    mine.sort();
    let digest = sha256_hex(
        mine.iter()
            .map(|(p, s)| format!("{p} {s}\n"))
            .collect::<String>()
            .as_bytes(),
    );
    let dir = models_dir.join(format!("{name}-{}", &digest[..12]));
    if !dir.join(MODEL_MANIFEST).exists() {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = models_dir.join(format!(".{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for (rel, _) in &mine {
            let src = root.join(sweep_path(&format!("{prefix}{rel}"))?);
            let dst = tmp.join(sweep_path(rel)?);
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            link_or_copy(&src, &dst)?;
        }
        let shas: Vec<&str> = mine.iter().map(|(_, s)| *s).collect();
        let manifest = tmp.join(MODEL_MANIFEST);
        std::fs::write(&manifest, serde_json::to_string(&shas).unwrap_or_default())
            .map_err(io(&manifest))?;
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another shard laid it out first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(match mine.as_slice() {
        [(one, _)] if one.ends_with(".gguf") => dir.join(one),
        _ => dir,
    })
}

pub use flotilla_client::hash::{hex, sha256_hex};

/// sha256 and size of a file; the error names it.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    flotilla_client::hash::sha256_file(path).map_err(io(&path))
}

fn check_sha(sha: &str) -> Result<()> {
    if sha.len() != 64
        || !sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(WorkerError::Invalid(format!(
            "artifact hash {sha:?} is not a lower-case hex sha256"
        )));
    }
    Ok(())
}

/// A sweep path (relative, `/`-separated, inside the sweep's folder) as a relative path;
/// anything that could escape the shard's folder is refused.
pub fn sweep_path(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(WorkerError::Invalid(format!(
            "sweep path {p:?} must be relative and stay inside the sweep's folder"
        )));
    }
    Ok(path.to_path_buf())
}

/// The worker's content-addressed file cache: `<dir>/<sha256>`.
pub struct ArtifactCache {
    dir: PathBuf,
    /// Evict least-recently-used files past this many bytes (None: keep everything).
    budget: Option<u64>,
}

/// The manifest a pushed model's folder keeps: the artifacts its files are links of.
const MODEL_MANIFEST: &str = ".flotilla-model.json";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_budget(dir, None)
    }

    /// A cache that evicts least-recently-used files past `budget` bytes after each fetch.
    pub fn with_budget(dir: impl Into<PathBuf>, budget: Option<u64>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir, budget })
    }

    /// Where pushed models are laid out as loadable folders (beside the files).
    pub fn models_dir(&self) -> PathBuf {
        self.dir.with_file_name("pushed-models")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an artifact is kept (whether or not it is there yet).
    pub fn path(&self, artifact: &ArtifactRef) -> Result<PathBuf> {
        check_sha(&artifact.sha256)?;
        Ok(self.dir.join(&artifact.sha256))
    }

    /// Whether the artifact is cached with the expected size.
    pub fn has(&self, artifact: &ArtifactRef) -> bool {
        self.path(artifact)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() == artifact.size)
    }

    /// Stores bytes already in hand (tests, embedded uploads), checked like a download.
    pub fn insert_bytes(&self, artifact: &ArtifactRef, data: &[u8]) -> Result<PathBuf> {
        let dest = self.path(artifact)?;
        let got = sha256_hex(data);
        if got != artifact.sha256 || data.len() as u64 != artifact.size {
            return Err(WorkerError::Corrupt(format!(
                "artifact {} is corrupt: got sha256 {got}, {} bytes",
                artifact.sha256,
                data.len()
            )));
        }
        let tmp = self.tmp_path(&artifact.sha256);
        std::fs::write(&tmp, data).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(dest)
    }

    fn tmp_path(&self, sha: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".partial-{sha}-{}-{n}", std::process::id()))
    }

    /// The artifact's local path, downloading it first if it is not cached. The download is
    /// hashed as it arrives and kept only if hash and size match.
    pub async fn fetch(&self, client: &Client, artifact: &ArtifactRef) -> Result<PathBuf> {
        let dest = self.path(artifact)?;
        let lock = fetch_lock(&dest);
        let fetched = {
            let _one = lock.lock().await;
            if self.has(artifact) {
                // Recently used: the last to be evicted.
                touch(&dest);
                Ok(())
            } else {
                // A cut download resumes from what it left (`Client::download`).
                let got = client.download(artifact, &dest).await;
                if got.is_ok() {
                    if let Some(budget) = self.budget {
                        self.evict(budget, &[artifact.sha256.as_str()]);
                    }
                }
                got
            }
        };
        release_fetch_lock(&dest, lock);
        fetched?;
        Ok(dest)
    }

    /// Remove least-recently-used files (never those in `keep`) until the cache holds at
    /// most `budget` bytes; a pushed model's folder goes with any file of it. Files a running
    /// shard has linked stay readable there until it ends. Returns the hashes removed.
    pub fn evict(&self, budget: u64, keep: &[&str]) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, u64, String)> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let m = e.metadata().ok()?;
                        if !m.is_file() || check_sha(&name).is_err() {
                            return None;
                        }
                        Some((m.modified().ok()?, m.len(), name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let mut removed = Vec::new();
        for (_, size, sha) in files {
            if total <= budget {
                break;
            }
            if keep.contains(&sha.as_str()) {
                continue;
            }
            if std::fs::remove_file(self.dir.join(&sha)).is_ok() {
                total = total.saturating_sub(size);
                tracing::info!(
                    artifact = sha,
                    bytes = size,
                    "evicted from the cache (least recently used)"
                );
                removed.push(sha);
            }
        }
        if !removed.is_empty() {
            for (dir, shas) in self.model_folders() {
                if shas.iter().any(|s| removed.contains(s)) {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        removed
    }

    /// The pushed models' folders here, with the artifacts each links.
    fn model_folders(&self) -> Vec<(PathBuf, Vec<String>)> {
        std::fs::read_dir(self.models_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let text = std::fs::read_to_string(e.path().join(MODEL_MANIFEST)).ok()?;
                        let shas: Vec<String> = serde_json::from_str(&text).ok()?;
                        Some((e.path(), shas))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pushed models laid out here, as sweeps name them (`coordinator:NAME`).
    pub fn models_held(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .model_folders()
            .into_iter()
            .filter_map(|(dir, _)| {
                let name = dir.file_name()?.to_string_lossy().into_owned();
                let (model, _digest) = name.rsplit_once('-')?;
                Some(format!("coordinator:{model}"))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Lays out `files` under `root` at their sweep paths (hard links into the cache, or
    /// copies where links are impossible). Every artifact must be cached already.
    pub fn materialize(&self, files: &[FileRef], root: &Path) -> Result<()> {
        for f in files {
            let artifact = f.artifact.as_ref().ok_or_else(|| {
                WorkerError::Invalid(format!("file {} comes without an artifact", f.path))
            })?;
            let src = self.path(artifact)?;
            let dest = root.join(sweep_path(&f.path)?);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io(&parent))?;
            }
            let _ = std::fs::remove_file(&dest);
            link_or_copy(&src, &dest)?;
        }
        Ok(())
    }
}

/// `dst` as a hard link of `src` (no copy of the bytes), or a copy where links are
/// impossible (another file system).
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(io(dst))?;
    }
    Ok(())
}

/// One download at a time per cached file in this process: the workers of `flotilla run`
/// each have a cache over one folder, and a second asker waits for the first's file instead
/// of fetching it again. Entries go when nobody waits on them.
fn fetch_lock(dest: &Path) -> Arc<tokio::sync::Mutex<()>> {
    FETCHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(dest.to_path_buf())
        .or_default()
        .clone()
}

fn release_fetch_lock(dest: &Path, lock: Arc<tokio::sync::Mutex<()>>) {
    let mut all = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    // Ours and the map's: nobody else holds or waits for it.
    if Arc::strong_count(&lock) == 2 {
        all.remove(dest);
    }
}

type FetchLocks = std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
static FETCHING: std::sync::LazyLock<FetchLocks> = std::sync::LazyLock::new(Default::default);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_paths_cannot_escape() {
        assert_eq!(
            sweep_path("docs/a.txt").unwrap(),
            PathBuf::from("docs/a.txt")
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(sweep_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn past_its_budget_the_cache_evicts_the_least_recently_used_and_their_model_folders() {
        let dir = std::env::temp_dir().join(format!("flotilla-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = ArtifactCache::with_budget(dir.join("artifacts"), Some(2500)).unwrap();
        let mut arts = Vec::new();
        for (i, age_s) in [(0u8, 300u64), (1, 200), (2, 100)] {
            let data = vec![i; 1000];
            let art = ArtifactRef {
                sha256: sha256_hex(&data),
                size: 1000,
            };
            let p = cache.insert_bytes(&art, &data).unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
            arts.push(art);
        }
        // A pushed model laid out from the oldest file, and one from the newest.
        let root = dir.join("shard");
        let file = |name: &str, art: &ArtifactRef| FileRef {
            path: format!("pushed-models/{name}/model.gguf"),
            artifact: Some(art.clone()),
        };
        let files = [file("old", &arts[0]), file("new", &arts[2])];
        cache.materialize(&files, &root).unwrap();
        let old = pushed_model(&cache.models_dir(), "old", &files, &root).unwrap();
        let new = pushed_model(&cache.models_dir(), "new", &files, &root).unwrap();
        assert!(
            old.ends_with("model.gguf") && old.is_file(),
            "{}",
            old.display()
        );
        assert_eq!(cache.models_held(), ["coordinator:new", "coordinator:old"]);
        // 3000 bytes held, 2500 allowed: the oldest goes, with the model folder linking it.
        let removed = cache.evict(2500, &[]);
        assert_eq!(removed, [arts[0].sha256.clone()]);
        assert!(!cache.has(&arts[0]) && cache.has(&arts[1]) && cache.has(&arts[2]));
        assert!(!old.exists() && new.exists());
        assert_eq!(cache.models_held(), ["coordinator:new"]);
        // What a fetch just brought is never evicted, however old it looks.
        let removed = cache.evict(500, &[arts[1].sha256.as_str()]);
        assert_eq!(removed, [arts[2].sha256.clone()]);
        assert!(cache.has(&arts[1]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cache_keeps_only_what_matches_its_hash() {
        let dir = std::env::temp_dir().join(format!("flotilla-artifacts-{}", std::process::id()));
        let cache = ArtifactCache::new(dir.join("cache")).unwrap();
        let data = b"hello shard";
        let good = ArtifactRef {
            sha256: sha256_hex(data),
            size: data.len() as u64,
        };
        assert!(!cache.has(&good));
        let bad = ArtifactRef {
            sha256: "0".repeat(64),
            size: data.len() as u64,
        };
        let err = cache.insert_bytes(&bad, data).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!cache.has(&bad));
        cache.insert_bytes(&good, data).unwrap();
        assert!(cache.has(&good));
        assert!(cache
            .path(&ArtifactRef {
                sha256: "../../etc".into(),
                size: 0
            })
            .is_err());

        let root = dir.join("shard");
        cache
            .materialize(
                &[FileRef {
                    path: "docs/hello.txt".into(),
                    artifact: Some(good.clone()),
                }],
                &root,
            )
            .unwrap();
        assert_eq!(std::fs::read(root.join("docs/hello.txt")).unwrap(), data);
        let (sha, size) = sha256_file(&root.join("docs/hello.txt")).unwrap();
        assert_eq!((sha, size), (good.sha256.clone(), good.size));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
