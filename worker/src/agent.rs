//! The worker agent: one long-lived loop that keeps a Work stream open to the coordinator and
//! runs what it is given.
//!
//! ```text
//! find the coordinator (--coordinator, or the leader key in the registry)
//!   -> open Work, say Hello (capabilities), wait for Welcome (heartbeat period)
//!   -> resend results the previous connection did not see acknowledged
//!   -> loop: ask when a slot is free; run assignments (download files, execute on a blocking
//!      thread, upload artifacts); send progress every heartbeat; report result or failure;
//!      honour Cancel
//!   -> the stream drops: stop the shards it assigned, reconnect with backoff
//! ```
//!
//! Shards belong to the connection that assigned them: when a stream drops, the coordinator
//! requeues that worker's shards (and a restarted coordinator requeues whatever was running),
//! so a result sent later would be refused as superseded. The worker stops them at once and
//! frees its slots for new work instead.

use super::artifacts::ArtifactCache;
use super::capabilities::Capabilities;
use super::exec::{Completed, ShardError};
use super::models::ModelCache;
use super::shard_task::run_shard;
use crate::error::{io, Result, WorkerError};
use candle_core::Device;
use flotilla_client::client::{self, Client, ClientTls};
use flotilla_client::registry::{Registration, Registry};
use flotilla_contract::Attempt;
use flotilla_proto::v1::{
    coordinator_message, worker_message, Assignment, CoordinatorMessage, FailureKind, FileRef,
    Hello, Progress, ShardFailure, ShardResult, WorkRequest, WorkerMessage,
};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod hand_back;

/// Where the worker finds the coordinator.
#[derive(Clone)]
pub enum CoordinatorAddress {
    /// A fixed address (`host:port` or a URL).
    Direct(String),
    /// Whatever address the elected coordinator published in the registry.
    Leader(Arc<dyn Registry>),
}

/// Everything a worker needs to run.
#[derive(Clone)]
pub struct AgentConfig {
    /// This worker's id (its registry key and its name in the coordinator).
    pub worker_id: String,
    pub coordinator: CoordinatorAddress,
    /// Where to register (etcd, or the in-process registry); `None` to stay unregistered.
    pub registry: Option<Arc<dyn Registry>>,
    /// The shared token; empty sends none.
    pub token: String,
    /// TLS to the coordinator (`None`: plain HTTP/2).
    pub tls: Option<ClientTls>,
    /// Shards run at once.
    pub slots: u32,
    /// The device as given (`cpu`, `cuda:0`): announced in the capabilities.
    pub device_name: String,
    pub device: Device,
    /// Loaded models, possibly shared with other in-process workers.
    pub models: Arc<ModelCache>,
    /// Caches that outlive shards, shareable by workers on one machine: `artifacts/`
    /// (downloads by content) and `embeddings/` (document chunk embeddings for retrieval).
    /// Files fetched from the coordinator (sweep files, adapters, pushed models) past this
    /// many bytes are evicted, least recently used first (None: kept).
    pub cache_budget_bytes: Option<u64>,
    pub cache_dir: PathBuf,
    /// Scratch space for running shards (one folder per attempt, removed after).
    pub work_dir: PathBuf,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// `--when-idle`: work only while the PC's user is away (`None`: always).
    pub idle: Option<crate::idle::IdlePolicy>,
}

/// Runs the worker until `shutdown` resolves. Returns an error only for what retrying cannot
/// fix: the coordinator refusing the token, or the registry refusing the registration at
/// start.
pub async fn run_worker(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut agent = Agent::new(config, stop)?;
    let registration = agent.register().await?;
    let result = agent.run().await;
    if let Some(r) = registration {
        r.release().await;
    }
    result
}

/// A shard running (or waiting for a slot) on this worker.
struct Running {
    attempt: Attempt,
    /// False while it waits in the queue for a slot.
    started: bool,
    cancel: Arc<AtomicBool>,
    progress: Arc<ProgressCell>,
    /// The spec's kind (`generate`, `judge`, ...), for metrics.
    kind: String,
}

#[derive(Default)]
pub(crate) struct ProgressCell {
    pub(crate) done: AtomicU32,
    pub(crate) total: AtomicU32,
}

/// What a shard task reports back to the loop.
struct Finished {
    shard_id: String,
    attempt: Attempt,
    seconds: f64,
    outcome: std::result::Result<(Completed, Vec<FileRef>), ShardError>,
}

/// How a connection ended.
enum SessionEnd {
    Shutdown,
    /// The stream dropped; `true` when it had been welcomed (reset the backoff).
    Dropped(bool),
}

struct Agent {
    config: AgentConfig,
    capabilities: Capabilities,
    cache: Arc<ArtifactCache>,
    stop: watch::Receiver<bool>,
    running: HashMap<String, Running>,
    queue: VecDeque<Assignment>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    /// The live connection's client, for shard tasks (downloads, uploads).
    current: watch::Sender<Option<Client>>,
    /// `--when-idle`: the watch, and since when (and why) the PC is not free.
    idle: Option<crate::idle::IdleWatch>,
    paused: Option<(String, Instant)>,
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Agent {
    fn new(config: AgentConfig, stop: watch::Receiver<bool>) -> Result<Self> {
        if config.slots == 0 {
            return Err(WorkerError::Invalid("--slots must be at least 1".into()));
        }
        std::fs::create_dir_all(&config.work_dir).map_err(io(&config.work_dir))?;
        let cache = Arc::new(ArtifactCache::with_budget(
            config.cache_dir.join("artifacts"),
            config.cache_budget_bytes,
        )?);
        let capabilities = Capabilities::detect(&config.device_name, config.slots);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let config_idle = config.idle.clone().map(crate::idle::IdleWatch::new);
        Ok(Self {
            config,
            capabilities,
            cache,
            stop,
            running: HashMap::new(),
            queue: VecDeque::new(),
            done_tx,
            done_rx,
            current: watch::channel(None).0,
            idle: config_idle,
            paused: None,
        })
    }

    async fn register(&self) -> Result<Option<Registration>> {
        let Some(registry) = &self.config.registry else {
            return Ok(None);
        };
        let registration = registry
            .register_worker(&self.config.worker_id, self.capabilities.to_json())
            .await
            .map_err(|e| {
                WorkerError::Refused(format!(
                    "cannot register worker {}: {e}",
                    self.config.worker_id
                ))
            })?;
        tracing::info!(worker = self.config.worker_id, "registered");
        Ok(Some(registration))
    }

    async fn run(&mut self) -> Result<()> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if stopped(&self.stop) {
                break;
            }
            let end = match self.coordinator_address().await? {
                None => break,
                Some(address) => {
                    match Client::connect_with(
                        &address,
                        Some(self.config.token.clone()),
                        self.config.tls.clone(),
                    )
                    .await
                    {
                        Ok(client) => self.session(client, &address).await?,
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "cannot connect; retrying");
                            SessionEnd::Dropped(false)
                        }
                    }
                }
            };
            if self.current.send_replace(None).is_some() {
                crate::metrics::global().connection(false);
            }
            self.abandon_all();
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Dropped(welcomed) => {
                    if welcomed {
                        backoff = Duration::from_millis(200);
                    }
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = wait_stop(&mut stop) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
        tracing::info!(worker = self.config.worker_id, "worker stopped");
        Ok(())
    }

    /// The coordinator's address; waits (with backoff) while no leader is elected. `None` on
    /// shutdown.
    async fn coordinator_address(&self) -> Result<Option<String>> {
        let registry = match &self.config.coordinator {
            CoordinatorAddress::Direct(a) => return Ok(Some(a.clone())),
            CoordinatorAddress::Leader(r) => r.clone(),
        };
        let mut wait = Duration::from_millis(200);
        let mut stop = self.stop.clone();
        loop {
            match registry.leader().await {
                Ok(Some(address)) => return Ok(Some(address)),
                Ok(None) => tracing::info!("no coordinator elected yet; waiting"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the leader key"),
            }
            tokio::select! {
                _ = wait_stop(&mut stop) => return Ok(None),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.config.max_backoff);
        }
    }

    fn hello(&self) -> WorkerMessage {
        let mut caps = self.capabilities.clone();
        caps.models_loaded = self.config.models.loaded();
        WorkerMessage {
            kind: Some(worker_message::Kind::Hello(Hello {
                worker_id: self.config.worker_id.clone(),
                capabilities: Some(caps.to_proto()),
            })),
        }
    }

    /// Slots neither running nor promised to a queued assignment (none while paused).
    fn free_slots(&self) -> u32 {
        if self.paused.is_some() {
            return 0;
        }
        self.config.slots.saturating_sub(self.running.len() as u32)
    }

    /// One connection: from Hello to the stream's end.
    async fn session(&mut self, client: Client, address: &str) -> Result<SessionEnd> {
        let (tx, rx) = mpsc::channel::<WorkerMessage>(1024);
        let _ = tx.send(self.hello()).await;
        let mut inbound = match client
            .grpc()
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return refused_or_dropped(status),
        };
        let welcome = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
            Ok(Ok(Some(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Welcome(w)),
            }))) => w,
            Ok(Ok(other)) => {
                tracing::warn!(?other, "the coordinator did not answer Hello with Welcome");
                return Ok(SessionEnd::Dropped(false));
            }
            Ok(Err(status)) => return refused_or_dropped(status),
            Err(_) => {
                tracing::warn!("no Welcome within 15 s");
                return Ok(SessionEnd::Dropped(false));
            }
        };
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms).clamp(50, 60_000));
        tracing::info!(
            coordinator = address,
            id = welcome.coordinator_id,
            "connected"
        );
        if self.current.send_replace(Some(client.clone())).is_none() {
            crate::metrics::global().connection(true);
        }

        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ask: Option<Instant> = None;
        let mut stop = self.stop.clone();
        loop {
            self.start_queued();
            // An idle worker's ask is its heartbeat; a paused one asks for nothing, but asks.
            if (self.free_slots() > 0 || self.paused.is_some()) && last_ask.is_none() {
                self.ask(&tx).await;
                last_ask = Some(Instant::now());
            }
            tokio::select! {
                _ = wait_stop(&mut stop) => {
                    self.shut_down(&tx).await;
                    return Ok(SessionEnd::Shutdown);
                }
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        if self.handle(m) {
                            // New work may have filled the slots; ask again on the next tick.
                            last_ask = last_ask.or(Some(Instant::now()));
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("the coordinator closed the Work stream");
                        return Ok(SessionEnd::Dropped(true));
                    }
                    Err(status) => {
                        return match refused_or_dropped(status)? {
                            SessionEnd::Dropped(_) => Ok(SessionEnd::Dropped(true)),
                            end => Ok(end),
                        };
                    }
                },
                Some(done) = self.done_rx.recv() => {
                    if let Some(m) = self.finish(done) {
                        let _ = tx.send(m).await;
                    }
                    last_ask = None;
                }
                _ = tick.tick() => {
                    self.send_progress(&tx).await;
                    if self.watch_idle(&tx).await {
                        // Tell the coordinator now: no slots while paused, or slots again.
                        self.ask(&tx).await;
                        last_ask = Some(Instant::now());
                    }
                    if last_ask.is_some_and(|t| t.elapsed() >= heartbeat) {
                        last_ask = None;
                    }
                }
            }
        }
    }

    async fn ask(&self, tx: &mpsc::Sender<WorkerMessage>) {
        let ask = WorkRequest {
            free_slots: self.free_slots(),
            models_loaded: self.config.models.loaded(),
            models_held: self.cache.models_held(),
            memory_free_bytes: crate::capabilities::free_memory_bytes(&self.config.device_name),
            prefill_tokens_per_s: measured_prefill_speed(),
            paused: self
                .paused
                .as_ref()
                .map(|(r, _)| r.clone())
                .unwrap_or_default(),
        };
        let _ = tx
            .send(WorkerMessage {
                kind: Some(worker_message::Kind::Ask(ask)),
            })
            .await;
    }

    async fn send_progress(&self, tx: &mpsc::Sender<WorkerMessage>) {
        for (shard_id, r) in &self.running {
            let progress = Progress {
                shard_id: shard_id.clone(),
                attempt: r.attempt.0,
                done: r.progress.done.load(Ordering::Relaxed),
                total: r.progress.total.load(Ordering::Relaxed),
            };
            let _ = tx
                .send(WorkerMessage {
                    kind: Some(worker_message::Kind::Progress(progress)),
                })
                .await;
        }
    }

    /// Handles a coordinator message; true when it was an assignment.
    fn handle(&mut self, message: CoordinatorMessage) -> bool {
        match message.kind {
            Some(coordinator_message::Kind::Assign(a)) => {
                self.accept(a);
                true
            }
            Some(coordinator_message::Kind::Cancel(c)) => {
                // Attempt 0 cancels every attempt of the shard.
                let matches = |attempt: Attempt| c.attempt == 0 || Attempt(c.attempt) == attempt;
                if let Some(r) = self.running.get(&c.shard_id) {
                    if matches(r.attempt) {
                        tracing::info!(shard = c.shard_id, reason = c.reason, "cancelled");
                        r.cancel.store(true, Ordering::Relaxed);
                        if !r.started {
                            self.running.remove(&c.shard_id);
                        }
                    }
                }
                self.queue
                    .retain(|a| !(a.shard_id == c.shard_id && matches(Attempt(a.attempt))));
                false
            }
            Some(coordinator_message::Kind::Ack(ack)) => {
                if !ack.accepted {
                    tracing::warn!(shard = ack.shard_id, reason = ack.reason, "result refused");
                }
                false
            }
            Some(coordinator_message::Kind::Welcome(_)) | None => false,
        }
    }

    /// Takes an assignment: queued until a slot is free.
    fn accept(&mut self, a: Assignment) {
        if let Some(r) = self.running.get(&a.shard_id) {
            if r.attempt == Attempt(a.attempt) {
                return; // Already ours (resent after a reconnect).
            }
            // A newer attempt of a shard we run: the old one is superseded.
            r.cancel.store(true, Ordering::Relaxed);
        }
        tracing::debug!(shard = a.shard_id, attempt = a.attempt, "assigned");
        let running = Running {
            attempt: Attempt(a.attempt),
            started: false,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(ProgressCell::default()),
            kind: serde_json::from_slice::<serde_json::Value>(&a.spec)
                .ok()
                .and_then(|v| v.get("kind")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
        };
        self.running.insert(a.shard_id.clone(), running);
        self.queue.push_back(a);
    }

    /// Starts queued assignments while slots are free.
    fn start_queued(&mut self) {
        let started = self.running.values().filter(|r| r.started).count();
        let mut free = (self.config.slots as usize).saturating_sub(started);
        while free > 0 {
            let Some(a) = self.queue.pop_front() else {
                break;
            };
            let Some(r) = self.running.get_mut(&a.shard_id) else {
                continue;
            };
            if r.attempt != Attempt(a.attempt) || r.started {
                continue;
            }
            r.started = true;
            free -= 1;
            let (cancel, progress) = (r.cancel.clone(), r.progress.clone());
            self.spawn_shard(a, cancel, progress);
        }
    }

    fn spawn_shard(&self, a: Assignment, cancel: Arc<AtomicBool>, progress: Arc<ProgressCell>) {
        let config = self.config.clone();
        let cache = self.cache.clone();
        let current = self.current.subscribe();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (shard_id, attempt) = (a.shard_id.clone(), Attempt(a.attempt));
            let outcome = run_shard(a, &config, &cache, current, cancel, progress).await;
            let _ = done.send(Finished {
                shard_id,
                attempt,
                seconds: started.elapsed().as_secs_f64(),
                outcome,
            });
        });
    }

    /// Turns a finished shard into the message to send: none if it was cancelled or belongs
    /// to a connection that is gone.
    fn finish(&mut self, done: Finished) -> Option<WorkerMessage> {
        let ours = self
            .running
            .get(&done.shard_id)
            .is_some_and(|r| r.attempt == done.attempt && r.started);
        if !ours {
            return None;
        }
        let shard_kind = self
            .running
            .remove(&done.shard_id)
            .map_or_else(|| "unknown".to_string(), |r| r.kind);
        let kind = match done.outcome {
            Ok((output, artifacts)) => {
                tracing::info!(shard = done.shard_id, seconds = done.seconds, "shard done");
                crate::metrics::global().succeeded(&output.output, done.seconds);
                worker_message::Kind::Result(ShardResult {
                    shard_id: done.shard_id.clone(),
                    attempt: done.attempt.0,
                    output: output.output.to_json().into_bytes(),
                    artifacts,
                    seconds: done.seconds,
                    units: output.units,
                })
            }
            Err(ShardError::Cancelled) => return None,
            Err(e) => {
                let kind = match e {
                    ShardError::Task(_) => FailureKind::Task,
                    _ => FailureKind::Infrastructure,
                };
                tracing::warn!(shard = done.shard_id, error = %e, ?kind, "shard failed");
                let failure = if kind == FailureKind::Task {
                    "task"
                } else {
                    "infrastructure"
                };
                crate::metrics::global().failed(&shard_kind, failure, done.seconds);
                worker_message::Kind::Failure(ShardFailure {
                    shard_id: done.shard_id.clone(),
                    attempt: done.attempt.0,
                    kind: kind as i32,
                    message: e.to_string(),
                })
            }
        };
        Some(WorkerMessage { kind: Some(kind) })
    }
}

/// A refused token ends the worker; anything else is a dropped connection.
fn refused_or_dropped(status: tonic::Status) -> Result<SessionEnd> {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Err(WorkerError::Refused(client::explain(&status)))
        }
        _ => {
            tracing::warn!(error = %status.message(), code = ?status.code(), "Work stream failed");
            Ok(SessionEnd::Dropped(false))
        }
    }
}

/// The prefill speed this process's engine has measured so far (tokens per second over every
/// generation), or 0 before the first prefill.
fn measured_prefill_speed() -> f64 {
    let (tokens, seconds, _, _) = flotilla_engine::generate::totals::snapshot();
    if tokens > 0 && seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}
