//! Talking to a coordinator from the CLI or a worker: a channel that adds the bearer token
//! to every call, artifact upload/download in chunks with hash checks, and submitting a sweep
//! file with everything it names.

use crate::artifacts::{hash_file, hex, CHUNK_SIZE};
use crate::sweep::{FileRoot, ModelCheck, Sweep};
use anyhow::Context;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

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

/// A connection to a coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc,
}

impl Client {
    /// Connect to `address` (`http://host:port`).
    pub async fn connect(address: &str, token: Option<String>) -> anyhow::Result<Client> {
        Self::connect_with(address, token, None).await
    }

    /// Connect with optional TLS (`https://host:port`).
    pub async fn connect_with(
        address: &str,
        token: Option<String>,
        tls: Option<ClientTls>,
    ) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .with_context(|| format!("coordinator address `{address}`"))?
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let mut t = ClientTlsConfig::new();
            if let Some(ca) = tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = tls.identity {
                t = t.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = tls.domain {
                t = t.domain_name(d);
            }
            endpoint = endpoint.tls_config(t).context("client TLS configuration")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {address}"))?;
        let token = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token must be printable ASCII")?,
            ),
            None => None,
        };
        let grpc = CoordinatorClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(Client { grpc })
    }

    /// The generated client, for calls without a helper here (the Work stream).
    pub fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    /// Upload bytes as an artifact.
    pub async fn upload_bytes(&self, data: &[u8]) -> anyhow::Result<pb::ArtifactRef> {
        let art = pb::ArtifactRef {
            sha256: hex(&Sha256::digest(data)),
            size: data.len() as u64,
        };
        let mut chunks: Vec<pb::ArtifactChunk> = data
            .chunks(CHUNK_SIZE)
            .map(|c| pb::ArtifactChunk {
                artifact: None,
                data: c.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::ArtifactChunk::default());
        }
        chunks[0].artifact = Some(art.clone());
        let r = self
            .grpc()
            .upload_artifact(tokio_stream::iter(chunks))
            .await
            .map_err(|s| anyhow::anyhow!("upload refused: {}", s.message()))?;
        Ok(r.into_inner())
    }

    /// Upload a file as an artifact (streamed in chunks).
    pub async fn upload_file(&self, path: &Path) -> anyhow::Result<pb::ArtifactRef> {
        let p = path.to_path_buf();
        let (sha256, size) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await?
            .with_context(|| format!("{}", path.display()))?;
        let art = pb::ArtifactRef { sha256, size };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let p = path.to_path_buf();
        let first = art.clone();
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; CHUNK_SIZE];
            let mut artifact = Some(first);
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 && artifact.is_none() {
                    return Ok(());
                }
                let chunk = pb::ArtifactChunk {
                    artifact: artifact.take(),
                    data: buf[..n].to_vec(),
                };
                if tx.blocking_send(chunk).is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let r = self
            .grpc()
            .upload_artifact(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("{}: upload refused: {}", path.display(), s.message()))?;
        reader
            .await?
            .with_context(|| format!("{}", path.display()))?;
        Ok(r.into_inner())
    }

    /// Download an artifact into `dest`, checking its hash; nothing is left at `dest` when
    /// the check fails.
    pub async fn download(&self, art: &pb::ArtifactRef, dest: &Path) -> anyhow::Result<()> {
        let mut stream = self
            .grpc()
            .download_artifact(art.clone())
            .await
            .map_err(|s| anyhow::anyhow!("artifact {}: {}", art.sha256, s.message()))?
            .into_inner();
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("{}", p.display()))?;
        }
        let tmp = dest.with_extension("part");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
        let mut h = Sha256::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("artifact {}: {}", art.sha256, s.message()))?
        {
            h.update(&chunk.data);
            f.write_all(&chunk.data)?;
        }
        drop(f);
        let got = hex(&h.finalize());
        if got != art.sha256 {
            let _ = std::fs::remove_file(&tmp);
            anyhow::bail!("artifact {} arrived with sha256 {got}", art.sha256);
        }
        std::fs::rename(&tmp, dest).with_context(|| format!("{}", dest.display()))?;
        Ok(())
    }

    /// Check a sweep file here (models for spelling only: the workers hold them), upload every
    /// file it names, and submit it.
    pub async fn submit_file(&self, path: &Path) -> anyhow::Result<pb::SweepStatus> {
        self.submit_file_checked(path, ModelCheck::Syntax).await
    }

    /// As [`Client::submit_file`], choosing how models are checked (`Local` for embedded
    /// runs, where the workers share this machine's models).
    pub async fn submit_file_checked(
        &self,
        path: &Path,
        models: ModelCheck,
    ) -> anyhow::Result<pb::SweepStatus> {
        let sweep = Sweep::load(path, models)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let files = sweep
            .local_files(&FileRoot::local(&dir))
            .with_context(|| format!("listing the files {} names", path.display()))?;
        let mut refs = Vec::new();
        for (sweep_path, local) in files {
            let art = self.upload_file(&local).await?;
            refs.push(pb::FileRef {
                path: sweep_path,
                artifact: Some(art),
            });
        }
        let yaml = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let status = self
            .grpc()
            .submit_sweep(pb::SubmitSweepRequest {
                yaml,
                source_path: path.display().to_string(),
                files: refs,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(status.into_inner())
    }
}
