//! Real `flotilla` processes for the cluster tests: a background process killed with SIGKILL
//! when dropped (its log shown when a test fails), and a cluster of a real etcd on a loopback
//! port, one `flotilla coordinator` and `flotilla worker` processes, driven through the CLI.

use super::ok_json;
use flotilla_tests::etcd::{free_port, Etcd};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "e2e-shared-secret";
/// How long a sweep may take on a loaded two-core CI machine.
pub const SWEEP_TIMEOUT: Duration = Duration::from_secs(600);

/// `flotilla ARGS` with no token in the environment (tests pass --token-file explicitly).
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    c.args(["--threads", "1"])
        .args(args)
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_TOKEN_FILE")
        .env_remove("FLOTILLA_ETCD")
        .env_remove("FLOTILLA_COORDINATOR");
    c
}

pub fn run(args: &[&str]) -> Output {
    run_within(args, SWEEP_TIMEOUT)
}

/// `flotilla ARGS`, killed if it runs longer than `limit` (a stalled sweep must fail the
/// test, not hang it).
pub fn run_within(args: &[&str], limit: Duration) -> Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base =
        std::env::temp_dir().join(format!("flotilla-cluster-out-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = cmd(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run flotilla");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "flotilla {args:?} ran longer than {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    output
}

/// A background `flotilla` process, killed (SIGKILL) when dropped; its output goes to a log
/// file shown when a test fails.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
        Self::spawn_env(name, dir, args, &[])
    }

    /// [`Proc::spawn`] with more environment variables.
    pub fn spawn_env(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd(args)
            .envs(env.iter().copied())
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn flotilla");
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        format!(
            "--- {} ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn logs(procs: &[&Proc]) -> String {
    procs.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n")
}

/// Polls `f` until it gives a value, or panics with `what` and the processes' logs.
pub fn wait_for<T>(
    within: Duration,
    what: &str,
    procs: &[&Proc],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", logs(procs));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A cluster: etcd, one coordinator, workers; all killed when dropped.
pub struct Cluster {
    pub dir: PathBuf,
    pub etcd: Etcd,
    pub token_file: PathBuf,
    pub port: u16,
    pub coordinator: Option<Proc>,
    pub workers: BTreeMap<String, Proc>,
    /// Each process's `--http` port (metrics), by name (`coordinator`, worker ids).
    pub http: std::sync::Mutex<BTreeMap<String, u16>>,
}

impl Cluster {
    pub fn start(dir: &Path, workers: usize) -> Cluster {
        let etcd = Etcd::start();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            coordinator: None,
            etcd,
            token_file,
            port,
            workers: BTreeMap::new(),
            http: Default::default(),
        };
        c.coordinator = Some(c.spawn_coordinator("coordinator-1"));
        for i in 1..=workers {
            let id = format!("w{i}");
            let p = c.spawn_worker(&id);
            c.workers.insert(id, p);
        }
        c.wait_ready();
        c
    }

    /// A fresh `--http` address for `name`, remembered in `http`.
    fn http_addr(&self, name: &str) -> String {
        let port = free_port();
        self.http.lock().unwrap().insert(name.to_string(), port);
        format!("127.0.0.1:{port}")
    }

    /// `/metrics` of process `name` (`coordinator` or a worker id).
    pub fn metrics(&self, name: &str) -> String {
        use std::io::{Read, Write};
        let port = self.http.lock().unwrap()[name];
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }

    pub fn spawn_coordinator(&self, name: &str) -> Proc {
        let listen = format!("127.0.0.1:{}", self.port);
        let http = self.http_addr("coordinator");
        Proc::spawn(
            name,
            &self.dir,
            &[
                "coordinator",
                "--etcd",
                &self.etcd.endpoint(),
                "--listen",
                &listen,
                "--advertise",
                &listen,
                "--data-dir",
                self.dir.join("coordinator-data").to_str().unwrap(),
                "--token-file",
                self.token_file.to_str().unwrap(),
                "--lease-ttl-s",
                "2",
                "--http",
                &http,
            ],
        )
    }

    pub fn spawn_worker(&self, id: &str) -> Proc {
        self.spawn_worker_with(id, &[])
    }

    /// [`Cluster::spawn_worker`] with more flags.
    pub fn spawn_worker_with(&self, id: &str, extra: &[&str]) -> Proc {
        self.spawn_worker_env(id, extra, &[])
    }

    /// [`Cluster::spawn_worker_with`] with more environment variables.
    pub fn spawn_worker_env(&self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let http = self.http_addr(id);
        let work = self.dir.join(format!("work-{id}"));
        let endpoint = self.etcd.endpoint();
        let mut args = vec![
            "worker",
            "--etcd",
            &endpoint,
            "--token-file",
            self.token_file.to_str().unwrap(),
            "--id",
            id,
            "--work-dir",
            work.to_str().unwrap(),
            "--lease-ttl-s",
            "2",
            "--http",
            &http,
        ];
        args.extend_from_slice(extra);
        Proc::spawn_env(id, &self.dir, &args, env)
    }

    pub fn procs(&self) -> Vec<&Proc> {
        self.coordinator
            .iter()
            .chain(self.workers.values())
            .collect()
    }

    /// `flotilla ARGS --etcd E --token-file T --output json` (the CLI finds the coordinator
    /// through the leader key).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let endpoint = self.etcd.endpoint();
        all.extend([
            "--etcd",
            &endpoint,
            "--token-file",
            self.token_file.to_str().unwrap(),
            "--output",
            "json",
        ]);
        run(&all)
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "flotilla {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                logs(&self.procs())
            );
        }
        ok_json(&out)
    }

    /// `flotilla workers`, or None while the coordinator cannot be reached.
    pub fn workers_json(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["workers"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until every worker is connected to the coordinator.
    pub fn wait_ready(&self) {
        let n = self.workers.len();
        wait_for(
            Duration::from_secs(120),
            "the workers to connect",
            &self.procs(),
            || {
                let ws = self.workers_json()?;
                (ws.iter().filter(|w| w["connected"] == true).count() >= n).then_some(())
            },
        );
    }

    pub fn submit(&self, sweep: &Path) -> String {
        let v = self.cli_json(&["sweep", "submit", sweep.to_str().unwrap()]);
        v["sweep_id"].as_str().unwrap().to_string()
    }

    pub fn status(&self, sweep_id: &str) -> Option<Value> {
        let out = self.cli(&["sweep", "status", sweep_id]);
        out.status.success().then(|| ok_json(&out))
    }

    /// `flotilla sweep watch` until the sweep ends; it must succeed.
    pub fn watch(&self, sweep_id: &str) -> Value {
        let v = self.cli_json(&["sweep", "watch", sweep_id]);
        assert_eq!(v["state"], "succeeded", "{v:#}\n{}", logs(&self.procs()));
        v
    }

    pub fn results(&self, sweep_id: &str, out: &Path) -> Value {
        self.cli_json(&["sweep", "results", sweep_id, "--out", out.to_str().unwrap()])
    }
}
