//! The one client of the coordinator's gRPC API, used by the CLI, the workers and the tests:
//! the address (with or without `http://`), the shared token sent as
//! `authorization: Bearer <token>` on every call, optional TLS (a CA to trust, a client
//! certificate for mutual TLS), and artifacts moved in chunks and checked by sha256.

use crate::error::{Error, Result};
use crate::hash::{hex, sha256_file, CHUNK_BYTES};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The largest message a client sends or accepts: assignments carry their cases inline.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    /// A token for the `authorization` header; an empty token sends none (the coordinator
    /// then refuses the call, which is what tests of a token-less client want).
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Self(None));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Invalid("the token must be printable ASCII".into()))?;
        Ok(Self(Some(value)))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The caller's trace context (W3C traceparent), when traces are exported.
        crate::telemetry::inject(req.metadata_mut());
        Ok(req)
    }
}

/// The generated client with the token attached, for calls without a helper here (the Work
/// stream, sweeps).
pub type Grpc = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

/// TLS settings of a client: the CA that signed the coordinator's certificate and, for
/// mutual TLS, the client's own certificate and key (PEM).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name in the server certificate, when it differs from the address's host.
    pub domain: Option<String>,
}

impl ClientTls {
    /// TLS from PEM files as the flags name them (`--tls-ca`, `--tls-cert`, `--tls-key`);
    /// none when no file is given. Each error names the flag and the file.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<ClientTls>> {
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(Error::io(format!("cannot read the {what} {}", p.display())))
        };
        let ca_pem =
            match ca {
                Some(p) => Some(read(p, "TLS CA (--tls-ca)")?),
                None => return Err(Error::Invalid(
                    "--tls-cert needs --tls-ca (the CA that signed the coordinator's certificate)"
                        .into(),
                )),
            };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                read(c, "TLS certificate (--tls-cert)")?,
                read(k, "TLS key (--tls-key)")?,
            )),
            (None, None) => None,
            _ => {
                return Err(Error::Invalid(
                    "mutual TLS needs both --tls-cert and --tls-key".into(),
                ))
            }
        };
        Ok(Some(ClientTls {
            ca_pem,
            identity,
            domain: None,
        }))
    }
}

/// Reads a token file: its first line, trimmed. An empty file is an error naming it.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(Error::io(format!(
        "cannot read the token file {}",
        path.display()
    )))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(Error::Invalid(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// `host:port` or a URL, as an endpoint URL (`http://` unless TLS is on).
pub fn endpoint_url(address: &str, tls: bool) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// A gRPC error as one sentence for people.
pub fn explain(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated => format!(
            "the coordinator refused the token ({}); check --token-file / FLOTILLA_TOKEN",
            status.message()
        ),
        tonic::Code::PermissionDenied => {
            format!("the coordinator refused this client: {}", status.message())
        }
        tonic::Code::Unavailable => {
            format!("the coordinator is unavailable: {}", status.message())
        }
        _ => status.message().to_string(),
    }
}

/// A connection to a coordinator. Cheap to clone; clones share the HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc,
}

impl Client {
    /// Connect to `address` (`host:port` or `http://host:port`) without TLS.
    pub async fn connect(address: &str, token: Option<String>) -> Result<Client> {
        Self::connect_with(address, token, None).await
    }

    /// Connect with optional TLS (`https://host:port`, or `host:port` when `tls` is given).
    pub async fn connect_with(
        address: &str,
        token: Option<String>,
        tls: Option<ClientTls>,
    ) -> Result<Client> {
        let url = endpoint_url(address, tls.is_some());
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                Error::Invalid(format!("coordinator address {address:?} is not valid: {e}"))
            })?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let mut t = ClientTlsConfig::new();
            match tls.ca_pem {
                Some(ca) => t = t.ca_certificate(Certificate::from_pem(ca)),
                None => {
                    return Err(Error::Invalid(format!(
                        "{address}: TLS needs the CA certificate that signed the coordinator's \
                         (--tls-ca)"
                    )))
                }
            }
            if let Some((cert, key)) = tls.identity {
                t = t.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = tls.domain {
                t = t.domain_name(d);
            }
            endpoint = endpoint.tls_config(t).map_err(|cause| Error::Transport {
                message: "TLS configuration refused".into(),
                cause,
            })?;
        }
        let channel = endpoint.connect().await.map_err(|cause| Error::Transport {
            message: format!("cannot reach the coordinator at {url}"),
            cause,
        })?;
        let token = BearerToken::new(token.as_deref().unwrap_or(""))?;
        let grpc = CoordinatorClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { grpc })
    }

    /// The generated client, for calls without a helper here (the Work stream, sweeps).
    pub fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    /// Upload bytes as an artifact.
    pub async fn upload_bytes(&self, data: &[u8]) -> Result<pb::ArtifactRef> {
        let art = pb::ArtifactRef {
            sha256: hex(&Sha256::digest(data)),
            size: data.len() as u64,
        };
        let mut chunks: Vec<pb::ArtifactChunk> = data
            .chunks(CHUNK_BYTES)
            .map(|c| pb::ArtifactChunk {
                artifact: None,
                data: c.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::ArtifactChunk::default());
        }
        chunks[0].artifact = Some(art.clone());
        let stored = self
            .grpc()
            .upload_artifact(tokio_stream::iter(chunks))
            .await
            .map_err(|s| Error::Refused(format!("upload refused: {}", explain(&s))))?
            .into_inner();
        check_stored(&stored, &art, "bytes")?;
        Ok(stored)
    }

    /// Upload a file as an artifact, streamed in chunks; the coordinator's answer must name
    /// the file's own hash.
    pub async fn upload_file(&self, path: &Path) -> Result<pb::ArtifactRef> {
        let p = path.to_path_buf();
        let (sha256, size) = tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(|e| Error::Lost(format!("hashing task failed: {e}")))?
            .map_err(Error::io(format!("cannot read {}", path.display())))?;
        let art = pb::ArtifactRef { sha256, size };
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ArtifactChunk>(4);
        let p = path.to_path_buf();
        let first = art.clone();
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut f = std::fs::File::open(&p)
                .map_err(Error::io(format!("cannot read {}", p.display())))?;
            let mut first = Some(first);
            loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = f
                        .read(&mut buf[filled..])
                        .map_err(Error::io(format!("cannot read {}", p.display())))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let last = filled < CHUNK_BYTES;
                if filled == 0 && first.is_none() {
                    break;
                }
                let chunk = pb::ArtifactChunk {
                    artifact: first.take(),
                    data: buf,
                };
                if tx.blocking_send(chunk).is_err() || last {
                    break;
                }
            }
            Ok(())
        });
        let stored = self
            .grpc()
            .upload_artifact(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| {
                Error::Refused(format!(
                    "upload of {} refused: {}",
                    path.display(),
                    explain(&s)
                ))
            })?
            .into_inner();
        reader
            .await
            .map_err(|e| Error::Lost(format!("upload reader failed: {e}")))??;
        check_stored(&stored, &art, &path.display().to_string())?;
        Ok(stored)
    }

    /// Download an artifact into `dest`, hashing it as it arrives; `dest` appears only when
    /// hash and size match (written beside it first, then renamed). A download cut short
    /// (the connection lost, the process stopped) leaves its bytes beside `dest`, and the
    /// next download of the same file resumes from them instead of starting again; bytes
    /// that do not add up to the artifact are thrown away.
    pub async fn download(&self, art: &pb::ArtifactRef, dest: &Path) -> Result<()> {
        self.download_cut_after(art, dest, None).await
    }

    /// [`Client::download`], stopped (as a lost connection stops it) once `cut_after` bytes
    /// arrived in this call: how the tests cut a download at a known point.
    #[doc(hidden)]
    pub async fn download_cut_after(
        &self,
        art: &pb::ArtifactRef,
        dest: &Path,
        cut_after: Option<u64>,
    ) -> Result<()> {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)
                .map_err(Error::io(format!("cannot create {}", p.display())))?;
        }
        // The partial file is this download's alone while it runs: another download of the
        // same file (a second worker sharing the folder) writes to a private one instead.
        let mut tmp = partial_path(dest);
        let mut file = open_partial(&tmp)?;
        if !lock_exclusive(&file) {
            tmp = private_path(dest);
            file = open_partial(&tmp)?;
        }
        match self.download_into(art, &tmp, file, cut_after).await {
            Ok(()) => std::fs::rename(&tmp, dest)
                .map_err(Error::io(format!("cannot write {}", dest.display()))),
            Err(e @ Error::Corrupt(_)) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
            Err(e) => {
                // Only the shared partial file is resumed; a private one is not kept.
                if tmp != partial_path(dest) {
                    let _ = std::fs::remove_file(&tmp);
                }
                Err(e)
            }
        }
    }

    async fn download_into(
        &self,
        art: &pb::ArtifactRef,
        tmp: &Path,
        mut file: std::fs::File,
        cut_after: Option<u64>,
    ) -> Result<()> {
        // What an earlier, cut download left: hashed again, then continued from its end.
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        if let Ok(mut f) = std::fs::File::open(tmp) {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(Error::io(format!("cannot read {}", tmp.display())))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            if size > art.size {
                file.set_len(0)
                    .map_err(Error::io(format!("cannot write {}", tmp.display())))?;
                hasher = Sha256::new();
                size = 0;
            }
        }
        let resumed_at = size;
        if resumed_at > 0 {
            tracing::info!(
                artifact = art.sha256,
                bytes = resumed_at,
                of = art.size,
                "resuming a cut download"
            );
        }
        let mut stream = self
            .grpc()
            .download_artifact(pb::DownloadRequest {
                artifact: Some(art.clone()),
                offset: resumed_at,
            })
            .await
            .map_err(|s| {
                Error::Refused(format!(
                    "download of artifact {} refused: {}",
                    art.sha256,
                    explain(&s)
                ))
            })?
            .into_inner();
        while let Some(chunk) = stream.message().await.map_err(|s| {
            Error::Refused(format!(
                "download of artifact {} failed: {}",
                art.sha256,
                s.message()
            ))
        })? {
            hasher.update(&chunk.data);
            size += chunk.data.len() as u64;
            if size > art.size {
                return Err(Error::Corrupt(format!(
                    "artifact {} is larger than its announced {} bytes",
                    art.sha256, art.size
                )));
            }
            file.write_all(&chunk.data)
                .map_err(Error::io(format!("cannot write {}", tmp.display())))?;
            if cut_after.is_some_and(|c| size - resumed_at >= c) {
                file.sync_all().ok();
                return Err(Error::Refused(format!(
                    "download of artifact {} cut after {} bytes",
                    art.sha256,
                    size - resumed_at
                )));
            }
        }
        file.sync_all().ok();
        let got = hex(&hasher.finalize());
        if got != art.sha256 || size != art.size {
            return Err(Error::Corrupt(format!(
                "artifact {} arrived corrupt: sha256 {got}, {size} of {} bytes",
                art.sha256, art.size
            )));
        }
        Ok(())
    }

    /// Name uploaded files as a model the workers can fetch (`coordinator:NAME`).
    pub async fn push_model(&self, name: &str, files: Vec<pb::FileRef>) -> Result<pb::ModelEntry> {
        Ok(self
            .grpc()
            .push_model(pb::PushModelRequest {
                name: name.to_string(),
                files,
            })
            .await
            .map_err(|s| Error::Refused(format!("push of model {name} refused: {}", explain(&s))))?
            .into_inner())
    }

    /// The models pushed to the coordinator.
    pub async fn list_models(&self) -> Result<Vec<pb::ModelEntry>> {
        Ok(self
            .grpc()
            .list_models(pb::ListModelsRequest {})
            .await
            .map_err(|s| Error::Refused(format!("listing models refused: {}", explain(&s))))?
            .into_inner()
            .models)
    }
}

/// The file beside `dest` a download in progress writes to: the same name each time, so a
/// cut download resumes from it.
fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial"))
}

/// A partial file of this download only (when another holds [`partial_path`]): not resumed.
fn private_path(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut p = partial_path(dest).into_os_string();
    p.push(format!("-{}-{n}", std::process::id()));
    PathBuf::from(p)
}

fn open_partial(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

/// Take `file`'s advisory lock without waiting; false when another holds it. It is let go
/// when the file is closed.
#[cfg(unix)]
fn lock_exclusive(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this process holds open; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn lock_exclusive(_: &std::fs::File) -> bool {
    false
}

fn check_stored(stored: &pb::ArtifactRef, sent: &pb::ArtifactRef, what: &str) -> Result<()> {
    if stored.sha256 != sent.sha256 {
        return Err(Error::Corrupt(format!(
            "the coordinator stored {what} as {}, not {}",
            stored.sha256, sent.sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls() {
        assert_eq!(endpoint_url("10.0.0.5:7070", false), "http://10.0.0.5:7070");
        assert_eq!(endpoint_url("10.0.0.5:7070", true), "https://10.0.0.5:7070");
        assert_eq!(endpoint_url("https://c:7070", false), "https://c:7070");
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("flotilla-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "s3cret\n").unwrap();
        assert_eq!(read_token_file(&good).unwrap(), "s3cret");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = read_token_file(&empty).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = read_token_file(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_files_name_the_flag_at_fault() {
        assert!(ClientTls::from_files(None, None, None).unwrap().is_none());
        let err = ClientTls::from_files(None, Some(Path::new("c.pem")), Some(Path::new("k")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-ca"), "{err}");
        let err = ClientTls::from_files(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-ca") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }
}
