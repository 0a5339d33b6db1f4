//! `--when-idle`: office PCs belong to people. A worker with an [`IdlePolicy`] takes shards
//! only while the PC's user is away — no keyboard or mouse input for `idle_for` where the
//! desktop reports it (systemd-logind's idle hint, which GNOME, KDE and other desktops set) —
//! and other processes use less than `cpu_percent` of the CPU. When that stops being true it
//! asks for nothing more, lets running shards finish for up to `yield_within`, then hands them
//! back (an infrastructure failure: requeued elsewhere, nothing lost).

use std::time::{Duration, Instant, SystemTime};

/// When a worker may work.
#[derive(Debug, Clone)]
pub struct IdlePolicy {
    /// No user input for this long (where it can be read).
    pub idle_for: Duration,
    /// Other processes' share of all CPUs, in percent, averaged over the last samples.
    pub cpu_percent: f64,
    /// How long running shards may go on once the user is back.
    pub yield_within: Duration,
}

/// CPU counters at one moment: all CPUs' busy and total ticks, and this process's.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    busy: u64,
    total: u64,
    own: u64,
}

fn cpu_sample() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command (which may hold spaces) start after the last ')'.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })?;
    Some(CpuSample {
        busy: total - idle,
        total,
        own,
    })
}

/// Seconds since the user's last input, from systemd-logind: `Some(0)` while a session with a
/// desktop says it is not idle; `None` where no session says anything (a server, a container).
fn user_idle_seconds() -> Option<u64> {
    let out = std::process::Command::new("loginctl")
        .args(["list-sessions", "--no-legend"])
        .output()
        .ok()?;
    let sessions = String::from_utf8_lossy(&out.stdout);
    let mut idle: Option<u64> = None;
    for id in sessions.lines().filter_map(|l| l.split_whitespace().next()) {
        let out = std::process::Command::new("loginctl")
            .args([
                "show-session",
                id,
                "-p",
                "IdleHint",
                "-p",
                "IdleSinceHint",
                "-p",
                "Type",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        if !matches!(get("Type").as_str(), "x11" | "wayland" | "mir") {
            continue; // tty and ssh sessions report no input idleness worth the name
        }
        let seconds = if get("IdleHint") == "no" {
            0
        } else {
            let since_us: u64 = get("IdleSinceHint").parse().unwrap_or(0);
            let now_us = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            now_us.saturating_sub(since_us) / 1_000_000
        };
        idle = Some(idle.map_or(seconds, |s: u64| s.min(seconds)));
    }
    idle
}

/// Watches whether the PC is free for work under a policy.
pub struct IdleWatch {
    pub policy: IdlePolicy,
    last: Option<CpuSample>,
    /// Other processes' CPU share, smoothed over recent samples (percent).
    others: Option<f64>,
    last_input_check: Option<(Instant, Option<u64>)>,
}

impl IdleWatch {
    pub fn new(policy: IdlePolicy) -> Self {
        Self {
            policy,
            last: cpu_sample(),
            others: None,
            last_input_check: None,
        }
    }

    /// `None` when the PC is free for work, else why not. Call it every second or so.
    pub fn busy_reason(&mut self) -> Option<String> {
        if let (Some(now), Some(prev)) = (cpu_sample(), self.last) {
            let total = now.total.saturating_sub(prev.total);
            if total > 0 {
                let busy = now.busy.saturating_sub(prev.busy);
                let own = now.own.saturating_sub(prev.own);
                let pct = 100.0 * busy.saturating_sub(own) as f64 / total as f64;
                // About a 5-sample memory: a compile or a video call pauses work, a blip not.
                self.others = Some(match self.others {
                    Some(o) => 0.7 * o + 0.3 * pct,
                    None => pct,
                });
            }
            self.last = Some(now);
        }
        if let Some(o) = self.others {
            if o > self.policy.cpu_percent {
                return Some(format!(
                    "other programs use {o:.0}% of the CPU (more than {:.0}%)",
                    self.policy.cpu_percent
                ));
            }
        }
        // loginctl costs two processes: ask every 10 s.
        let input = match self.last_input_check {
            Some((at, v)) if at.elapsed() < Duration::from_secs(10) => v,
            _ => {
                let v = user_idle_seconds();
                self.last_input_check = Some((Instant::now(), v));
                v
            }
        };
        match input {
            Some(s) if s < self.policy.idle_for.as_secs() => Some(format!(
                "the user was active {s} s ago (idle needs {} s)",
                self.policy.idle_for.as_secs()
            )),
            _ => None,
        }
    }
}
