//! A worker's Prometheus metrics (`flotilla worker --http ADDR`, `/metrics`): shards run by
//! kind and outcome, tokens in and out, prefill and decode time (so rates are
//! `rate(flotilla_decode_tokens_total[5m]) / rate(flotilla_decode_seconds_total[5m])`), judge
//! ratings that did not parse, structured answers that did not parse, training steps and the
//! last loss, resident memory and, on a GPU, the device's memory in use.
//!
//! One set per process: the in-process workers of `flotilla run` add to the same counters.

use flotilla_client::observe::{encode, resident_memory_bytes};
use flotilla_contract::ShardOutput;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

type Labels = Vec<(&'static str, String)>;

pub struct WorkerMetrics {
    registry: Registry,
    shards: Family<Labels, Counter>,
    shard_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    prefill_tokens: Counter,
    prefill_seconds: Counter<f64, AtomicU64>,
    decode_tokens: Counter,
    decode_seconds: Counter<f64, AtomicU64>,
    judge_parse_failures: Counter,
    answer_parse_failures: Counter,
    train_steps: Counter,
    train_loss: Gauge<f64, AtomicU64>,
    memory: Gauge,
    gpu_memory_used: Gauge,
    connected: Gauge,
    /// Engine totals already added to the counters.
    seen: std::sync::Mutex<(u64, f64, u64, f64)>,
}

/// The process's worker metrics.
pub fn global() -> &'static WorkerMetrics {
    static M: OnceLock<WorkerMetrics> = OnceLock::new();
    M.get_or_init(WorkerMetrics::new)
}

impl WorkerMetrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("flotilla");
        macro_rules! reg {
            ($name:expr, $help:expr, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            shards: reg!(
                "worker_shards",
                "Shards this worker finished, by kind and outcome (succeeded, task_failure, infrastructure_failure)",
                Family::<Labels, Counter>::default()
            ),
            shard_seconds: reg!(
                "worker_shard_seconds",
                "Seconds spent running shards, by kind",
                Family::<Labels, Counter<f64, AtomicU64>>::default()
            ),
            prompt_tokens: reg!("prompt_tokens", "Prompt tokens of answers generated", Counter::default()),
            completion_tokens: reg!(
                "generated_tokens",
                "Tokens generated (answers, retries)",
                Counter::default()
            ),
            prefill_tokens: reg!("prefill_tokens", "Tokens prefilled by the engine", Counter::default()),
            prefill_seconds: reg!(
                "prefill_seconds",
                "Seconds the engine spent in prefill",
                Counter::<f64, AtomicU64>::default()
            ),
            decode_tokens: reg!("decode_tokens", "Tokens decoded by the engine", Counter::default()),
            decode_seconds: reg!(
                "decode_seconds",
                "Seconds the engine spent decoding",
                Counter::<f64, AtomicU64>::default()
            ),
            judge_parse_failures: reg!(
                "judge_parse_failures",
                "Judge replies whose rating could not be read",
                Counter::default()
            ),
            answer_parse_failures: reg!(
                "answer_parse_failures",
                "Structured answers that did not parse even after the retry",
                Counter::default()
            ),
            train_steps: reg!("train_steps", "Optimizer steps (or local steps of a round) trained", Counter::default()),
            train_loss: reg!(
                "train_loss",
                "Training loss of the last step or round finished",
                Gauge::<f64, AtomicU64>::default()
            ),
            memory: reg!(
                "worker_process_resident_memory_bytes",
                "Resident memory of the worker process",
                Gauge::default()
            ),
            gpu_memory_used: reg!(
                "gpu_memory_used_bytes",
                "Memory in use on the worker's GPU (nvidia-smi; 0 without one)",
                Gauge::default()
            ),
            connected: reg!(
                "worker_connected",
                "Workers of this process with a live Work stream to the coordinator",
                Gauge::default()
            ),
            registry: r,
            seen: std::sync::Mutex::new((0, 0.0, 0, 0.0)),
        }
    }

    /// A worker of this process got (`true`) or lost its Work stream.
    pub fn connection(&self, up: bool) {
        if up {
            self.connected.inc();
        } else {
            self.connected.dec();
        }
    }

    /// Whether a worker of this process is connected (`/readyz`).
    pub fn is_connected(&self) -> bool {
        self.connected.get() > 0
    }

    fn shard(&self, kind: &str, outcome: &str, seconds: f64) {
        self.shards
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        self.shard_seconds
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc_by(seconds.max(0.0));
    }

    /// A shard finished with `output` after `seconds`.
    pub fn succeeded(&self, output: &ShardOutput, seconds: f64) {
        self.shard(output.kind().as_str(), "succeeded", seconds);
        match output {
            ShardOutput::Generate(g) => {
                for c in &g.cases {
                    self.prompt_tokens
                        .inc_by((c.prompt_tokens + c.retry_prompt_tokens) as u64);
                    self.completion_tokens
                        .inc_by((c.completion_tokens + c.retry_completion_tokens) as u64);
                    if c.parse_failed {
                        self.answer_parse_failures.inc();
                    }
                }
            }
            ShardOutput::Judge(j) => {
                let unread = j
                    .cases
                    .iter()
                    .flat_map(|c| &c.verdicts)
                    .filter(|v| v.rating.is_none() && v.error.is_some())
                    .count();
                self.judge_parse_failures.inc_by(unread as u64);
            }
            ShardOutput::Train(t) => {
                if let Some(steps) = t.metrics.get("steps").and_then(|s| s.as_u64()) {
                    self.train_steps.inc_by(steps);
                }
                if let Some(loss) = t.metrics.get("final_train_loss").and_then(|l| l.as_f64()) {
                    self.train_loss.set(loss);
                }
            }
            ShardOutput::TrainRound(r) => {
                self.train_steps.inc();
                self.train_loss.set(r.loss);
            }
            ShardOutput::Noop(_) => {}
        }
    }

    /// A shard of `kind` failed (`task` or `infrastructure`) after `seconds`.
    pub fn failed(&self, kind: &str, failure: &str, seconds: f64) {
        self.shard(kind, &format!("{failure}_failure"), seconds);
    }

    /// The exposition; engine totals and memory read now (`device` as the worker was told).
    pub fn render(&self, device: &str) -> String {
        let (pt, ps, dt, ds) = flotilla_engine::generate::totals::snapshot();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            self.prefill_tokens.inc_by(pt.saturating_sub(seen.0));
            self.prefill_seconds.inc_by((ps - seen.1).max(0.0));
            self.decode_tokens.inc_by(dt.saturating_sub(seen.2));
            self.decode_seconds.inc_by((ds - seen.3).max(0.0));
            *seen = (pt, ps, dt, ds);
        }
        self.memory.set(resident_memory_bytes() as i64);
        if let Some((total, free)) = crate::capabilities::gpu_memory(device) {
            self.gpu_memory_used.set(total.saturating_sub(free) as i64);
        }
        encode(&self.registry)
    }
}
