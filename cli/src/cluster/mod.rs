//! The cluster commands: `flotilla run` (embedded: coordinator and workers in this process),
//! `flotilla coordinator`, `flotilla worker`, `flotilla sweep ...` and `flotilla workers`.
//!
//! - [`connect`]: how a command finds and reaches a coordinator (an address, or the leader
//!   key in etcd), with the shared token and optional TLS.
//! - [`progress`]: a sweep's progress bars, fed by `WatchSweep`.
//! - [`render`]: sweeps, workers and results as text tables or JSON; the results folder.
//! - one module per command.

pub mod connect;
pub mod coordinator;
pub mod doctor;
pub mod install;
pub mod progress;
pub mod render;
pub mod run;
pub mod sweep;
pub mod train_submit;
pub mod worker;
pub mod workers;

/// A tokio runtime for a cluster command. Model work runs on the engine's own thread pool
/// (blocking tasks), so two async threads are plenty.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flotilla-io")
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM (how Kubernetes stops a pod).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Several OpenMetrics expositions as one: each ends with `# EOF`, which only the last may.
pub fn join_expositions(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(p.trim_end().trim_end_matches("# EOF").trim_end());
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// A background task stopped when this is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
