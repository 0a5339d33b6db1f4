//! Finding and reaching a coordinator: `--coordinator ADDR`, or `--etcd URLS` to read the
//! elected coordinator's address from its leader key; the shared token from `--token-file`
//! or `FLOTILLA_TOKEN`; TLS from `--tls-ca` (and `--tls-cert`/`--tls-key` for mutual TLS).

use anyhow::{bail, Result};
use flotilla_client::client::{endpoint_url, read_token_file};
use flotilla_client::registry::{EtcdRegistry, Registry};
use flotilla_coordinator::client::{Client, ClientTls};
use std::path::PathBuf;

/// How a command proves itself to the coordinator.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// File whose first line is the cluster's shared token (or set FLOTILLA_TOKEN).
    #[arg(long, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the coordinator's TLS certificate (turns TLS on).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a coordinator that requires mutual TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl AuthArgs {
    /// The token: `--token-file`, else `FLOTILLA_TOKEN`, else none.
    pub fn token(&self) -> Result<Option<String>> {
        if let Some(f) = &self.token_file {
            return Ok(Some(read_token_file(f)?));
        }
        Ok(std::env::var("FLOTILLA_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// The token, required (servers and workers).
    pub fn require_token(&self, command: &str) -> Result<String> {
        match self.token()? {
            Some(t) => Ok(t),
            None => bail!(
                "{command} needs the cluster's shared token: --token-file FILE or FLOTILLA_TOKEN"
            ),
        }
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// TLS settings of a client of the coordinator (CLI commands and workers alike).
    pub fn client_tls(&self) -> Result<Option<ClientTls>> {
        Ok(ClientTls::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?)
    }
}

/// Where the coordinator is.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The coordinator's address (host:port or URL).
    #[arg(long, env = "FLOTILLA_COORDINATOR")]
    pub coordinator: Option<String>,
    /// etcd endpoints, comma-separated (http://host:2379), to find the elected coordinator.
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl ConnectArgs {
    /// The coordinator's URL: as given, or read from the leader key in etcd.
    pub async fn address(&self) -> Result<String> {
        let tls = self.auth.tls_enabled();
        if let Some(a) = &self.coordinator {
            return Ok(endpoint_url(a, tls));
        }
        if self.etcd.is_empty() {
            bail!(
                "say where the coordinator is: --coordinator HOST:PORT or --etcd http://HOST:2379"
            );
        }
        let registry = EtcdRegistry::connect(&self.etcd).await?;
        match registry.leader().await? {
            Some(a) => Ok(endpoint_url(&a, tls)),
            None => bail!(
                "no coordinator is elected in etcd at {} (is `flotilla coordinator` running?)",
                self.etcd.join(",")
            ),
        }
    }

    /// A client of the coordinator.
    pub async fn connect(&self) -> Result<Client> {
        let address = self.address().await?;
        Ok(Client::connect_with(&address, self.auth.token()?, self.auth.client_tls()?).await?)
    }

    /// [`ConnectArgs::connect`], tried again every second for up to `patience` while the
    /// coordinator cannot be reached (restarting, or not yet elected): for commands that
    /// follow a sweep, which survive a coordinator restart once connected too.
    pub async fn connect_patiently(&self, patience: std::time::Duration) -> Result<Client> {
        if self.coordinator.is_none() && self.etcd.is_empty() {
            // Nothing to wait for: say what is missing now.
            return self.connect().await;
        }
        let start = std::time::Instant::now();
        let mut warned = false;
        loop {
            match self.connect().await {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() < patience => {
                    if !warned {
                        tracing::warn!(error = %format!("{e:#}"), "coordinator not reachable yet; retrying for up to {patience:?}");
                        warned = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl ConnectArgs {
    /// The `flotilla worker` command that joins the cluster this command reached, with the
    /// same way of finding it (the etcd endpoints, or the coordinator's address) and the same
    /// token: what a watch tells a user whose shards wait with no worker connected.
    pub fn worker_hint(&self) -> String {
        let mut cmd = String::from("flotilla worker");
        if !self.etcd.is_empty() {
            cmd += &format!(" --etcd {}", self.etcd.join(","));
        } else if let Some(a) = &self.coordinator {
            cmd += &format!(" --coordinator {a}");
        }
        match &self.auth.token_file {
            Some(f) => cmd += &format!(" --token-file {}", f.display()),
            // The worker reads FLOTILLA_TOKEN as this command did.
            None if std::env::var_os("FLOTILLA_TOKEN").is_some() => {}
            None => cmd += " --token-file FILE",
        }
        if let Some(ca) = &self.auth.tls_ca {
            cmd += &format!(" --tls-ca {}", ca.display());
        }
        cmd
    }
}

/// A gRPC error as one sentence for people.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", flotilla_client::client::explain(&status))
}
