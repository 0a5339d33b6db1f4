//! `flotilla bench dispatch`: how fast a real coordinator hands out shards. No-op shards go
//! through a coordinator on a loopback port to simulated workers — in-process tonic clients,
//! each on its own connection and `Work` stream, answering every assignment at once — so the
//! figures are the coordinator's own cost: scheduling, SQLite commits, gRPC.

use crate::client::Client;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::server::{serve, CoordinatorConfig};
use crate::sweep::Retries;
use flotilla_client::registry::MemoryRegistry;
use flotilla_contract::shard::{NoopResult, NoopShard};
use flotilla_contract::ShardOutput;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_message::Kind as Out;
use flotilla_proto::v1::worker_message::Kind as In;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    pub workers: usize,
    pub shards: usize,
    /// Slots each simulated worker announces.
    pub slots: u32,
    /// Where the coordinator keeps its state (a temporary folder when None).
    pub data_dir: Option<std::path::PathBuf>,
    /// Serve `--http` here, and scrape it while shards flow (`/metrics` every second, as
    /// Prometheus would; `/api/state` every two, as an open dashboard does).
    pub http: Option<std::net::SocketAddr>,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            workers: 64,
            shards: 20_000,
            slots: 4,
            data_dir: None,
            http: None,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchReport {
    pub workers: usize,
    pub shards: usize,
    pub slots: u32,
    pub seconds: f64,
    pub shards_per_second: f64,
    /// From a worker's ask to the assignment arriving, in milliseconds (each worker's first
    /// ask, made before the sweep existed, is left out).
    pub assignment_latency_p50_ms: f64,
    pub assignment_latency_p99_ms: f64,
    pub assignment_latency_max_ms: f64,
    /// Results acknowledged as stored (must equal `shards`).
    pub results_stored: usize,
    /// Whether `--http` was served and scraped, and how many scrapes answered.
    pub http: bool,
    pub scrapes: usize,
    /// Whether spans were exported (an OTLP endpoint was set): each assignment then has one.
    pub traced: bool,
}

/// `GET path` on loopback `port`; whether it answered 200.
async fn scrape(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.is_ok() && body.starts_with(b"HTTP/1.1 200")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One simulated worker: asks, answers each assignment with a result at once, asks again.
/// Returns (assignment latencies in ms, results acknowledged).
async fn worker(
    address: String,
    token: String,
    id: String,
    slots: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> CoordinatorResult<Vec<f64>> {
    let client = Client::connect(&address, Some(token)).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::WorkerMessage>();
    let send = |k: In| {
        let _ = tx.send(pb::WorkerMessage { kind: Some(k) });
    };
    send(In::Hello(pb::Hello {
        worker_id: id.clone(),
        capabilities: Some(pb::Capabilities {
            slots,
            device: "cpu".into(),
            ..Default::default()
        }),
    }));
    let mut inbound = client
        .grpc()
        .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| CoordinatorError::Internal(flotilla_client::explain(&s)))?
        .into_inner();
    let mut latencies = Vec::new();
    // Assignments not yet answered and acknowledged: a slot is free again at its ack.
    let mut outstanding: u32 = 0;
    let mut asked_at: Option<Instant> = None;
    let mut first_seen = false;
    let ask = |asked_at: &mut Option<Instant>, free: u32| {
        if free > 0 {
            *asked_at = Some(Instant::now());
            send(In::Ask(pb::WorkRequest {
                free_slots: free,
                models_loaded: Vec::new(),
                memory_free_bytes: 0,
                paused: String::new(),
                models_held: Vec::new(),
                prefill_tokens_per_s: 0.0,
            }));
        }
    };
    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // The stream ends with an error when the coordinator stops first.
                    Err(e) if *stop.borrow() => { tracing::debug!(error = %e, "stream ended"); break }
                    Err(e) => return Err(CoordinatorError::Internal(flotilla_client::explain(&e))),
                };
                match msg.kind {
                    Some(Out::Welcome(_)) => ask(&mut asked_at, slots),
                    Some(Out::Assign(a)) => {
                        outstanding += 1;
                        // The first ask waited for the sweep to be submitted: not a sample.
                        if let Some(t) = asked_at.take() {
                            if first_seen {
                                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                            }
                            first_seen = true;
                        }
                        let output = ShardOutput::Noop(NoopResult {
                            worker_id: id.clone(),
                        });
                        send(In::Result(pb::ShardResult {
                            shard_id: a.shard_id,
                            attempt: a.attempt,
                            output: output.to_json().into_bytes(),
                            artifacts: Vec::new(),
                            seconds: 0.0,
                            units: 1,
                        }));
                    }
                    Some(Out::Ack(_)) => {
                        outstanding = outstanding.saturating_sub(1);
                        ask(&mut asked_at, slots.saturating_sub(outstanding));
                    }
                    _ => {}
                }
            }
            _ = stop.changed() => break,
            _ = heartbeat.tick() => {
                // Idle workers re-ask: that is their heartbeat.
                if outstanding < slots {
                    send(In::Ask(pb::WorkRequest { free_slots: slots - outstanding, models_loaded: Vec::new(), memory_free_bytes: 0, paused: String::new(), models_held: Vec::new(), prefill_tokens_per_s: 0.0 }));
                }
            }
        }
    }
    Ok(latencies)
}

/// Run the benchmark.
pub async fn dispatch(opts: DispatchOptions) -> CoordinatorResult<DispatchReport> {
    if opts.workers < 1 {
        return Err(CoordinatorError::Invalid(
            "--workers must be at least 1".into(),
        ));
    }
    if opts.shards < 1 {
        return Err(CoordinatorError::Invalid(
            "--shards must be at least 1".into(),
        ));
    }
    if opts.slots < 1 {
        return Err(CoordinatorError::Invalid(
            "--slots must be at least 1".into(),
        ));
    }
    let tmp;
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()
                .map_err(|e| CoordinatorError::Internal(format!("a temporary data folder: {e}")))?;
            tmp.0.clone()
        }
    };
    let token = format!("bench-{}", std::process::id());
    let mut config = CoordinatorConfig::new(
        "127.0.0.1:0".parse().expect("a loopback address"),
        &data_dir,
        Arc::new(MemoryRegistry::new()),
    );
    config.token = Some(token.clone());
    config.http = opts.http;
    let coordinator = serve(config).await?;
    let scrapes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scraper = coordinator.http_addr().map(|at| {
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for n in 0u64.. {
                tick.tick().await;
                let mut ok = scrape(at.port(), "/metrics").await;
                if n % 2 == 0 {
                    ok &= scrape(at.port(), "/api/state").await;
                }
                if ok {
                    scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    });
    let address = format!("http://{}", coordinator.local_addr());
    let core = coordinator.core().clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for i in 0..opts.workers {
        handles.push(tokio::spawn(worker(
            address.clone(),
            token.clone(),
            format!("sim-{i:03}"),
            opts.slots,
            stopped.clone(),
        )));
    }
    // Let every worker connect and wait for work, so the clock measures dispatch only.
    let deadline = Instant::now() + Duration::from_secs(30);
    while core.workers().iter().filter(|w| w.connected).count() < opts.workers {
        if Instant::now() >= deadline {
            return Err(CoordinatorError::Internal(
                "the simulated workers did not connect".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let specs = vec![NoopShard::default(); opts.shards];
    let mut changes = core.subscribe();
    let t0 = Instant::now();
    let sweep = core
        .submit_noop("bench-dispatch", specs, Retries::default())
        .await?;
    // Traced as a submitted sweep is: its assignments are children of this span.
    let span = tracing::info_span!(target: flotilla_client::telemetry::TARGET, "bench dispatch");
    if let Some(tp) = flotilla_client::telemetry::traceparent(&span) {
        core.set_sweep_trace(&sweep, tp);
    }
    loop {
        let st = core
            .status(&sweep)
            .ok_or_else(|| CoordinatorError::Internal("the benchmark sweep vanished".into()))?;
        if st.state != pb::SweepState::Queued as i32 && st.state != pb::SweepState::Running as i32 {
            if st.state != pb::SweepState::Succeeded as i32 {
                return Err(CoordinatorError::Internal(format!(
                    "the benchmark sweep ended as {:?}: {}",
                    st.state, st.error
                )));
            }
            break;
        }
        changes
            .changed()
            .await
            .map_err(|_| CoordinatorError::Internal("the coordinator stopped".into()))?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let _ = stop.send(true);
    if let Some(s) = scraper {
        s.abort();
    }
    let mut latencies = Vec::new();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(5), h).await {
            Ok(Ok(Ok(l))) => latencies.extend(l),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "a simulated worker failed"),
            _ => tracing::warn!("a simulated worker did not stop"),
        }
    }
    let id = sweep.clone();
    let stored: i64 = core
        .store
        .call(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM results r JOIN shards s ON s.id = r.shard_id
                 WHERE s.sweep_id = ?1",
                rusqlite::params![id],
                |r| r.get(0),
            )?)
        })
        .await?;
    coordinator.shutdown().await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(DispatchReport {
        workers: opts.workers,
        shards: opts.shards,
        slots: opts.slots,
        seconds,
        shards_per_second: opts.shards as f64 / seconds,
        assignment_latency_p50_ms: percentile(&latencies, 0.50),
        assignment_latency_p99_ms: percentile(&latencies, 0.99),
        assignment_latency_max_ms: latencies.last().copied().unwrap_or(0.0),
        results_stored: stored as usize,
        http: opts.http.is_some(),
        scrapes: scrapes.load(std::sync::atomic::Ordering::Relaxed),
        traced: flotilla_client::telemetry::enabled(),
    })
}

/// A temporary folder removed on drop (no extra dependency for one use).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "flotilla-bench-dispatch-{}-{}",
            std::process::id(),
            crate::store::now_ms()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
