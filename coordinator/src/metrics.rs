//! The coordinator's Prometheus metrics (`flotilla coordinator --http ADDR`, `/metrics`).
//!
//! Counters move as changes are committed (assignments, requeues and retries by kind, failed
//! and succeeded shards), as artifacts travel, and as the state database commits (its latency);
//! the gauges (shards by state, queue depth, workers, sweeps) are read from the scheduler at
//! each scrape. Names follow Prometheus' conventions: `flotilla_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters.

use crate::scheduler::{Change, Scheduler};
use flotilla_client::observe::{encode, resident_memory_bytes};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct CoordinatorMetrics {
    registry: Registry,
    shards: Family<Labels, Gauge>,
    queue_depth: Gauge,
    workers: Family<Labels, Gauge>,
    sweeps: Family<Labels, Gauge>,
    assignments: Counter,
    requeues: Family<Labels, Counter>,
    shard_outcomes: Family<Labels, Counter>,
    /// Artifact bytes through the coordinator, by direction (`upload`, `download`).
    pub artifact_bytes: Family<Labels, Counter>,
    /// Seconds from BEGIN to COMMIT of each group commit of the state database.
    pub sqlite_commit_seconds: Histogram,
    memory: Gauge,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let shards = Family::<Labels, Gauge>::default();
        registry.register("shards", "Shards of live sweeps by state", shards.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Shards ready to run and not assigned",
            queue_depth.clone(),
        );
        let workers = Family::<Labels, Gauge>::default();
        registry.register(
            "workers",
            "Workers known to the scheduler, by device kind and whether connected",
            workers.clone(),
        );
        let sweeps = Family::<Labels, Gauge>::default();
        registry.register("sweeps", "Sweeps in memory by state", sweeps.clone());
        let assignments = Counter::default();
        registry.register(
            "assignments",
            "Shard attempts handed to workers",
            assignments.clone(),
        );
        let requeues = Family::<Labels, Counter>::default();
        registry.register(
            "requeues",
            "Failed attempts put back in the queue (retries), by failure kind",
            requeues.clone(),
        );
        let shard_outcomes = Family::<Labels, Counter>::default();
        registry.register(
            "shard_outcomes",
            "Shards settled, by outcome (succeeded, failed, cancelled)",
            shard_outcomes.clone(),
        );
        let artifact_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "artifact_bytes",
            "Artifact bytes (sweep files, adapters, training traffic) through the coordinator",
            artifact_bytes.clone(),
        );
        let sqlite_commit_seconds = Histogram::new(
            [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]
            .into_iter(),
        );
        registry.register(
            "sqlite_commit_seconds",
            "Latency of the state database's group commits",
            sqlite_commit_seconds.clone(),
        );
        let memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the coordinator process",
            memory.clone(),
        );
        Self {
            registry,
            shards,
            queue_depth,
            workers,
            sweeps,
            assignments,
            requeues,
            shard_outcomes,
            artifact_bytes,
            sqlite_commit_seconds,
            memory,
        }
    }

    /// Count committed changes.
    pub fn record(&self, changes: &[Change]) {
        for ch in changes {
            match ch {
                Change::Assigned { .. } => {
                    self.assignments.inc();
                }
                Change::Requeued { outcome, .. } => {
                    let kind = outcome.split(' ').next().unwrap_or("unknown").to_string();
                    self.requeues.get_or_create(&vec![("kind", kind)]).inc();
                }
                Change::Succeeded { .. } => {
                    self.outcome("succeeded");
                }
                Change::ShardFailed { .. } => {
                    self.outcome("failed");
                }
                Change::ShardCancelled { .. } => {
                    self.outcome("cancelled");
                }
                _ => {}
            }
        }
    }

    fn outcome(&self, what: &str) {
        self.shard_outcomes
            .get_or_create(&vec![("outcome", what.to_string())])
            .inc();
    }

    /// Artifact bytes moved in `direction` (`upload` or `download`).
    pub fn artifact(&self, direction: &'static str, bytes: u64) {
        self.artifact_bytes
            .get_or_create(&vec![("direction", direction.to_string())])
            .inc_by(bytes);
    }

    /// The exposition, with the gauges read from `sched` now.
    pub fn render(&self, sched: &Scheduler) -> String {
        use std::collections::BTreeMap;
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        for s in sched.shards.values() {
            *by_state.entry(s.state.as_str()).or_default() += 1;
        }
        self.shards.clear();
        for (state, n) in by_state {
            self.shards
                .get_or_create(&vec![("state", state.to_string())])
                .set(n);
        }
        let ready: usize = sched.jobs.values().map(|j| j.ready.len()).sum();
        self.queue_depth.set(ready as i64);
        self.workers.clear();
        for w in sched.workers.values() {
            let device = if w.capabilities.device.starts_with("cuda") {
                "cuda"
            } else if w.capabilities.device.starts_with("metal") {
                "metal"
            } else {
                "cpu"
            };
            self.workers
                .get_or_create(&vec![
                    ("device", device.to_string()),
                    ("connected", w.connected.to_string()),
                ])
                .inc();
        }
        self.sweeps.clear();
        for s in sched.sweeps.values() {
            self.sweeps
                .get_or_create(&vec![("state", s.state.as_str().to_string())])
                .inc();
        }
        self.memory.set(resident_memory_bytes() as i64);
        encode(&self.registry)
    }
}
