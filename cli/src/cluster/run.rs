//! `flotilla run SWEEP.yaml`: a whole sweep on this machine, no etcd, no cluster.
//!
//! Embedded mode is the cluster in one process, not a shortcut around it: a coordinator on a
//! loopback port (with a fresh random token), an in-memory registry in place of etcd, and N
//! workers that register, open Work streams over real gRPC, download the sweep's files by
//! hash and run shards exactly as `flotilla worker` does. So a sweep gives the same results
//! here as on a cluster with the same seed, and what works here works there.

use super::progress::follow;
use super::render::{fetch_results, results_json, sweep_state, write_results};
use super::AbortOnDrop;
use crate::output::{print_json, spinner, OutputFormat};
use crate::provenance::Rerun;
use anyhow::{bail, Context, Result};
use flotilla_client::registry::{MemoryRegistry, Registry};
use flotilla_coordinator::client::{Client, SubmitSweep};
use flotilla_coordinator::sweep::{ModelCheck, Sweep};
use flotilla_coordinator::{serve, CoordinatorConfig};
use flotilla_engine::loader::LoadOptions;
use flotilla_proto::v1 as pb;
use flotilla_worker::{run_worker, AgentConfig, CoordinatorAddress, ModelCache};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The sweep file (YAML; see docs/SWEEPS.md and examples/).
    #[arg(required_unless_present = "from")]
    pub sweep: Option<PathBuf>,
    /// Run a results folder again: the sweep (or `flotilla eval` command) its results.json
    /// records, after checking that every recorded input on this machine has the recorded
    /// sha256. Results go to --out (default: RESULTS_DIR-rerun).
    #[arg(long, value_name = "RESULTS_DIR", conflicts_with = "sweep")]
    pub from: Option<PathBuf>,
    /// In-process workers.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Shards each worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Device for the workers' models: cpu, cuda:N, metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep the coordinator's state here (default: a temporary folder, removed at the end).
    /// Run again with the same folder to continue an interrupted sweep.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Results folder (default: flotilla-results/<sweep name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Models kept loaded between shards (shared by the in-process workers).
    #[arg(long, default_value_t = 3)]
    pub keep_models: usize,
    /// Serve the dashboard (/, read-only), the metrics (/metrics), /healthz and /readyz over
    /// HTTP here while the sweep runs, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

/// A data folder removed when dropped, unless the user chose it.
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn random_token() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect()
}

pub fn run(mut a: Args, out: OutputFormat) -> Result<()> {
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if a.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let (yaml, sweep_path) = match (a.sweep.clone(), a.from.clone()) {
        (Some(path), _) => {
            let yaml = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the sweep file {}", path.display()))?;
            // Recorded absolute in the results' provenance, so --from finds it from anywhere.
            (yaml, std::fs::canonicalize(&path).unwrap_or(path))
        }
        (None, Some(dir)) => {
            let rerun_out = std::env::current_dir()?.join(
                a.out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("{}-rerun", dir.display()))),
            );
            match crate::provenance::from_results(&dir)? {
                Rerun::Eval { args, cwd } => {
                    return crate::provenance::exec_eval(&args, &cwd, &rerun_out)
                }
                Rerun::Sweep { yaml, path } => {
                    eprintln!(
                        "running again the sweep recorded in {} (as {}), results to {}",
                        dir.display(),
                        path.display(),
                        rerun_out.display()
                    );
                    a.out = Some(rerun_out);
                    (yaml, path)
                }
            }
        }
        (None, None) => bail!("give a sweep file, or --from RESULTS_DIR"),
    };
    // Every problem in the sweep file, before anything starts.
    let sweep = Sweep::load_text(&yaml, &sweep_path, ModelCheck::Local)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = flotilla_engine::device::parse_device(&a.device)?;
    let results_dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("flotilla-results").join(&sweep.name));
    let data = match &a.data_dir {
        Some(p) => DataDir {
            path: p.clone(),
            temporary: false,
        },
        None => DataDir {
            path: std::env::temp_dir().join(format!(
                "flotilla-run-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            )),
            temporary: true,
        },
    };
    std::fs::create_dir_all(&data.path)
        .with_context(|| format!("--data-dir {}: cannot create it", data.path.display()))?;

    super::runtime()?.block_on(async {
        let token = random_token();
        let registry = Arc::new(MemoryRegistry::new());
        let mut config = CoordinatorConfig::new(
            "127.0.0.1:0".parse().expect("a loopback address"),
            &data.path,
            registry.clone(),
        );
        config.token = Some(token.clone());
        config.heartbeat = Duration::from_millis(500);
        let coordinator = serve(config).await?;
        // One exposition for the embedded coordinator and its in-process workers.
        let _http = match a.http {
            Some(at) => {
                let core = coordinator.core().clone();
                let device_name = a.device.clone();
                let render = Arc::new(move || {
                    super::join_expositions(&[
                        core.render_metrics(),
                        flotilla_worker::metrics::global().render(&device_name),
                    ])
                });
                // The dashboard too, read-only: the run's token is its own (Ctrl-C stops it).
                let router = flotilla_client::observe::router(render, Arc::new(|| true)).merge(
                    flotilla_coordinator::dashboard::routes(
                        coordinator.core().clone(),
                        Some(token.clone()),
                    ),
                );
                let (bound, task) = flotilla_client::observe::serve(at, router)
                    .await
                    .with_context(|| format!("--http {at}"))?;
                eprintln!("dashboard at http://{bound}/ (metrics at /metrics)");
                Some(AbortOnDrop(task))
            }
            None => None,
        };
        let address = format!("http://{}", coordinator.local_addr());
        tracing::info!(%address, "embedded coordinator");

        // The workers share one model cache: N workers on one machine load each model once.
        let models = Arc::new(ModelCache::new(LoadOptions::on(device.clone()), a.keep_models));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for i in 1..=a.workers {
            let id = format!("local-{i}");
            let config = AgentConfig {
                worker_id: id.clone(),
                coordinator: CoordinatorAddress::Direct(address.clone()),
                registry: Some(registry.clone() as Arc<dyn Registry>),
                token: token.clone(),
                tls: Default::default(),
                slots: a.slots,
                device_name: a.device.clone(),
                device: device.clone(),
                models: models.clone(),
                cache_budget_bytes: None,
                cache_dir: data.path.join("worker-cache"),
                work_dir: data.path.join("work").join(&id),
                max_backoff: Duration::from_secs(1),
                idle: None,
            };
            let mut stop = stop_rx.clone();
            workers.push(tokio::spawn(run_worker(config, async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
        }

        let outcome = async {
            let client = Client::connect(&address, Some(token.clone())).await?;
            let pb = spinner(format!("uploading the files of {}", sweep_path.display()));
            let submitted = client.submit_text(&yaml, &sweep_path, ModelCheck::Local).await;
            pb.finish_and_clear();
            let submitted = submitted?;
            tracing::info!(sweep = submitted.sweep_id, "submitted");
            let status = tokio::select! {
                s = follow(&client, &submitted.sweep_id) => s?,
                _ = super::shutdown_signal() => {
                    let _ = client.grpc().cancel_sweep(pb::SweepRef { sweep_id: submitted.sweep_id.clone() }).await;
                    bail!("interrupted: sweep {} cancelled", submitted.sweep_id);
                }
            };
            let mut results = fetch_results(&client, &status.sweep_id).await?;
            if let Some(p) = results.report.provenance.as_mut() {
                crate::provenance::stamp(p, true);
            }
            let files = write_results(&client, &results, &results_dir).await?;
            Ok::<_, anyhow::Error>((status, results, files))
        }
        .await;

        let _ = stop_tx.send(true);
        for w in workers {
            match tokio::time::timeout(Duration::from_secs(5), w).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %format!("{e:#}"), "a worker failed"),
                Ok(_) => {}
                Err(_) => tracing::warn!("a worker did not stop within 5 s"),
            }
        }
        coordinator.shutdown().await;

        let (status, results, files) = outcome?;
        match out {
            OutputFormat::Json => {
                let mut v = results_json(&results, Some(&results_dir), &files);
                v["name"] = serde_json::json!(status.name);
                v["error"] = serde_json::json!((!status.error.is_empty()).then_some(&status.error));
                print_json(&v)?;
            }
            OutputFormat::Text => {
                print!("{}", results.raw.report_markdown);
                for r in results.cases.iter().filter(|r| r.error.is_some()) {
                    eprintln!(
                        "case {} ({} / {} / {}) failed: {}",
                        r.case_id,
                        r.model,
                        r.adapter,
                        r.variant,
                        r.error.as_deref().unwrap_or_default()
                    );
                }
                eprintln!("results written to {}", results_dir.display());
            }
        }
        if status.state != pb::SweepState::Succeeded as i32 {
            bail!(
                "sweep {} {}{}",
                status.sweep_id,
                sweep_state(status.state),
                if status.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", status.error)
                }
            );
        }
        Ok(())
    })
}
