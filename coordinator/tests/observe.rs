//! What a coordinator shows about itself: Prometheus metrics over `--http` after a real sweep
//! (parsed as an exposition, names checked against Prometheus' conventions, values against
//! what happened), liveness and readiness, and the standard gRPC health service on its port.

mod common;

use common::*;
use flotilla_contract::shard::NoopShard;
use flotilla_coordinator::sweep::Retries;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::worker_message::Kind as In;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// GET `path` from `addr`: (status, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Small bodies; undo chunked encoding if the server used it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parse an OpenMetrics text exposition strictly enough to fail on anything malformed:
/// returns the samples and each family's declared type.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "an exposition ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("closing brace");
                let labels = l
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        samples.push((name, labels, value));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}

// Two runtime threads: the test's blocking HTTP requests must not starve the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_sweep_and_the_health_services_answer() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(dir.path(), |cfg| {
        cfg.http = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let http = c.http_addr().expect("--http is serving");

    // grpc.health.v1 on the gRPC port, without the token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "flotilla.v1.Coordinator"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    assert_eq!(get(http, "/healthz").0, 200);
    assert_eq!(get(http, "/readyz").0, 200);
    assert_eq!(get(http, "/nothing").0, 404);

    // Before any work: the queue is empty, no worker.
    let (before, _) = parse(&get(http, "/metrics").1);
    assert_eq!(value(&before, "flotilla_queue_depth", &[]), Some(0.0));

    // A sweep of 12 no-op shards, one failing once (an infrastructure failure).
    let sweep = c
        .core()
        .submit_noop(
            "observed",
            vec![NoopShard::default(); 12],
            Retries::default(),
        )
        .await
        .unwrap();
    let mut w = TestWorker::connect(&c, "w1", &[]).await;
    w.ask(1);
    let first = w.assignment().await;
    w.send(In::Failure(pb::ShardFailure {
        shard_id: first.shard_id.clone(),
        attempt: first.attempt,
        kind: pb::FailureKind::Infrastructure as i32,
        message: "cut off".into(),
    }));
    assert!(w.ack().await.accepted);
    w.drain(Duration::from_millis(500)).await;
    let st = wait_end(&c, &sweep).await;
    assert_eq!(st.shards_done, 12);

    let (status, text) = get(http, "/metrics");
    assert_eq!(status, 200);
    let (samples, types) = parse(&text);
    // Conventions: the prefix, snake case, counters' samples end in _total, histograms have
    // their buckets, sum and count, units in base units.
    for (name, _, _) in &samples {
        assert!(name.starts_with("flotilla_"), "{name}");
        assert!(
            name.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
            "{name}"
        );
        assert!(
            !name.contains("_ms") && !name.contains("milli"),
            "base units: {name}"
        );
    }
    for (family, kind) in &types {
        let of_family: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.0 == *family || s.0.starts_with(&format!("{family}_")))
            .collect();
        match kind.as_str() {
            "counter" => assert!(
                of_family.iter().all(|s| s.0 == format!("{family}_total")),
                "{family}: counter samples end in _total"
            ),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    assert!(
                        of_family.iter().any(|s| s.0.ends_with(suffix)),
                        "{family}{suffix}"
                    )
                }
            }
            "gauge" => assert!(of_family.iter().all(|s| s.0 == *family), "{family}"),
            other => panic!("{family}: unexpected type {other}"),
        }
    }
    // Values: 13 assignments (12 shards, one twice), one infrastructure requeue, 12 settled.
    assert_eq!(
        value(&samples, "flotilla_assignments_total", &[]),
        Some(13.0)
    );
    assert_eq!(
        value(
            &samples,
            "flotilla_requeues_total",
            &[("kind", "infrastructure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "flotilla_shard_outcomes_total",
            &[("outcome", "succeeded")]
        ),
        Some(12.0)
    );
    assert_eq!(
        value(&samples, "flotilla_shards", &[("state", "succeeded")]),
        Some(12.0)
    );
    assert_eq!(value(&samples, "flotilla_queue_depth", &[]), Some(0.0));
    assert_eq!(
        value(
            &samples,
            "flotilla_workers",
            &[("device", "cpu"), ("connected", "true")]
        ),
        Some(1.0)
    );
    let commits = value(&samples, "flotilla_sqlite_commit_seconds_count", &[]).unwrap();
    assert!(commits >= 13.0, "group commits observed: {commits}");
    assert!(value(&samples, "flotilla_process_resident_memory_bytes", &[]).unwrap() > 1e6);

    // The dashboard's state lists that failed attempt, with who ran it and why.
    let (status, body) = get(http, "/api/state");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let failures = state["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{state:#}");
    let f = &failures[0];
    assert_eq!(f["shard_id"], first.shard_id.as_str());
    assert_eq!(
        (f["worker_id"].as_str(), f["kind"].as_str()),
        (Some("w1"), Some("infrastructure"))
    );
    assert_eq!(f["message"], "cut off");
    assert_eq!(state["sweeps"][0]["shards_done"], 12);
    c.shutdown().await;
}
