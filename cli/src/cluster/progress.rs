//! Following a sweep until it ends: `WatchSweep` updates drive one bar for the whole sweep
//! and one per job (hidden when stderr is not a terminal). A dropped watch (a coordinator
//! restarting) is resumed for up to a minute before giving up.

use super::render::{is_final, job_state, train_progress};
use anyhow::{bail, Result};
use flotilla_coordinator::client::Client;
use flotilla_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(name: &str) -> Self {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} shards [{elapsed}]")
                .expect("valid template"),
        );
        overall.set_message(format!("sweep {name}"));
        overall.enable_steady_tick(Duration::from_millis(200));
        Self {
            multi,
            overall,
            jobs: HashMap::new(),
        }
    }

    fn update(&mut self, s: &pb::SweepStatus) {
        self.overall.set_length(u64::from(s.shards_total));
        self.overall.set_position(u64::from(s.shards_done));
        for j in &s.jobs {
            let bar = self.jobs.entry(j.job_id.clone()).or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(u64::from(j.shards_total)));
                b.set_style(
                    ProgressStyle::with_template("  {prefix:8} [{bar:20}] {pos}/{len} {msg}")
                        .expect("valid template"),
                );
                b.set_prefix(j.kind.clone());
                b
            });
            bar.set_length(u64::from(j.shards_total));
            bar.set_position(u64::from(j.shards_done));
            let state = job_state(j.state);
            let label = match &j.training {
                Some(t) => format!("{}  {}", j.label, train_progress(t)),
                None => j.label.clone(),
            };
            bar.set_message(if state == "running" || state == "succeeded" {
                label
            } else {
                format!("{label} ({state})")
            });
        }
    }

    fn finish(&self) {
        for b in self.jobs.values() {
            b.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// Watches `sweep_id` until it ends; returns its final status.
pub async fn follow(client: &Client, sweep_id: &str) -> Result<pb::SweepStatus> {
    let mut bars: Option<Bars> = None;
    let mut failing_since: Option<Instant> = None;
    let result = loop {
        let stream = client
            .grpc()
            .watch_sweep(pb::SweepRef {
                sweep_id: sweep_id.to_string(),
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                if failing_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_secs(60)
                {
                    break Err(super::connect::status_error(status));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => break Err(super::connect::status_error(status)),
        };
        let mut last = None;
        loop {
            match stream.message().await {
                Ok(Some(s)) => {
                    failing_since = None;
                    bars.get_or_insert_with(|| Bars::new(&s.name)).update(&s);
                    let done = is_final(s.state);
                    last = Some(s);
                    if done {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(s) = last.filter(|s| is_final(s.state)) {
            break Ok(s);
        }
        // The watch ended early: the coordinator went away. Try again for a while.
        if failing_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(60) {
            bail!("lost the coordinator while watching sweep {sweep_id}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Some(b) = &bars {
        b.finish();
    }
    result
}
