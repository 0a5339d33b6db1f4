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
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir })
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
        if !self.has(artifact) {
            client.download(artifact, &dest).await?;
        }
        Ok(dest)
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
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).map_err(io(&dest))?;
            }
        }
        Ok(())
    }
}

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
