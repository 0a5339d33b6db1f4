//! Where a result came from: flotilla's version and commit, the settings as resolved, every
//! file read (models, adapters, embedders, judges, case files, documents) with its sha256, the
//! machines and devices that did the work, and when. `results.json` carries it
//! (`provenance`), so a result can be checked and run again from itself (`flotilla run
//! --from`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub flotilla_version: String,
    /// The commit the `flotilla` binary that wrote the results was built from (`unknown`
    /// outside a git checkout).
    pub flotilla_commit: String,
    /// `eval` or `sweep`.
    pub command: String,
    /// The command line, as run, and the folder it ran in: what `flotilla run --from` repeats.
    pub argv: Vec<String>,
    pub cwd: String,
    /// The settings as resolved (every eval flag; the sweep as read, defaults filled in).
    pub settings: serde_json::Value,
    /// A sweep's file: its path and its text as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_yaml: Option<String>,
    pub seed: u64,
    pub judges: Vec<String>,
    /// Every file the results depend on, with its sha256.
    pub files: Vec<FileHash>,
    /// The machines that produced the results.
    pub machines: Vec<Machine>,
    /// A sweep's shards: which worker ran each, and when (empty for `eval`).
    #[serde(default)]
    pub shards: Vec<ShardOrigin>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
}

/// A file (or folder: the hash of its files' names and hashes) the results depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileHash {
    /// `model`, `adapter`, `embedder`, `judge`, `cases`, `document`, `template`, ...
    pub role: String,
    /// The name it goes by in the settings (a model alias, a dataset name).
    pub name: String,
    /// Where it was read (a sweep path for sweeps; an endpoint's URL for a remote judge).
    pub path: String,
    /// Empty for an endpoint, which has no file.
    pub sha256: String,
    pub bytes: u64,
    /// Why it could not be hashed, if so (the entry is kept, with an empty hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A machine that did work, as it described itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Machine {
    /// The worker id (`local` for `flotilla eval`).
    pub worker: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cores: usize,
    /// The device the models ran on (`cpu`, `cuda:0`).
    pub device: String,
    pub flotilla_version: String,
}

impl Machine {
    /// This machine, running models on `device`.
    pub fn this(worker: &str, device: &str) -> Machine {
        Machine {
            worker: worker.to_string(),
            hostname: hostname(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            device: device.to_string(),
            flotilla_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// What a worker reports with a generate or judge result: itself and the files it read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub machine: Machine,
    pub files: Vec<FileHash>,
}

/// Which worker ran a shard (the attempt whose result was kept), and when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOrigin {
    pub shard: String,
    /// `generate`, `judge`, `train`, `train_round`.
    pub kind: String,
    pub attempt: u32,
    pub worker: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

/// The machine's name: the kernel's hostname, else `HOSTNAME`, else empty.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Unix time in milliseconds as RFC 3339 UTC (`2026-11-30T07:03:59.123Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

type HashKey = (PathBuf, u64, Option<SystemTime>);

/// Hashes already computed, by path, size and modification time: a worker hashes its model
/// once, not once per shard.
fn cache() -> &'static Mutex<HashMap<HashKey, String>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<HashKey, String>>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let meta = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(h) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok((h, meta.len()));
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex = hex(&h.finalize());
    if let Ok(mut c) = cache().lock() {
        c.insert(key, hex.clone());
    }
    Ok((hex, meta.len()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 and size of a file; of a folder, the sha256 of its files' relative paths and
/// hashes (one `path=sha256` line each, sorted) and their total size.
pub fn hash_path(path: &Path) -> std::io::Result<(String, u64)> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut lines = Vec::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let (h, n) = file_sha256(&p)?;
                total += n;
                let rel = p
                    .strip_prefix(path)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .to_string();
                lines.push(format!("{rel}={h}"));
            }
        }
    }
    lines.sort();
    Ok((hex(&Sha256::digest(lines.join("\n").as_bytes())), total))
}

/// A [`FileHash`] of `path`; an unreadable path is recorded with an empty hash and the
/// reason (`error`), never dropped.
pub fn file_hash(role: &str, name: &str, path: &Path) -> FileHash {
    let (sha256, bytes, error) = match hash_path(path) {
        Ok((sha256, bytes)) => (sha256, bytes, None),
        Err(e) => (String::new(), 0, Some(e.to_string())),
    };
    FileHash {
        role: role.into(),
        name: name.into(),
        path: path.display().to_string(),
        sha256,
        bytes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_folders_hash_by_content() {
        let dir = std::env::temp_dir().join(format!("flotilla-prov-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"abc").unwrap();
        std::fs::write(dir.join("sub/b.txt"), b"de").unwrap();
        let (a, n) = hash_path(&dir.join("a.txt")).unwrap();
        assert_eq!(
            a,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
        let (d1, total) = hash_path(&dir).unwrap();
        assert_eq!(total, 5);
        std::fs::write(dir.join("sub/b.txt"), b"dE").unwrap();
        let (d2, _) = hash_path(&dir).unwrap();
        assert_ne!(d1, d2, "a changed file changes the folder's hash");
        let missing = file_hash("model", "m", &dir.join("nope"));
        assert_eq!((missing.sha256.as_str(), missing.bytes), ("", 0));
        assert!(missing.error.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_022_239_123), "2026-11-30T07:03:59.123Z");
    }
}
