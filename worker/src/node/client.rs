//! A gRPC client of the coordinator, as workers and the CLI open it: the address (with or
//! without `http://`), the shared token sent as `authorization: Bearer <token>` on every call,
//! optional TLS (a CA to trust, and a client certificate for mutual TLS).

use anyhow::{bail, Context, Result};
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The largest message a client accepts: assignments carry their cases inline.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The coordinator client with the token attached to every call.
pub type Client = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

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
            .context("the token must be printable ASCII")?;
        Ok(Self(Some(value)))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// TLS settings of a client.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file of the CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// PEM certificate and key of this client, for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    pub fn is_enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }
}

/// Reads a token file: its first line, trimmed. An empty file is an error naming it.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
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

/// Connects to the coordinator at `address`.
pub async fn connect(address: &str, token: &str, tls: &ClientTls) -> Result<Client> {
    let url = endpoint_url(address, tls.is_enabled());
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("coordinator address {address:?} is not valid"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        match &tls.ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read the TLS CA {}", ca.display()))?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            None => bail!(
                "{address}: TLS needs the CA certificate that signed the coordinator's (--tls-ca)"
            ),
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let cert = std::fs::read(cert).with_context(|| {
                    format!("cannot read the TLS certificate {}", cert.display())
                })?;
                let key = std::fs::read(key)
                    .with_context(|| format!("cannot read the TLS key {}", key.display()))?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => bail!("mutual TLS needs both --tls-cert and --tls-key"),
        }
        endpoint = endpoint
            .tls_config(config)
            .context("TLS configuration refused")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    Ok(
        CoordinatorClient::with_interceptor(channel, BearerToken::new(token)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// A one-sentence explanation of a gRPC error for people.
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
}
