use super::*;

async fn next(rx: &mut mpsc::Receiver<WorkerEvent>) -> WorkerEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the watch is open")
}

#[tokio::test]
async fn memory_registry_reports_workers_coming_and_going() {
    let reg = MemoryRegistry::new();
    let a = reg
        .register_worker("a", "{\"slots\":1}".into())
        .await
        .unwrap();
    let mut events = reg.watch_workers().await.unwrap();
    assert_eq!(
        next(&mut events).await,
        WorkerEvent::Up(WorkerEntry {
            id: "a".into(),
            capabilities_json: "{\"slots\":1}".into()
        })
    );
    let b = reg.register_worker("b", "{}".into()).await.unwrap();
    assert!(matches!(next(&mut events).await, WorkerEvent::Up(e) if e.id == "b"));
    assert_eq!(reg.workers().await.unwrap().len(), 2);
    drop(a);
    assert_eq!(next(&mut events).await, WorkerEvent::Down("a".into()));
    assert_eq!(reg.workers().await.unwrap()[0].id, "b");
    assert!(reg.expire_worker("b"));
    assert_eq!(next(&mut events).await, WorkerEvent::Down("b".into()));
    let mut b = b;
    tokio::time::timeout(Duration::from_secs(2), b.lost())
        .await
        .expect("the registration notices the expiry");
}

#[tokio::test]
async fn memory_registry_elects_one_leader_at_a_time() {
    let reg = MemoryRegistry::new();
    assert_eq!(reg.leader().await.unwrap(), None);
    let first = reg.lead("127.0.0.1:1").await.unwrap();
    assert_eq!(reg.leader().await.unwrap().as_deref(), Some("127.0.0.1:1"));
    let r2 = reg.clone();
    let second = tokio::spawn(async move { r2.lead("127.0.0.1:2").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !second.is_finished(),
        "a second leader while the first holds"
    );
    drop(first);
    let _second = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("the second candidate is elected")
        .unwrap();
    assert_eq!(reg.leader().await.unwrap().as_deref(), Some("127.0.0.1:2"));
}

#[tokio::test]
async fn bad_worker_ids_are_refused() {
    let reg = MemoryRegistry::new();
    let err = reg.register_worker("a/b", "{}".into()).await.unwrap_err();
    assert!(err.to_string().contains("worker id \"a/b\""), "{err}");
}
