//! A real etcd for tests: `/usr/bin/etcd` (Debian `etcd-server`) started on free loopback
//! ports with a temporary data directory, killed and removed when the handle drops.
//!
//! Tests that need etcd fail loudly when it is missing: the test command installs it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where etcd is looked for: `FLOTILLA_ETCD_BIN`, else `etcd` on PATH, else `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FLOTILLA_ETCD_BIN") {
        return PathBuf::from(p);
    }
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// One etcd member running for the life of this handle.
pub struct Etcd {
    child: Option<Child>,
    data: crate::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it accepts clients. Panics with the fix if etcd is not
    /// installed or does not come up.
    pub fn start() -> Etcd {
        let bin = etcd_binary();
        assert!(
            bin.is_file(),
            "{} is missing: install etcd (Debian package etcd-server; scripts/test.sh does)",
            bin.display()
        );
        let mut last_err = String::new();
        for _ in 0..5 {
            let data = crate::temp_dir("etcd");
            let (client_port, peer_port) = (free_port(), free_port());
            let mut etcd = Etcd {
                child: None,
                data,
                client_port,
                peer_port,
            };
            match etcd.spawn() {
                Ok(()) => return etcd,
                Err(e) => last_err = e,
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.data.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(etcd_binary())
            .args(["--name", "flotilla-test"])
            .arg("--data-dir")
            .arg(self.data.path().join("member"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("flotilla-test={peer}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", etcd_binary().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("etcd exited with {status}: {log}"));
            }
            if TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() && self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err("etcd did not accept clients within 20 s".into())
    }

    /// etcd's `/health` answers `"health":"true"` once the member has a leader.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URL as the one-element list the registry takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Kills etcd (SIGKILL) without removing its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data after [`Etcd::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("etcd restarts on its data");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
