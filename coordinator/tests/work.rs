//! The Work protocol against a real coordinator on a loopback port: sweeps of no-op shards,
//! fencing, requeues, restarts, tokens and artifacts.

mod common;

use common::*;
use flotilla_contract::shard::NoopShard;
use flotilla_coordinator::sweep::Retries;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::coordinator_message::Kind as Out;
use flotilla_proto::v1::worker_message::Kind as In;
use std::collections::HashSet;
use std::time::Duration;

fn noops(n: usize) -> Vec<NoopShard> {
    vec![NoopShard::default(); n]
}

async fn stored_results(
    c: &flotilla_coordinator::RunningCoordinator,
    sweep: &str,
) -> Vec<(String, i64)> {
    let id = sweep.to_string();
    c.core()
        .store
        .call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT r.shard_id, r.attempt FROM results r JOIN shards s ON s.id = r.shard_id
                 WHERE s.sweep_id = ?1 ORDER BY r.shard_id",
            )?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sweep_of_noop_shards_runs_across_workers_and_every_result_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let sweep = c
        .core()
        .submit_noop("three workers", noops(30), Retries::default())
        .await
        .unwrap();
    let mut ws = Vec::new();
    for i in 0..3 {
        ws.push(TestWorker::connect(&c, &format!("w{i}"), &[]).await);
    }
    let mut tasks = Vec::new();
    for mut w in ws {
        tasks.push(tokio::spawn(async move {
            w.drain(Duration::from_millis(500)).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        let n = t.await.unwrap();
        assert!(n > 0, "every worker got work");
        total += n;
    }
    assert_eq!(total, 30);
    let st = wait_end(&c, &sweep).await;
    assert_eq!(st.state, pb::SweepState::Succeeded as i32, "{st:?}");
    assert_eq!((st.shards_total, st.shards_done), (30, 30));
    let rows = stored_results(&c, &sweep).await;
    assert_eq!(rows.len(), 30);
    let distinct: HashSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(distinct.len(), 30);
    // Workers are listed with their completed shards.
    let listed = client(&c)
        .await
        .grpc()
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .workers
            .iter()
            .map(|w| w.shards_completed)
            .sum::<u64>(),
        30
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_dropped_stream_requeues_and_its_late_result_is_refused_while_duplicates_are_noops() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let sweep = c
        .core()
        .submit_noop("fencing", noops(1), Retries::default())
        .await
        .unwrap();
    let mut a = TestWorker::connect(&c, "a", &[]).await;
    a.ask(1);
    let first = a.assignment().await;
    assert_eq!(first.attempt, 1);
    // Worker a's stream drops mid-shard: the shard goes back to the queue...
    drop(a);
    let mut b = TestWorker::connect(&c, "b", &[]).await;
    b.ask(1);
    let second = b.assignment().await;
    assert_eq!(second.shard_id, first.shard_id);
    assert_eq!(second.attempt, 2);
    // ...and a's result, arriving late on a new stream, is refused.
    let mut a = TestWorker::connect(&c, "a", &[]).await;
    a.result(&first, serde_json::json!({"worker_id": "a"}));
    let ack = a.ack().await;
    assert!(!ack.accepted);
    assert!(ack.reason.contains("superseded"), "{}", ack.reason);
    // b's result is stored; sending it again is a no-op.
    b.result(&second, serde_json::json!({"worker_id": "b"}));
    assert!(b.ack().await.accepted);
    b.result(&second, serde_json::json!({"worker_id": "b"}));
    let dup = b.ack().await;
    assert!(dup.accepted && dup.reason.contains("duplicate"), "{dup:?}");
    assert_eq!(
        wait_end(&c, &sweep).await.state,
        pb::SweepState::Succeeded as i32
    );
    assert_eq!(
        stored_results(&c, &sweep).await,
        vec![(first.shard_id.clone(), 2)]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_silent_worker_is_dropped_after_the_heartbeat_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_with(dir.path(), |cfg| {
        cfg.heartbeat_timeout = Duration::from_millis(600)
    })
    .await;
    let sweep = c
        .core()
        .submit_noop("heartbeat", noops(1), Retries::default())
        .await
        .unwrap();
    let mut silent = TestWorker::connect(&c, "silent", &[]).await;
    silent.ask(1);
    let a1 = silent.assignment().await;
    // It says nothing more; after the timeout its stream is closed with a reason.
    let end = silent.closed_with().await;
    assert!(
        end.as_deref().unwrap_or_default().contains("heartbeat"),
        "{end:?}"
    );
    let mut w = TestWorker::connect(&c, "alive", &[]).await;
    w.ask(1);
    let a2 = w.assignment().await;
    assert_eq!(
        (a2.shard_id.as_str(), a2.attempt),
        (a1.shard_id.as_str(), 2)
    );
    w.result(&a2, serde_json::json!({}));
    assert!(w.ack().await.accepted);
    assert_eq!(
        wait_end(&c, &sweep).await.state,
        pb::SweepState::Succeeded as i32
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_restarted_coordinator_continues_the_sweep_and_refuses_results_from_before() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let sweep = c
        .core()
        .submit_noop("restart", noops(6), Retries::default())
        .await
        .unwrap();
    let mut w = TestWorker::connect(&c, "w", &[]).await;
    for _ in 0..3 {
        w.ask(1);
        let a = w.assignment().await;
        w.result(&a, serde_json::json!({}));
        assert!(w.ack().await.accepted);
    }
    // One shard is running when the coordinator stops.
    w.ask(1);
    let running = w.assignment().await;
    drop(w);
    c.shutdown().await;

    let c = start(dir.path()).await;
    let st = c
        .core()
        .status(&sweep)
        .expect("the sweep survived the restart");
    assert_eq!(st.shards_done, 3);
    let mut w = TestWorker::connect(&c, "w", &[]).await;
    // The attempt from before the restart is no longer current.
    w.result(&running, serde_json::json!({}));
    let ack = w.ack().await;
    assert!(!ack.accepted, "{ack:?}");
    assert_eq!(w.drain(Duration::from_millis(500)).await, 3);
    assert_eq!(
        wait_end(&c, &sweep).await.state,
        pb::SweepState::Succeeded as i32
    );
    let rows = stored_results(&c, &sweep).await;
    assert_eq!(rows.len(), 6, "nothing lost, nothing doubled: {rows:?}");
    let again: Vec<_> = rows.iter().filter(|r| r.0 == running.shard_id).collect();
    assert_eq!(
        again[0].1, 2,
        "the interrupted shard's result is from its second attempt"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn task_failures_are_retried_within_budget_then_fail_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let retries = Retries {
        task: 1,
        infrastructure: 0,
    };
    let sweep = c
        .core()
        .submit_noop("budget", noops(1), retries)
        .await
        .unwrap();
    let mut w = TestWorker::connect(&c, "w", &[]).await;
    for (i, expect_state) in [(1, pb::SweepState::Running), (2, pb::SweepState::Failed)] {
        w.ask(1);
        let a = w.assignment().await;
        assert_eq!(a.attempt, i);
        w.send(In::Failure(pb::ShardFailure {
            shard_id: a.shard_id.clone(),
            attempt: a.attempt,
            kind: pb::FailureKind::Task as i32,
            message: "case file unreadable".into(),
        }));
        assert!(w.ack().await.accepted);
        let st = c.core().status(&sweep).unwrap();
        assert_eq!(st.state, expect_state as i32, "{st:?}");
    }
    let st = c.core().status(&sweep).unwrap();
    assert!(st.error.contains("case file unreadable"), "{}", st.error);
    c.shutdown().await;
}

#[tokio::test]
async fn callers_without_the_right_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let address = format!("http://{}", c.local_addr());
    for token in [None, Some("wrong".to_string())] {
        let client = flotilla_coordinator::client::Client::connect(&address, token.clone())
            .await
            .unwrap();
        let e = client
            .grpc()
            .list_sweeps(pb::ListSweepsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token:?}: {e:?}");
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::WorkerMessage>();
        let e = client
            .grpc()
            .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    assert!(client(&c)
        .await
        .grpc()
        .list_sweeps(pb::ListSweepsRequest {})
        .await
        .is_ok());
    c.shutdown().await;
}

#[tokio::test]
async fn artifacts_round_trip_in_chunks_resume_when_cut_and_corrupt_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let client = client(&c).await;
    // Bigger than one chunk, so it travels in several.
    let data: Vec<u8> = (0..(2_500_000u32)).map(|i| (i % 251) as u8).collect();
    let art = client.upload_bytes(&data).await.unwrap();
    assert_eq!(art.size, data.len() as u64);
    let out = dir.path().join("down/blob");
    client.download(&art, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // An upload whose content does not match the announced hash is refused and not kept.
    let claimed = flotilla_coordinator::artifacts::sha256_hex(b"the real thing");
    let chunk = pb::ArtifactChunk {
        artifact: Some(pb::ArtifactRef {
            sha256: claimed.clone(),
            size: 14,
        }),
        data: b"the fake thing".to_vec(),
    };
    let e = client
        .grpc()
        .upload_artifact(tokio_stream::iter(vec![chunk]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("corrupt upload"), "{}", e.message());
    let e = client
        .grpc()
        .download_artifact(pb::DownloadRequest {
            artifact: Some(pb::ArtifactRef {
                sha256: claimed,
                size: 14,
            }),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A download cut at 60% resumes from its bytes: the coordinator sends only the rest.
    let big: Vec<u8> = (0..24_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let art = client.upload_bytes(&big).await.unwrap();
    let out = dir.path().join("down/big");
    let partial = dir.path().join("down/.big.partial");
    let sent = || -> u64 {
        let text = c.core().render_metrics();
        text.lines()
            .find(|l| l.starts_with("flotilla_artifact_bytes_total{direction=\"download\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let cut = client
        .download_cut_after(&art, &out, Some(big.len() as u64 * 6 / 10))
        .await
        .unwrap_err();
    assert!(cut.to_string().contains("cut after"), "{cut}");
    assert!(!out.exists());
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(
        kept >= big.len() as u64 * 6 / 10 && kept < big.len() as u64,
        "{kept}"
    );
    let before = sent();
    client.download(&art, &out).await.unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        big,
        "the resumed file is whole"
    );
    assert!(!partial.exists());
    assert_eq!(
        sent() - before,
        big.len() as u64 - kept,
        "only the rest was sent again"
    );
    // Two downloads of one file at once (two workers sharing a cache folder) both end whole:
    // the second writes beside the first instead of into its partial file.
    let both = dir.path().join("down/both");
    let (x, y) = tokio::join!(client.download(&art, &both), client.download(&art, &both));
    x.unwrap();
    y.unwrap();
    assert_eq!(std::fs::read(&both).unwrap(), big);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("down"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("both.partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Bytes that do not add up are thrown away, and the next download starts afresh.
    let again = dir.path().join("down/again");
    std::fs::write(dir.path().join("down/.again.partial"), vec![7u8; 1000]).unwrap();
    let e = client.download(&art, &again).await.unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(!dir.path().join("down/.again.partial").exists());
    client.download(&art, &again).await.unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), big);
    // An offset past the end is refused by name.
    let e = client
        .grpc()
        .download_artifact(pb::DownloadRequest {
            artifact: Some(art.clone()),
            offset: big.len() as u64 + 1,
        })
        .await;
    let e = match e {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert!(e.message().contains("past the end"), "{}", e.message());
    c.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_sweep_tells_the_workers_and_refuses_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let sweep = c
        .core()
        .submit_noop("cancel", noops(3), Retries::default())
        .await
        .unwrap();
    let mut w = TestWorker::connect(&c, "w", &[]).await;
    w.ask(1);
    let a = w.assignment().await;
    let st = client(&c)
        .await
        .grpc()
        .cancel_sweep(pb::SweepRef {
            sweep_id: sweep.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, pb::SweepState::Cancelled as i32);
    match w.recv().await {
        Out::Cancel(x) => assert_eq!(x.shard_id, a.shard_id),
        other => panic!("expected a cancel, got {other:?}"),
    }
    w.result(&a, serde_json::json!({}));
    assert!(!w.ack().await.accepted);
    c.shutdown().await;
}

#[tokio::test]
async fn the_dispatch_benchmark_stores_every_shard_once() {
    let report =
        flotilla_coordinator::bench::dispatch(flotilla_coordinator::bench::DispatchOptions {
            workers: 4,
            shards: 200,
            slots: 2,
            data_dir: None,
            // Watched as it runs: /metrics and /api/state scraped.
            http: Some("127.0.0.1:0".parse().unwrap()),
        })
        .await
        .unwrap();
    assert_eq!(report.results_stored, 200);
    assert!(report.http && report.scrapes >= 1, "{report:?}");
    assert!(report.shards_per_second > 0.0);
    assert!(report.assignment_latency_p99_ms >= report.assignment_latency_p50_ms);
}
