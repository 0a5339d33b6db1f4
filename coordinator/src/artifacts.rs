//! Content-addressed blobs beside the database: `artifacts/<first two hex>/<sha256>` under
//! `--data-dir`. Case files, documents, training data and trained adapters all travel as
//! artifacts, in chunks below gRPC's 4 MB message cap, and are checked against their sha256
//! before they are kept: a corrupt upload is refused and leaves nothing behind.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes per chunk on the wire (well below the 4 MB message cap); the client's.
pub const CHUNK_SIZE: usize = flotilla_client::hash::CHUNK_BYTES;

/// Why an artifact could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact upload refused: {0}")]
    Refused(String),
    #[error("artifact {0} is not stored here")]
    Missing(String),
    #[error("artifact store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Content addresses as the client computes them: one definition for both sides.
pub use flotilla_client::hash::{hex, sha256_hex};

fn valid_sha(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The blob folder.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    pub fn open(dir: &Path) -> Result<Self, ArtifactError> {
        std::fs::create_dir_all(dir.join("tmp")).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the blob with this hash lives (whether or not it exists).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        if !valid_sha(sha256) {
            return Err(ArtifactError::Refused(format!(
                "`{sha256}` is not a lower-case hex sha256"
            )));
        }
        Ok(self.dir.join(&sha256[..2]).join(sha256))
    }

    pub fn exists(&self, sha256: &str) -> bool {
        self.path(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Store `bytes` made here (an aggregated adapter); returns its sha256.
    pub fn put(&self, bytes: &[u8]) -> Result<String, ArtifactError> {
        let sha = sha256_hex(bytes);
        if !self.exists(&sha) {
            let mut up = self.begin(&sha, bytes.len() as u64)?;
            up.write(bytes)?;
            up.finish()?;
        }
        Ok(sha)
    }

    /// The content of a stored artifact.
    pub fn read(&self, sha256: &str) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path(sha256)?;
        if !path.is_file() {
            return Err(ArtifactError::Missing(sha256.to_string()));
        }
        std::fs::read(&path).map_err(io(&path))
    }

    /// Remove a stored artifact (an old checkpoint); absent is fine.
    pub fn remove(&self, sha256: &str) -> Result<(), ArtifactError> {
        let path = self.path(sha256)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Start receiving an upload that claims `sha256` and `size`.
    pub fn begin(&self, sha256: &str, size: u64) -> Result<Upload, ArtifactError> {
        let target = self.path(sha256)?;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{sha256}.{}.{n}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        Ok(Upload {
            expected: sha256.to_string(),
            size,
            target,
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        })
    }
}

/// An upload in progress; dropped without [`Upload::finish`], it leaves nothing behind.
pub struct Upload {
    expected: String,
    size: u64,
    target: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    written: u64,
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        self.written += data.len() as u64;
        if self.written > self.size {
            return Err(ArtifactError::Refused(format!(
                "artifact {} is longer than the announced {} bytes",
                self.expected, self.size
            )));
        }
        self.hasher.update(data);
        let f = self.file.as_mut().expect("file open until finish");
        f.write_all(data).map_err(io(&self.tmp))
    }

    /// Check size and hash and move the blob into place.
    pub fn finish(mut self) -> Result<(), ArtifactError> {
        let got = hex(&std::mem::take(&mut self.hasher).finalize());
        if self.written != self.size {
            return Err(ArtifactError::Refused(format!(
                "artifact {}: received {} bytes, announced {}",
                self.expected, self.written, self.size
            )));
        }
        if got != self.expected {
            return Err(ArtifactError::Refused(format!(
                "artifact content has sha256 {got}, not the announced {} (corrupt upload)",
                self.expected
            )));
        }
        let f = self.file.take().expect("file open until finish");
        f.sync_all().map_err(io(&self.tmp))?;
        drop(f);
        let parent = self.target.parent().expect("blob path has a folder");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        std::fs::rename(&self.tmp, &self.target).map_err(io(&self.target))?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Either moved into place by finish (then this fails harmlessly) or abandoned.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_kept_only_when_hash_and_size_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = b"hello adapter";
        let sha = sha256_hex(data);
        let mut up = store.begin(&sha, data.len() as u64).unwrap();
        up.write(&data[..5]).unwrap();
        up.write(&data[5..]).unwrap();
        up.finish().unwrap();
        assert_eq!(std::fs::read(store.path(&sha).unwrap()).unwrap(), data);

        let wrong = sha256_hex(b"something else");
        let mut up = store.begin(&wrong, data.len() as u64).unwrap();
        up.write(data).unwrap();
        let e = up.finish().unwrap_err().to_string();
        assert!(e.contains("corrupt upload"), "{e}");
        assert!(!store.exists(&wrong));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(store.begin("../etc/passwd", 1).is_err());
    }
}
