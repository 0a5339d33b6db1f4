//! `flotilla worker doctor`: what this PC can do as a worker, and why not where it cannot —
//! device, GPU, memory, the models it has and whether they fit, etcd, the coordinator, and
//! the clock's skew against the coordinator's.

use super::connect::ConnectArgs;
use crate::output::{print_json, OutputFormat};
use anyhow::Result;
use flotilla_client::registry::{EtcdRegistry, Registry};
use flotilla_proto::v1 as pb;
use flotilla_worker::capabilities::Capabilities;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The device the worker would run on: cpu, cuda:N, metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One finding: `ok` false means a worker here would not work (or not well), for `why`.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run(a: Args, out: OutputFormat) -> Result<()> {
    let mut checks = Vec::new();
    let device = flotilla_engine::device::parse_device(&a.device);
    checks.push(Check {
        name: "device",
        ok: device.is_ok(),
        detail: match &device {
            Ok(_) => format!("{} is usable by this build", a.device),
            Err(e) => format!("{e:#}"),
        },
    });
    let caps = Capabilities::detect(&a.device, 1);
    let gpu = a.device.starts_with("cuda");
    if gpu {
        checks.push(Check {
            name: "gpu",
            ok: !caps.gpu_name.is_empty(),
            detail: if caps.gpu_name.is_empty() {
                "nvidia-smi does not answer: no NVIDIA driver, or no such GPU".into()
            } else {
                format!(
                    "{}, {} ({} free), compute capability {}",
                    caps.gpu_name,
                    gib(caps.gpu_memory_bytes),
                    gib(caps.memory_free_bytes),
                    if caps.compute_capability.is_empty() {
                        "unknown"
                    } else {
                        &caps.compute_capability
                    }
                )
            },
        });
    }
    checks.push(Check {
        name: "memory",
        ok: caps.ram_bytes > 0,
        detail: format!(
            "{} RAM, {} cores{}",
            gib(caps.ram_bytes),
            caps.cores,
            if gpu {
                String::new()
            } else {
                format!(", {} available", gib(caps.memory_free_bytes))
            }
        ),
    });
    let fits: Vec<String> = caps
        .model_footprints
        .iter()
        .map(|f| {
            let need = f.weights_bytes + f.kv_bytes_per_token * 4096;
            let verdict = if caps.memory_free_bytes == 0 || need <= caps.memory_free_bytes {
                "fits"
            } else {
                "does NOT fit the free memory"
            };
            format!(
                "{} ({} + 4k-token KV cache: {verdict})",
                f.spec,
                gib(f.weights_bytes)
            )
        })
        .collect();
    checks.push(Check {
        name: "models",
        ok: !caps.models_cached.is_empty(),
        detail: if caps.models_cached.is_empty() {
            "no models in the cache (scripts/fetch-models.sh, or copy GGUF files / model folders \
             into $FLOTILLA_HOME/models): every shard would fail"
                .into()
        } else {
            format!(
                "{} cached: {}{}",
                caps.models_cached.len(),
                caps.models_cached.join(", "),
                if fits.is_empty() {
                    String::new()
                } else {
                    format!("; {}", fits.join("; "))
                }
            )
        },
    });
    let (cluster, skew) = super::runtime()?.block_on(reach(&a.connect));
    checks.extend(cluster);
    let ok = checks.iter().all(|c| c.ok);
    let findings: Vec<Value> = checks
        .iter()
        .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail}))
        .collect();
    match out {
        OutputFormat::Json => print_json(&json!({
            "ok": ok, "device": a.device, "checks": findings,
            "clock_skew_s": skew, "capabilities": caps,
        }))?,
        OutputFormat::Text => {
            for c in &checks {
                println!(
                    "{} {:<12} {}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
            println!(
                "{}",
                if ok {
                    "this PC can work as a flotilla worker"
                } else {
                    "this PC cannot work as a flotilla worker yet: see FAIL above"
                }
            );
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// etcd (and the elected coordinator's address), the coordinator with the token, and the
/// clock skew: this machine's clock less the coordinator's, from the last time it saw its
/// connected workers (they report every heartbeat, so good to about a second).
async fn reach(c: &ConnectArgs) -> (Vec<Check>, Option<f64>) {
    let mut checks = Vec::new();
    if c.etcd.is_empty() && c.coordinator.is_none() {
        checks.push(Check {
            name: "cluster",
            ok: false,
            detail: "say where the cluster is: --etcd http://HOST:2379 (or --coordinator \
                     HOST:PORT), or set FLOTILLA_ETCD"
                .into(),
        });
        return (checks, None);
    }
    if !c.etcd.is_empty() {
        match EtcdRegistry::connect(&c.etcd).await {
            Ok(r) => {
                let leader = r.leader().await;
                checks.push(Check {
                    name: "etcd",
                    ok: true,
                    detail: format!("{} answers", c.etcd.join(",")),
                });
                if c.coordinator.is_none() {
                    checks.push(Check {
                        name: "leader",
                        ok: matches!(leader, Ok(Some(_))),
                        detail: match leader {
                            Ok(Some(a)) => format!("the elected coordinator is {a}"),
                            Ok(None) => "no coordinator is elected (is `flotilla coordinator` \
                                         running?)"
                                .into(),
                            Err(e) => format!("cannot read the leader key: {e}"),
                        },
                    });
                }
            }
            Err(e) => checks.push(Check {
                name: "etcd",
                ok: false,
                detail: format!("{e}"),
            }),
        }
    }
    if checks.iter().any(|c| !c.ok) {
        return (checks, None);
    }
    let t0 = std::time::Instant::now();
    let listed = match c.connect().await {
        Ok(client) => client
            .grpc()
            .list_workers(pb::ListWorkersRequest {})
            .await
            .map(|r| r.into_inner().workers)
            .map_err(|s| anyhow::anyhow!(flotilla_client::explain(&s))),
        Err(e) => Err(e),
    };
    let rtt = t0.elapsed();
    let mut skew = None;
    match listed {
        Ok(workers) => {
            checks.push(Check {
                name: "coordinator",
                ok: true,
                detail: format!(
                    "answers with this token in {:.0} ms; {} worker(s) known",
                    rtt.as_secs_f64() * 1e3,
                    workers.len()
                ),
            });
            let latest = workers
                .iter()
                .filter(|w| w.connected)
                .map(|w| w.last_seen_unix_ms)
                .max();
            if let Some(seen) = latest {
                let now = flotilla_contract::provenance::now_ms();
                let s = (now - seen) as f64 / 1e3;
                skew = Some(s);
                checks.push(Check {
                    name: "clock",
                    ok: s.abs() < 30.0,
                    detail: format!(
                        "{s:+.1} s against the coordinator (within its heartbeat; more than 30 s \
                         breaks heartbeats and timestamps)"
                    ),
                });
            }
        }
        Err(e) => checks.push(Check {
            name: "coordinator",
            ok: false,
            detail: format!("{e:#}"),
        }),
    }
    (checks, skew)
}
