//! `flotilla coordinator`: serve sweeps to workers until stopped (Ctrl-C or SIGTERM).
//!
//! With `--etcd`, it campaigns for the leader key (a standby waits until the leader goes) and
//! publishes its address there; workers and the CLI need only the etcd endpoints. Without
//! `--etcd` it keeps membership in memory: workers then connect with `--coordinator`.
//! Everything durable is in `--data-dir`: restart it on the same folder and sweeps go on.

use super::connect::AuthArgs;
use crate::output::{print_json, OutputFormat};
use anyhow::{Context, Result};
use flotilla_client::registry::{EtcdRegistry, MemoryRegistry, Registry};
use flotilla_coordinator::{serve, CoordinatorConfig, TlsConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// etcd endpoints, comma-separated (http://host:2379). Without it, membership is kept in
    /// memory and workers must be given --coordinator.
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// The address workers and the CLI should use, published under the leader key
    /// (default: this host's name and the --listen port).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Folder for the coordinator's state (SQLite), artifacts and results.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// File whose first line is the cluster's shared token (or set FLOTILLA_TOKEN).
    #[arg(long, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate to serve TLS with.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates are required (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often workers report while running and ask while idle (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// A worker silent this long is dropped and its shards requeued (seconds).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout_s: u64,
    /// Time-to-live of the leader key's etcd lease (seconds): how long a standby waits after
    /// this coordinator dies.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_s: u64,
    /// Serve the dashboard (/), Prometheus metrics (/metrics), liveness (/healthz) and
    /// readiness (/readyz) over HTTP here, e.g. 0.0.0.0:9090. The gRPC port also answers
    /// grpc.health.v1.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

pub fn run(a: Args, out: OutputFormat) -> Result<()> {
    let auth = AuthArgs {
        token_file: a.token_file.clone(),
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    };
    let token = auth.require_token("flotilla coordinator")?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert_pem: read(cert, "TLS certificate (--tls-cert)")?,
            key_pem: read(key, "TLS key (--tls-key)")?,
            client_ca_pem: a
                .tls_client_ca
                .as_ref()
                .map(|p| read(p, "client CA (--tls-client-ca)"))
                .transpose()?,
        }),
        _ => None,
    };
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create it", a.data_dir.display()))?;
    super::runtime()?.block_on(async move {
        let registry: Arc<dyn Registry> = if a.etcd.is_empty() {
            tracing::warn!("no --etcd: membership in memory; workers need --coordinator");
            Arc::new(MemoryRegistry::new())
        } else {
            Arc::new(
                etcd_patiently(&a.etcd, Duration::from_secs(30))
                    .await?
                    .with_ttl(Duration::from_secs(a.lease_ttl_s)),
            )
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise = a.advertise.clone().or_else(|| {
            a.listen.ip().is_unspecified().then(|| {
                let host = flotilla_worker::capabilities::hostname();
                format!("{scheme}://{host}:{}", a.listen.port())
            })
        });
        let mut config = CoordinatorConfig::new(a.listen, &a.data_dir, registry);
        config.advertise = advertise;
        config.token = Some(token);
        config.tls = tls;
        config.heartbeat = Duration::from_millis(a.heartbeat_ms.max(50));
        config.heartbeat_timeout = Duration::from_secs(a.heartbeat_timeout_s.max(1));
        config.http = a.http;
        if !a.etcd.is_empty() {
            eprintln!(
                "campaigning for the leader key in etcd ({})",
                a.etcd.join(",")
            );
        }
        let coordinator = serve(config).await?;
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({
                "event": "serving",
                "listen": coordinator.local_addr().to_string(),
                "address": coordinator.address(),
                "data_dir": a.data_dir,
                "http": coordinator.http_addr().map(|h| h.to_string()),
            }))?,
            OutputFormat::Text => {
                eprintln!(
                    "coordinator serving on {} (published as {}), state in {}",
                    coordinator.local_addr(),
                    coordinator.address(),
                    a.data_dir.display()
                );
                if let Some(h) = coordinator.http_addr() {
                    eprintln!("dashboard at http://{h}/ (metrics at /metrics)");
                }
            }
        }
        super::shutdown_signal().await;
        eprintln!("stopping the coordinator");
        coordinator.shutdown().await;
        Ok(())
    })
}

/// Connects to etcd, waiting up to `patience` for it to answer: started together (a script, a
/// pod beside it), etcd may take a moment to listen.
async fn etcd_patiently(endpoints: &[String], patience: Duration) -> anyhow::Result<EtcdRegistry> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut said = false;
    loop {
        match EtcdRegistry::connect(endpoints).await {
            Ok(r) => return Ok(r),
            Err(e) if tokio::time::Instant::now() < deadline => {
                if !said {
                    eprintln!("waiting for etcd at {} ({e})", endpoints.join(","));
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(format!(
                    "etcd did not answer within {}s",
                    patience.as_secs()
                )))
            }
        }
    }
}
