//! A real coordinator on a loopback port, and test workers that speak the Work protocol by
//! hand so each test can decide what a worker does (answer, stall, vanish, lie).
#![allow(dead_code)]

use flotilla_client::registry::MemoryRegistry;
use flotilla_contract::ShardSpec;
use flotilla_coordinator::client::Client;
use flotilla_coordinator::{serve, CoordinatorConfig, RunningCoordinator};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_message::Kind as Out;
use flotilla_proto::v1::worker_message::Kind as In;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const TOKEN: &str = "test-token";

pub async fn start(data_dir: &Path) -> RunningCoordinator {
    start_with(data_dir, |_| {}).await
}

pub async fn start_with(
    data_dir: &Path,
    tweak: impl FnOnce(&mut CoordinatorConfig),
) -> RunningCoordinator {
    let mut config = CoordinatorConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir,
        Arc::new(MemoryRegistry::new()),
    );
    config.token = Some(TOKEN.into());
    config.heartbeat = Duration::from_millis(200);
    tweak(&mut config);
    serve(config).await.expect("coordinator starts")
}

pub async fn client(c: &RunningCoordinator) -> Client {
    Client::connect(&format!("http://{}", c.local_addr()), Some(TOKEN.into()))
        .await
        .expect("client connects")
}

/// A worker driven step by step by the test.
pub struct TestWorker {
    pub id: String,
    tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    rx: tonic::Streaming<pb::CoordinatorMessage>,
}

impl TestWorker {
    pub async fn connect(c: &RunningCoordinator, id: &str, loaded: &[&str]) -> TestWorker {
        let client = client(c).await;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::WorkerMessage {
            kind: Some(In::Hello(pb::Hello {
                worker_id: id.into(),
                capabilities: Some(pb::Capabilities {
                    slots: 1,
                    models_loaded: loaded.iter().map(|m| m.to_string()).collect(),
                    ..Default::default()
                }),
            })),
        })
        .unwrap();
        let mut rx = client
            .grpc()
            .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("work stream opens")
            .into_inner();
        match next(&mut rx).await {
            Out::Welcome(_) => {}
            other => panic!("expected welcome, got {other:?}"),
        }
        TestWorker {
            id: id.into(),
            tx,
            rx,
        }
    }

    pub fn send(&self, k: In) {
        self.tx.send(pb::WorkerMessage { kind: Some(k) }).unwrap();
    }

    pub fn ask(&self, free: u32) {
        self.send(In::Ask(pb::WorkRequest {
            free_slots: free,
            models_loaded: Vec::new(),
            memory_free_bytes: 0,
            paused: String::new(),
            models_held: Vec::new(),
            prefill_tokens_per_s: 0.0,
        }));
    }

    /// The next message (assignment, ack, cancel), within 10 s.
    pub async fn recv(&mut self) -> Out {
        next(&mut self.rx).await
    }

    /// Skip messages until the coordinator ends the stream; returns its status message.
    pub async fn closed_with(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
                Ok(Err(status)) => return Some(status.message().to_string()),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Some("closed without a status".into()),
                Err(_) => return None,
            }
        }
    }

    pub async fn assignment(&mut self) -> pb::Assignment {
        match self.recv().await {
            Out::Assign(a) => a,
            other => panic!("{}: expected an assignment, got {other:?}", self.id),
        }
    }

    pub async fn ack(&mut self) -> pb::Ack {
        match self.recv().await {
            Out::Ack(a) => a,
            other => panic!("{}: expected an ack, got {other:?}", self.id),
        }
    }

    /// Answers `a` with `json`: the output's fields, tagged here with the assignment's kind as
    /// a worker's `ShardOutput` is.
    pub fn result(&self, a: &pb::Assignment, json: serde_json::Value) {
        let kind = ShardSpec::from_json(&a.spec).unwrap().kind();
        let mut json = json;
        json.as_object_mut()
            .expect("a shard output is an object")
            .insert("kind".into(), kind.as_str().into());
        self.result_raw(&a.shard_id, a.attempt, json, Vec::new());
    }

    /// Answers with `json` as it is (tests of refused outputs tag it themselves).
    pub fn result_raw(
        &self,
        shard: &str,
        attempt: u32,
        json: serde_json::Value,
        artifacts: Vec<pb::FileRef>,
    ) {
        self.send(In::Result(pb::ShardResult {
            shard_id: shard.into(),
            attempt,
            output: serde_json::to_vec(&json).unwrap(),
            artifacts,
            seconds: 0.01,
            units: 1,
        }));
    }

    /// Answer assignments until none comes within `idle`; returns how many were done.
    pub async fn drain(&mut self, idle: Duration) -> usize {
        let mut n = 0;
        loop {
            self.ask(1);
            let msg = tokio::time::timeout(idle, self.rx.message()).await;
            let Ok(Ok(Some(pb::CoordinatorMessage {
                kind: Some(Out::Assign(a)),
            }))) = msg
            else {
                return n;
            };
            self.result(&a, serde_json::json!({"worker_id": self.id}));
            let ack = self.ack().await;
            assert!(ack.accepted, "{ack:?}");
            n += 1;
        }
    }
}

async fn next(rx: &mut tonic::Streaming<pb::CoordinatorMessage>) -> Out {
    let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a message within 10 s")
        .expect("stream healthy")
        .expect("stream open");
    m.kind.expect("message has a kind")
}

/// Wait until the sweep ends; returns its final status.
pub async fn wait_end(c: &RunningCoordinator, sweep: &str) -> pb::SweepStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.core().status(sweep).expect("sweep exists");
        if st.state >= pb::SweepState::Succeeded as i32 {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sweep did not end: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The repository's examples folder.
pub fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
