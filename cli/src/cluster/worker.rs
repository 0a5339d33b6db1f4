//! `flotilla worker`: register this machine and run shards until stopped (Ctrl-C, SIGTERM).
//!
//! `--etcd` registers the worker (a lease-bound key with its capabilities) and finds the
//! coordinator through the leader key; `--coordinator` connects to a fixed address instead
//! (with or without `--etcd`).

use super::connect::AuthArgs;
use crate::output::{print_json, OutputFormat};
use anyhow::{bail, Context, Result};
use flotilla_client::registry::{EtcdRegistry, Registry};
use flotilla_engine::loader::{flotilla_home, LoadOptions};
use flotilla_worker::{run_worker, AgentConfig, CoordinatorAddress, ModelCache};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// etcd endpoints, comma-separated (http://host:2379): register here and find the
    /// coordinator's address under its leader key.
    #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The coordinator's address (host:port or URL), instead of the leader key.
    #[arg(long, env = "FLOTILLA_COORDINATOR")]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Device to run models on: cpu, cuda:N, metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Shards to run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// This worker's id (default: host name and process id).
    #[arg(long)]
    pub id: Option<String>,
    /// Models kept loaded between shards (least recently used out first).
    #[arg(long, default_value_t = 2)]
    pub keep_models: usize,
    /// Downloads, embedding cache and scratch space (default: $FLOTILLA_HOME/worker).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep at most this many GB of files fetched from the coordinator (sweep files,
    /// adapters, models pushed with `flotilla model push`); least recently used go first.
    /// Default: no limit.
    #[arg(long, value_name = "GB")]
    pub cache_budget_gb: Option<f64>,
    /// Time-to-live of this worker's etcd lease (seconds): how soon the coordinator notices
    /// the machine is gone if it dies without a word.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_s: u64,
    /// Serve this worker's Prometheus metrics (/metrics), liveness (/healthz) and readiness
    /// (/readyz: 200 while connected to a coordinator) over HTTP here, e.g. 0.0.0.0:9091.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Take shards only while this PC's user is away: no keyboard or mouse input for
    /// --idle-minutes (where the desktop reports it) and other programs below
    /// --idle-cpu-percent of the CPU. When the user is back, running shards get
    /// --yield-within-s to finish, then are handed back (requeued, nothing lost).
    #[arg(long)]
    pub when_idle: bool,
    #[arg(long, default_value_t = 5.0, requires = "when_idle")]
    pub idle_minutes: f64,
    #[arg(long, default_value_t = 30.0, requires = "when_idle")]
    pub idle_cpu_percent: f64,
    #[arg(long, default_value_t = 60, requires = "when_idle")]
    pub yield_within_s: u64,
}

/// What else `flotilla worker` does besides working.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Check what this PC can do as a worker: device, GPU, memory, models and whether they
    /// fit, etcd, the coordinator, clock skew; says why not where it cannot (exit 1).
    Doctor(super::doctor::Args),
    /// Make this PC a worker that starts with it: a systemd unit (user or --system) running
    /// `flotilla worker` with these settings, enabled and started.
    Install(super::install::Args),
}

pub fn run(a: Args, out: OutputFormat) -> Result<()> {
    match a.action {
        Some(Action::Doctor(d)) => return super::doctor::run(d, out),
        Some(Action::Install(i)) => return super::install::run(i, out),
        None => {}
    }
    if a.etcd.is_empty() && a.coordinator.is_none() {
        bail!("say where the cluster is: --etcd http://HOST:2379 (or --coordinator HOST:PORT)");
    }
    if a.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let token = a.auth.token()?.unwrap_or_else(|| {
        eprintln!("warning: no token (--token-file or FLOTILLA_TOKEN); the coordinator will refuse this worker unless it runs without one");
        String::new()
    });
    let device = flotilla_engine::device::parse_device(&a.device)?;
    let id = a.id.clone().unwrap_or_else(|| {
        let host = flotilla_worker::capabilities::hostname();
        let host = if host.is_empty() {
            "worker".into()
        } else {
            host
        };
        format!("{host}-{}", std::process::id())
    });
    let work_dir = a
        .work_dir
        .clone()
        .unwrap_or_else(|| flotilla_home().join("worker"));
    let tls = a.auth.client_tls()?;
    super::runtime()?.block_on(async move {
        let registry: Option<Arc<dyn Registry>> = if a.etcd.is_empty() {
            None
        } else {
            Some(Arc::new(
                EtcdRegistry::connect(&a.etcd)
                    .await?
                    .with_ttl(Duration::from_secs(a.lease_ttl_s)),
            ))
        };
        let coordinator = match (&a.coordinator, &registry) {
            (Some(addr), _) => CoordinatorAddress::Direct(addr.clone()),
            (None, Some(r)) => CoordinatorAddress::Leader(r.clone()),
            (None, None) => unreachable!("checked above"),
        };
        let config = AgentConfig {
            worker_id: id.clone(),
            coordinator,
            registry,
            token,
            tls,
            slots: a.slots,
            device_name: a.device.clone(),
            device: device.clone(),
            models: Arc::new(ModelCache::new(LoadOptions::on(device), a.keep_models)),
            cache_budget_bytes: a.cache_budget_gb.map(|gb| (gb.max(0.0) * 1e9) as u64),
            cache_dir: work_dir.join("cache"),
            work_dir: work_dir.join("shards").join(&id),
            max_backoff: Duration::from_secs(5),
            idle: a.when_idle.then(|| flotilla_worker::idle::IdlePolicy {
                idle_for: Duration::from_secs_f64(a.idle_minutes.max(0.0) * 60.0),
                cpu_percent: a.idle_cpu_percent,
                yield_within: Duration::from_secs(a.yield_within_s),
            }),
        };
        let http = match a.http {
            Some(at) => {
                let device_name = a.device.clone();
                let router = flotilla_client::observe::router(
                    Arc::new(move || flotilla_worker::metrics::global().render(&device_name)),
                    // Ready while connected to a coordinator (a Work stream is open).
                    Arc::new(|| flotilla_worker::metrics::global().is_connected()),
                );
                let (bound, task) = flotilla_client::observe::serve(at, router)
                    .await
                    .with_context(|| format!("--http {at}"))?;
                Some((bound, super::AbortOnDrop(task)))
            }
            None => None,
        };
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({
                "event": "started", "worker_id": id, "device": a.device, "slots": a.slots,
                "http": http.as_ref().map(|(b, _)| b.to_string()),
            }))?,
            OutputFormat::Text => eprintln!(
                "worker {id} on {} with {} slot(s); Ctrl-C stops it",
                a.device, a.slots
            ),
        }
        Ok(run_worker(config, super::shutdown_signal()).await?)
    })
}
