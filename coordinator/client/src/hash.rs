//! Content addresses: artifacts are named by the lower-case hex sha256 of their bytes and
//! travel in chunks well below gRPC's 4 MB default message cap.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Bytes per artifact chunk on the wire.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 and size of a file, read in blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_bytes_hash_alike() {
        let dir = std::env::temp_dir().join(format!("flotilla-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x");
        std::fs::write(&p, b"abc").unwrap();
        let (sha, size) = sha256_file(&p).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sha, sha256_hex(b"abc"));
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
