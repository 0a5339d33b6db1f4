//! Traces as a user collects them: real `flotilla` processes export spans over OTLP to a real
//! receiver on loopback (the collector's gRPC service and its HTTP/protobuf endpoint, started
//! here). One trace must run from the CLI's `sweep submit` through the coordinator's
//! submission and assignments to each shard's work on its worker process.
//!
//! One test in its own binary: it sets the `OTEL_*` variables for the processes it starts.

mod common;

use common::procs::*;
use common::{flotilla, tmp};
use flotilla_tests::etcd::free_port;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

type Received = Arc<Mutex<Vec<Span>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn flatten(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn keep(received: &Received, req: ExportTraceServiceRequest) {
    let mut all = received.lock().unwrap();
    for rs in req.resource_spans {
        let resource = flatten(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        for ss in rs.scope_spans {
            for s in ss.spans {
                all.push(Span {
                    name: s.name,
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attributes: flatten(&s.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver on loopback: OTLP/gRPC on one port, OTLP/HTTP (`POST /v1/traces`) on another.
struct Receiver {
    spans: Received,
    grpc_port: u16,
    http_port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let spans: Received = Arc::default();
        let (grpc_port, http_port) = (free_port(), free_port());
        let s = spans.clone();
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Grpc(s)))
                .serve(([127, 0, 0, 1], grpc_port).into())
                .await
                .unwrap();
        });
        let s = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let req = <ExportTraceServiceRequest as prost::Message>::decode(body)
                        .expect("an OTLP/HTTP body is an ExportTraceServiceRequest");
                    keep(&s, req);
                    ""
                }
            }),
        );
        runtime.spawn(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
                .await
                .unwrap();
            axum::serve(l, app).await.unwrap();
        });
        Receiver {
            spans,
            grpc_port,
            http_port,
            _runtime: runtime,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `ready` holds for what arrived (spans are batched every 100 ms here).
    fn wait(&self, what: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans();
            if ready(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after 60 s; received: {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One RAG case, answered by the base model and a one-step LoRA trained by the sweep.
fn write_sweep(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("docs/ferry.txt"),
        "The ferry Aurora crosses the bay six times a day. It carries 120 passengers.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cases.jsonl"),
        serde_json::json!({"id": "ferry-trips", "task": "rag", "language": "en",
            "query": "How many times a day does the Aurora cross the bay?",
            "reference_answer": "Six times a day.", "documents": ["docs/ferry.txt"]})
        .to_string()
            + "\n",
    )
    .unwrap();
    flotilla_tests::write_chat_jsonl(
        &dir.join("train.jsonl"),
        &[
            ("How many passengers does the ferry carry?", "120."),
            ("How often does the ferry cross?", "Six times a day."),
        ],
    );
    let yaml = "name: traced
seed: 5
models: [smollm2]
variants: [query_first]
adapters:
  - base
  - name: lora
    train:
      data: train.jsonl
      steps: 1
      batch_size: 2
      max_seq_len: 48
      holdout: 0
      eval_every: 0
      checkpoint_every: 0
      lora:
        rank: 2
        alpha: 4
        target_modules: [q_proj]
datasets:
  - name: tiny
    cases: cases.jsonl
judge:
  judges: [smollm2]
  explanation_tokens: 4
generation:
  max_tokens: 6
retrieval:
  top_k: 1
shard_size: 1
";
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn one_trace_runs_from_the_cli_through_the_coordinator_to_the_workers() {
    let receiver = Receiver::start();

    // OTLP/HTTP, with the service named by the standard variables.
    let out = common::procs::cmd(&["model", "list", "--output", "json"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.http_port),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "flotilla-cli-test")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = receiver.wait("span over OTLP/HTTP", |s| !s.is_empty());
    let root = &spans[0];
    assert_eq!(root.name, "flotilla");
    assert_eq!(root.attributes["command"], "model list", "{root:?}");
    assert_eq!(root.resource["service.name"], "flotilla-cli-test");
    assert_eq!(root.resource["deployment.environment"], "ci");
    assert!(root.parent.is_empty() || root.parent.chars().all(|c| c == '0'));

    // A protocol flotilla does not speak is refused by name.
    let out = common::procs::cmd(&["model", "list"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
    // Without an endpoint nothing is exported, and nothing fails.
    let out = flotilla(&["model", "list"]);
    assert!(out.status.success());

    // OTLP/gRPC for every process of a cluster: the CLI, the coordinator and a worker.
    // SAFETY: this binary's only test; no other thread reads the environment meanwhile.
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.grpc_port),
        );
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        std::env::remove_var("OTEL_SERVICE_NAME");
    }
    let dir = tmp("traces");
    let sweep = write_sweep(&dir);
    let cluster = Cluster::start(&dir, 1);
    let id = cluster.submit(&sweep);
    let status = cluster.watch(&id);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let spans = receiver.wait("judge span of the sweep", |s| {
        s.iter().filter(|s| s.name == "judge").count() >= 2
            && s.iter().any(|s| s.name == "submit sweep")
    });
    let listed = spans
        .iter()
        .filter(|s| s.name == "flotilla" && s.attributes["command"] == "model list")
        .count();
    assert_eq!(listed, 1, "only the exporting `model list` sent a span");
    let by_name = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };

    let submit_cli: Vec<&Span> = by_name("flotilla")
        .into_iter()
        .filter(|s| s.attributes["command"] == "sweep submit")
        .collect();
    assert_eq!(submit_cli.len(), 1, "{submit_cli:#?}");
    let cli = submit_cli[0];
    assert_eq!(cli.resource["service.name"], "flotilla");
    let trace = &cli.trace;

    // The coordinator's submission is the CLI span's child, over gRPC metadata.
    let submit = by_name("submit sweep");
    assert_eq!(submit.len(), 1);
    assert_eq!(
        &submit[0].trace, trace,
        "the coordinator continues the CLI's trace"
    );
    assert_eq!(submit[0].parent, cli.id);
    assert_eq!(submit[0].attributes["sweep"], id);

    // Every assignment hangs off the submission; every shard's work off its assignment.
    let assigns = by_name("assign shard");
    assert!(
        assigns.len() >= 5,
        "train, 2 generate, 2 judge: {assigns:#?}"
    );
    for a in &assigns {
        assert_eq!(&a.trace, trace);
        assert_eq!(a.parent, submit[0].id);
        assert_eq!(a.attributes["worker"], "w1");
        assert_eq!(a.attributes["sweep"], id);
    }
    let shards = by_name("shard");
    assert_eq!(shards.len(), assigns.len(), "{shards:#?}");
    for s in &shards {
        assert_eq!(
            &s.trace, trace,
            "the worker carries the coordinator's trace id"
        );
        let a = assigns
            .iter()
            .find(|a| a.id == s.parent)
            .unwrap_or_else(|| panic!("shard span without its assignment: {s:?}"));
        assert_eq!(a.attributes["shard"], s.attributes["shard"]);
        assert_eq!(s.attributes["worker"], "w1");
        assert_eq!(s.attributes["outcome"], "succeeded", "{s:?}");
        assert!(s.attributes.contains_key("attempt"));
    }
    // The work inside a shard: each a descendant of a shard span of this trace.
    let ids: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let under_shard = |s: &Span| -> bool {
        let mut p = s.parent.as_str();
        while let Some(up) = ids.get(p) {
            if up.name == "shard" {
                return true;
            }
            p = up.parent.as_str();
        }
        false
    };
    for name in ["load model", "retrieve", "generate", "judge", "train step"] {
        let found = by_name(name);
        assert!(!found.is_empty(), "no `{name}` span");
        for s in found {
            assert_eq!(&s.trace, trace, "{s:?}");
            assert!(under_shard(s), "`{name}` is not inside a shard: {s:?}");
        }
    }
    let generated = by_name("generate");
    assert!(generated
        .iter()
        .all(|g| g.attributes["completion_tokens"].parse::<u64>().unwrap() > 0));
    assert!(by_name("load model")
        .iter()
        .any(|l| l.attributes["model"] == "smollm2"));
}
