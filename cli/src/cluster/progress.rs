//! Following a sweep until it ends. `WatchSweep` updates drive, on a terminal, one bar for the
//! whole sweep and one per job; anywhere else (a pipe, a log file, CI) plain lines on stderr:
//! one per job state change and a summary of the shards at most every
//! [`SUMMARY_EVERY`] while they move. Either way, a sweep with shards waiting and no worker
//! connected for [`NO_WORKER_AFTER`] says so, with the command that starts one. A dropped
//! watch (a coordinator restarting) is resumed for up to a minute before giving up.

use super::render::{is_final, job_state, sweep_state, train_progress};
use anyhow::{bail, Result};
use flotilla_coordinator::client::Client;
use flotilla_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How long shards may wait with nobody to run them before the watch says so.
pub const NO_WORKER_AFTER: Duration = Duration::from_secs(5);
/// Plain output: the longest gap between two shard summaries while shards are moving.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Progress bars, for a terminal.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(name: &str) -> Self {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(style("{msg:24} [{bar:30}] {pos}/{len} shards [{elapsed}]"));
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
                b.set_style(style("  {prefix:8} [{bar:20}] {pos}/{len} {msg}"));
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

    fn say(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    fn finish(&self) {
        for b in self.jobs.values() {
            b.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

/// Plain progress lines, for anything but a terminal: what changed since the last update.
#[derive(Default)]
pub struct Lines {
    sweep_state: Option<i32>,
    jobs: HashMap<String, i32>,
    /// Shards done, running, failed at the last summary, and when it was printed.
    summary: Option<((u32, u32, u32), Instant)>,
}

impl Lines {
    /// The lines an update adds (state changes, and a shard summary when due); `now` is
    /// passed in so the rendering can be tested.
    pub fn update(&mut self, s: &pb::SweepStatus, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let mut sweep_line = None;
        if self.sweep_state != Some(s.state) {
            self.sweep_state = Some(s.state);
            sweep_line = Some(format!(
                "sweep {} ({}): {}, {} jobs, {} shards{}",
                s.sweep_id,
                s.name,
                sweep_state(s.state),
                s.jobs.len(),
                s.shards_total,
                if s.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.error)
                }
            ));
        }
        // The sweep's new state heads the lines, except its end, which closes them.
        let ended = is_final(s.state);
        if !ended {
            out.extend(sweep_line.take());
        }
        for j in &s.jobs {
            if self.jobs.insert(j.job_id.clone(), j.state) == Some(j.state) {
                continue;
            }
            let mut line = format!(
                "job {} {} {}: {} ({}/{} shards",
                j.job_id,
                j.kind,
                job_state(j.state),
                j.label,
                j.shards_done,
                j.shards_total
            );
            if j.shards_failed > 0 {
                line += &format!(", {} failed", j.shards_failed);
            }
            line.push(')');
            if let Some(t) = &j.training {
                line += &format!(" {}", train_progress(t));
            }
            if !j.error.is_empty() {
                line += &format!(": {}", j.error);
            }
            out.push(line);
        }
        out.extend(sweep_line);
        let counts = (s.shards_done, s.shards_running, s.shards_failed);
        let due = match &self.summary {
            None => true,
            Some((last, at)) => {
                *last != counts && (now.duration_since(*at) >= SUMMARY_EVERY || is_final(s.state))
            }
        };
        if due {
            self.summary = Some((counts, now));
            out.push(format!(
                "sweep {}: {}/{} shards done, {} running, {} failed",
                s.sweep_id, s.shards_done, s.shards_total, s.shards_running, s.shards_failed
            ));
        }
        out
    }
}

/// Bars on a terminal, lines elsewhere.
enum Display {
    Bars(Bars),
    Lines(Lines),
}

impl Display {
    fn update(&mut self, s: &pb::SweepStatus) {
        match self {
            Display::Bars(b) => b.update(s),
            Display::Lines(l) => {
                for line in l.update(s, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn say(&self, line: &str) {
        match self {
            Display::Bars(b) => b.say(line),
            Display::Lines(_) => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Display::Bars(b) = self {
            b.finish();
        }
    }
}

/// Whether shards are waiting with none running: the moment to ask who is connected.
fn waiting(s: &pb::SweepStatus) -> bool {
    !is_final(s.state) && s.shards_running == 0 && s.shards_done < s.shards_total
}

/// Watches `sweep_id` until it ends; returns its final status.
pub async fn follow(client: &Client, sweep_id: &str) -> Result<pb::SweepStatus> {
    follow_with_hint(client, sweep_id, None).await
}

/// [`follow`], naming `start_worker` (the command that starts a worker for this cluster) when
/// shards wait with no worker connected.
pub async fn follow_with_hint(
    client: &Client,
    sweep_id: &str,
    start_worker: Option<&str>,
) -> Result<pb::SweepStatus> {
    let plain = !std::io::stderr().is_terminal();
    let mut display: Option<Display> = None;
    let mut failing_since: Option<Instant> = None;
    // Since when shards have been waiting with none running, and whether that was said.
    let mut waiting_since: Option<Instant> = None;
    let mut told = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
        let mut last: Option<pb::SweepStatus> = None;
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(s)) => {
                        failing_since = None;
                        display
                            .get_or_insert_with(|| {
                                if plain {
                                    Display::Lines(Lines::default())
                                } else {
                                    Display::Bars(Bars::new(&s.name))
                                }
                            })
                            .update(&s);
                        if !waiting(&s) {
                            waiting_since = None;
                        } else if waiting_since.is_none() {
                            waiting_since = Some(Instant::now());
                        }
                        let done = is_final(s.state);
                        last = Some(s);
                        if done {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let Some(since) = waiting_since else { continue };
                    if since.elapsed() < NO_WORKER_AFTER {
                        continue;
                    }
                    let connected = connected_workers(client).await;
                    if connected == Some(0) && !told {
                        told = true;
                        if let Some(d) = &display {
                            d.say(&no_worker_line(start_worker));
                        }
                    } else if connected.is_some_and(|n| n > 0) {
                        told = false;
                        waiting_since = Some(Instant::now());
                    }
                }
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
    if let Some(d) = &display {
        d.finish();
    }
    result
}

/// Workers with a live Work stream; None when the coordinator cannot say.
async fn connected_workers(client: &Client) -> Option<usize> {
    let workers = client
        .grpc()
        .list_workers(pb::ListWorkersRequest {})
        .await
        .ok()?
        .into_inner()
        .workers;
    Some(workers.iter().filter(|w| w.connected).count())
}

/// What the watch says when shards wait and no worker is connected.
pub fn no_worker_line(start_worker: Option<&str>) -> String {
    format!(
        "no worker connected: start one with `{}`; shards wait until one asks for work",
        start_worker.unwrap_or("flotilla worker --coordinator HOST:PORT --token-file FILE")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, kind: &str, state: pb::JobState, done: u32, total: u32) -> pb::JobStatus {
        pb::JobStatus {
            job_id: id.into(),
            kind: kind.into(),
            label: format!("smollm2 / base / {id}"),
            state: state as i32,
            shards_total: total,
            shards_done: done,
            ..Default::default()
        }
    }

    fn status(state: pb::SweepState, jobs: Vec<pb::JobStatus>) -> pb::SweepStatus {
        pb::SweepStatus {
            sweep_id: "t-1".into(),
            name: "t".into(),
            state: state as i32,
            shards_total: jobs.iter().map(|j| j.shards_total).sum(),
            shards_done: jobs.iter().map(|j| j.shards_done).sum(),
            jobs,
            ..Default::default()
        }
    }

    #[test]
    fn plain_lines_name_each_state_change_once_and_sum_up_shards_at_most_every_ten_seconds() {
        use pb::{JobState as J, SweepState as S};
        let mut lines = Lines::default();
        let t0 = Instant::now();
        let first = lines.update(
            &status(
                S::Queued,
                vec![
                    job("j1", "generate", J::Ready, 0, 2),
                    job("j2", "judge", J::Blocked, 0, 2),
                ],
            ),
            t0,
        );
        assert_eq!(
            first,
            [
                "sweep t-1 (t): queued, 2 jobs, 4 shards",
                "job j1 generate ready: smollm2 / base / j1 (0/2 shards)",
                "job j2 judge blocked: smollm2 / base / j2 (0/2 shards)",
                "sweep t-1: 0/4 shards done, 0 running, 0 failed",
            ]
        );
        // The same status again says nothing.
        let same = status(
            S::Queued,
            vec![
                job("j1", "generate", J::Ready, 0, 2),
                job("j2", "judge", J::Blocked, 0, 2),
            ],
        );
        assert!(lines.update(&same, t0 + Duration::from_secs(1)).is_empty());
        // A shard done a second later: the job and sweep changed state; no summary yet.
        let moving = status(
            S::Running,
            vec![
                job("j1", "generate", J::Running, 1, 2),
                job("j2", "judge", J::Blocked, 0, 2),
            ],
        );
        assert_eq!(
            lines.update(&moving, t0 + Duration::from_secs(2)),
            [
                "sweep t-1 (t): running, 2 jobs, 4 shards",
                "job j1 generate running: smollm2 / base / j1 (1/2 shards)",
            ]
        );
        // Ten seconds on, the moved shard count is summed up.
        let later = status(
            S::Running,
            vec![
                job("j1", "generate", J::Running, 1, 2),
                job("j2", "judge", J::Blocked, 0, 2),
            ],
        );
        assert_eq!(
            lines.update(&later, t0 + Duration::from_secs(11)),
            ["sweep t-1: 1/4 shards done, 0 running, 0 failed"]
        );
        // The end is always summed up.
        let end = status(
            S::Succeeded,
            vec![
                job("j1", "generate", J::Succeeded, 2, 2),
                job("j2", "judge", J::Succeeded, 2, 2),
            ],
        );
        assert_eq!(
            lines.update(&end, t0 + Duration::from_secs(12)),
            [
                "job j1 generate succeeded: smollm2 / base / j1 (2/2 shards)",
                "job j2 judge succeeded: smollm2 / base / j2 (2/2 shards)",
                "sweep t-1 (t): succeeded, 2 jobs, 4 shards",
                "sweep t-1: 4/4 shards done, 0 running, 0 failed",
            ]
        );
    }

    #[test]
    fn the_no_worker_line_names_the_command_that_starts_one() {
        let line = no_worker_line(Some("flotilla worker --etcd http://e:2379 --token-file t"));
        assert!(line.starts_with("no worker connected: start one with `flotilla worker --etcd"));
        assert!(no_worker_line(None).contains("flotilla worker --coordinator"));
        let s = status(
            pb::SweepState::Queued,
            vec![job("j1", "generate", pb::JobState::Ready, 0, 2)],
        );
        assert!(waiting(&s));
    }
}
