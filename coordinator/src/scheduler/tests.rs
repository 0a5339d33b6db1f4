use super::*;
use flotilla_proto::v1::Capabilities;

fn sweep(s: &mut Scheduler, id: &str, retries: (u32, u32)) {
    s.add_sweep(SweepMem {
        id: id.into(),
        seq: 1,
        name: id.into(),
        state: SweepState::Ready,
        error: String::new(),
        created_ms: 0,
        updated_ms: 0,
        jobs: Vec::new(),
        retry_task: retries.0,
        retry_infra: retries.1,
    });
}

fn job(id: &str, model: &str, shards: usize, deps: &[&str]) -> NewJob {
    NewJob {
        head: JobHead {
            id: id.into(),
            seq: 0,
            kind: JobKind::Noop,
            label: id.into(),
            model: model.into(),
            state: if deps.is_empty() {
                JobState::Ready
            } else {
                JobState::Blocked
            },
            error: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        },
        shards: (0..shards)
            .map(|i| NewShard {
                id: format!("{id}.s{i}"),
                state: if deps.is_empty() {
                    ShardState::Ready
                } else {
                    ShardState::Blocked
                },
                attempt: Attempt(0),
                task_failures: 0,
                infra_failures: 0,
                units: 1,
                prefer: None,
                prompt_tokens: 0,
            })
            .collect(),
    }
}

fn worker(s: &mut Scheduler, id: &str, loaded: &[&str], slots: u32) {
    let caps = Capabilities {
        models_loaded: loaded.iter().map(|m| m.to_string()).collect(),
        slots,
        ..Default::default()
    };
    s.connect(WorkerMem::new(id, caps, 1));
}

#[test]
fn workers_get_shards_of_models_they_have_loaded_first() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job("a", "smollm2", 2, &[]));
    s.add_job("sw", job("b", "qwen", 2, &[]));
    worker(&mut s, "w1", &["qwen"], 1);
    let mut ch = Vec::new();
    let got = s.pick("w1", 3, &mut ch);
    let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(ids, ["b.s0", "b.s1", "a.s0"]);
    assert_eq!(got[0].1, Attempt(1), "first attempt is 1");
    assert_eq!(
        ch.len(),
        4,
        "three assignments and the sweep starting: {ch:?}"
    );
}

#[test]
fn workers_get_shards_of_pushed_models_on_their_disk_before_others() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job("a", "coordinator:big", 1, &[]));
    s.add_job("sw", job("b", "coordinator:small", 1, &[]));
    s.add_job("sw", job("c", "smollm2", 1, &[]));
    worker(&mut s, "w1", &["smollm2"], 1);
    s.workers.get_mut("w1").unwrap().models_held = vec!["coordinator:small".into()];
    let mut ch = Vec::new();
    let got = s.pick("w1", 3, &mut ch);
    let ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    // Loaded first, then held (nothing to fetch), then the rest in order.
    assert_eq!(ids, ["c.s0", "b.s0", "a.s0"]);
}

#[test]
fn fencing_refuses_superseded_attempts_and_ignores_duplicates() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 5));
    s.add_job("sw", job("a", "m", 1, &[]));
    worker(&mut s, "w1", &[], 1);
    worker(&mut s, "w2", &[], 1);
    let mut ch = Vec::new();
    let (shard, first, _) = s.pick("w1", 1, &mut ch).remove(0);
    // w1 vanishes; the shard goes to w2 under attempt 2.
    assert!(s.drop_worker("w1", None, "stream dropped", &mut ch));
    let (_, second, _) = s.pick("w2", 1, &mut ch).remove(0);
    assert_eq!(second, first.next());
    assert!(
        matches!(s.succeed(&shard, first, 1, 1.0, &mut ch), Verdict::Refused(r) if r.contains("superseded"))
    );
    assert_eq!(
        s.succeed(&shard, second, 1, 1.0, &mut ch),
        Verdict::Accepted
    );
    assert_eq!(
        s.succeed(&shard, second, 1, 1.0, &mut ch),
        Verdict::Duplicate
    );
    assert_eq!(s.sweeps["sw"].state, SweepState::Succeeded);
}

#[test]
fn task_and_infrastructure_failures_have_separate_budgets() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (1, 2));
    s.add_job("sw", job("a", "m", 1, &[]));
    s.add_job("sw", job("b", "m", 1, &["a"]));
    worker(&mut s, "w", &[], 1);
    let mut ch = Vec::new();
    let attempt = |s: &mut Scheduler, ch: &mut Vec<Change>| s.pick("w", 1, ch).remove(0).1;
    // Two infrastructure failures and one task failure: still within both budgets.
    for kind in [
        FailureKind::Infrastructure,
        FailureKind::Task,
        FailureKind::Infrastructure,
    ] {
        let a = attempt(&mut s, &mut ch);
        assert_eq!(s.fail("a.s0", a, kind, "x", &mut ch), Verdict::Accepted);
        assert_eq!(s.shards["a.s0"].state, ShardState::Ready);
    }
    // A second task failure is over the task budget: the job fails, and b with it.
    let a = attempt(&mut s, &mut ch);
    s.fail("a.s0", a, FailureKind::Task, "bad case file", &mut ch);
    assert_eq!(s.shards["a.s0"].state, ShardState::Failed);
    assert_eq!(s.jobs["a"].head.state, JobState::Failed);
    assert_eq!(s.jobs["b"].head.state, JobState::Failed);
    assert!(s.jobs["b"].head.error.contains("depends on job a"));
    assert_eq!(s.sweeps["sw"].state, SweepState::Failed);
    assert!(
        s.sweeps["sw"].error.contains("bad case file"),
        "{}",
        s.sweeps["sw"].error
    );
}

#[test]
fn dependents_unblock_when_their_jobs_succeed() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job("train", "m", 1, &[]));
    s.add_job("sw", job("eval", "m", 2, &["train"]));
    worker(&mut s, "w", &[], 4);
    let mut ch = Vec::new();
    let got = s.pick("w", 4, &mut ch);
    assert_eq!(got.len(), 1, "eval waits for train");
    s.succeed("train.s0", got[0].1, 1, 1.0, &mut ch);
    assert!(ch.contains(&Change::Unblocked { job: "eval".into() }));
    assert!(
        s.pick("w", 4, &mut ch).is_empty(),
        "not ready until the store finalised it"
    );
    s.mark_ready("eval");
    assert_eq!(s.pick("w", 4, &mut ch).len(), 2);
}

#[test]
fn slow_workers_leave_the_tail_to_faster_idle_ones() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job("a", "m", 2, &[]));
    worker(&mut s, "fast", &[], 1);
    worker(&mut s, "slow", &[], 1);
    s.workers.get_mut("fast").unwrap().units_per_second = Some(10.0);
    s.workers.get_mut("slow").unwrap().units_per_second = Some(1.0);
    let mut ch = Vec::new();
    // Two shards left, one idle worker 10x faster: the slow one may take one.
    assert_eq!(s.pick("slow", 1, &mut ch).len(), 1);
    // One left, the fast one idle: the slow one waits.
    assert!(s.pick("slow", 1, &mut ch).is_empty());
    assert_eq!(s.pick("fast", 1, &mut ch).len(), 1);
}

#[test]
fn a_round_closed_at_its_timeout_cancels_its_open_shards_and_refuses_their_results() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    let mut j = job("t", "smollm2", 0, &[]);
    j.head.kind = JobKind::TrainRound;
    j.shards = ["t.r00000.s1", "t.r00000.s2", "t.r00000.s3"]
        .iter()
        .map(|id| NewShard {
            id: id.to_string(),
            state: ShardState::Ready,
            attempt: Attempt(0),
            task_failures: 0,
            infra_failures: 0,
            units: 1,
            prefer: None,
            prompt_tokens: 0,
        })
        .collect();
    s.add_job("sw", j);
    worker(&mut s, "w1", &[], 1);
    worker(&mut s, "w2", &[], 1);
    let mut ch = Vec::new();
    let a = s.pick("w1", 1, &mut ch);
    let b = s.pick("w2", 1, &mut ch);
    assert_eq!(s.round_progress("t", "t.r00000."), Some((0, 3)));
    assert_eq!(
        s.succeed(&a[0].0, a[0].1, 1, 1.0, &mut ch),
        Verdict::Accepted
    );
    assert_eq!(s.round_progress("t", "t.r00000."), Some((1, 2)));
    ch.clear();
    let running = s.close_round_early("t", "t.r00000.", &mut ch);
    assert_eq!(
        running,
        vec![(b[0].0.clone(), b[0].1, "w2".to_string())],
        "the running straggler is returned to be cancelled"
    );
    let cancelled = ch
        .iter()
        .filter(|c| matches!(c, Change::ShardCancelled { .. }))
        .count();
    assert_eq!(cancelled, 2, "the running and the queued shard: {ch:?}");
    assert!(
        ch.iter()
            .any(|c| matches!(c, Change::RoundReady { job } if job == "t")),
        "the round is ready to apply: {ch:?}"
    );
    assert!(matches!(
        s.succeed(&b[0].0, b[0].1, 1, 1.0, &mut ch),
        Verdict::Refused(_)
    ));
    assert!(
        s.pick("w1", 1, &mut ch).is_empty(),
        "the dropped queued shard is not handed out"
    );
    assert_eq!(s.round_progress("t", "t.r00000."), Some((1, 0)));
}

#[test]
fn a_share_sized_for_a_worker_is_left_to_it_while_it_can_take_it() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    let mut j = job("t", "smollm2", 3, &[]);
    j.head.kind = JobKind::TrainRound;
    j.shards[0].prefer = Some("fast".into());
    j.shards[1].prefer = Some("slow".into());
    j.shards[2].prefer = Some("gone".into());
    s.add_job("sw", j);
    worker(&mut s, "slow", &[], 1);
    worker(&mut s, "fast", &[], 1);
    let mut ch = Vec::new();
    let got = s.pick("slow", 1, &mut ch);
    assert_eq!(got[0].0, "t.s1", "the fast worker's share is left to it");
    let got = s.pick("fast", 2, &mut ch);
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        ["t.s0", "t.s2"],
        "its own share, and one meant for a worker that is not here"
    );
}

/// A worker on `device` with `free` bytes free and one footprint for `model`.
fn sized_worker(s: &mut Scheduler, id: &str, device: &str, free: u64, model: &str) {
    let caps = Capabilities {
        device: device.into(),
        slots: 1,
        memory_free_bytes: free,
        model_footprints: vec![flotilla_proto::v1::ModelFootprint {
            spec: format!("/models/{model}"),
            weights_bytes: 4_000_000_000,
            kv_bytes_per_token: 100_000,
            context_tokens: 32_768,
        }],
        ..Default::default()
    };
    s.connect(WorkerMem::new(id, caps, 1));
}

fn job_with_prompts(id: &str, model: &str, tokens: u64) -> NewJob {
    let mut j = job(id, model, 1, &[]);
    for sh in &mut j.shards {
        sh.prompt_tokens = tokens;
    }
    j
}

#[test]
fn a_model_that_does_not_fit_a_workers_free_memory_is_left_to_one_it_fits() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    // 4 GB of weights + 1,000 tokens x 100 kB of KV cache, with 20% head-room: 4.92 GB.
    s.add_job("sw", job_with_prompts("a", "qwen.gguf", 1_000));
    sized_worker(&mut s, "small", "cuda:0", 4_500_000_000, "qwen.gguf");
    sized_worker(&mut s, "big", "cuda:0", 8_000_000_000, "qwen.gguf");
    let mut ch = Vec::new();
    assert!(
        s.pick("small", 1, &mut ch).is_empty(),
        "4.5 GB free is too little"
    );
    assert_eq!(s.pick("big", 1, &mut ch).len(), 1);
    // With the model already loaded only the KV cache counts: it fits the small one now.
    s.add_job("sw", job_with_prompts("b", "qwen.gguf", 1_000));
    s.workers.get_mut("small").unwrap().models_loaded = vec!["qwen.gguf".into()];
    assert_eq!(s.pick("small", 1, &mut ch).len(), 1);
    // A worker that reports nothing about its memory is not held back.
    s.add_job("sw", job_with_prompts("c", "qwen.gguf", 1_000));
    worker(&mut s, "unknown", &[], 1);
    assert_eq!(s.pick("unknown", 1, &mut ch).len(), 1);
}

#[test]
fn long_prompts_wait_for_a_free_gpu_worker_and_short_ones_do_not() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job_with_prompts("doc", "m.gguf", 6_000));
    s.add_job("sw", job_with_prompts("rag", "m.gguf", 900));
    sized_worker(&mut s, "cpu", "cpu", 64_000_000_000, "m.gguf");
    sized_worker(&mut s, "gpu", "cuda:0", 16_000_000_000, "m.gguf");
    let mut ch = Vec::new();
    let got = s.pick("cpu", 1, &mut ch);
    assert_eq!(
        got[0].0, "rag.s0",
        "the CPU worker leaves the document to the GPU"
    );
    let got = s.pick("gpu", 1, &mut ch);
    assert_eq!(got[0].0, "doc.s0");
    // With the GPU busy, a CPU worker takes long prompts too.
    s.add_job("sw", job_with_prompts("doc2", "m.gguf", 6_000));
    s.workers.get_mut("cpu").unwrap().running.clear();
    assert_eq!(s.pick("cpu", 1, &mut ch)[0].0, "doc2.s0");
}

#[test]
fn measured_prefill_speeds_decide_who_takes_long_prompts() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    sized_worker(&mut s, "cpu", "cpu", 64_000_000_000, "m.gguf");
    sized_worker(&mut s, "gpu", "cuda:0", 16_000_000_000, "m.gguf");
    let mut ch = Vec::new();
    // An old GPU that prefills at a quarter of a big CPU box's speed: the GPU leaves the
    // document to the CPU, which is not held back.
    s.workers.get_mut("cpu").unwrap().prefill_tokens_per_s = Some(800.0);
    s.workers.get_mut("gpu").unwrap().prefill_tokens_per_s = Some(200.0);
    s.add_job("sw", job_with_prompts("doc", "m.gguf", 6_000));
    s.add_job("sw", job_with_prompts("rag", "m.gguf", 900));
    assert_eq!(s.pick("gpu", 1, &mut ch)[0].0, "rag.s0");
    assert_eq!(s.pick("cpu", 1, &mut ch)[0].0, "doc.s0");
    // Within 2x of each other nobody waits: the CPU (GPU busy or not) takes a document.
    for w in ["cpu", "gpu"] {
        s.workers.get_mut(w).unwrap().running.clear();
    }
    s.workers.get_mut("gpu").unwrap().prefill_tokens_per_s = Some(1_500.0);
    s.add_job("sw", job_with_prompts("doc2", "m.gguf", 6_000));
    assert_eq!(s.pick("cpu", 1, &mut ch)[0].0, "doc2.s0");
    // A GPU measured 10x faster gets documents first again; short prompts still go anywhere.
    s.workers.get_mut("cpu").unwrap().running.clear();
    s.workers.get_mut("gpu").unwrap().prefill_tokens_per_s = Some(8_000.0);
    s.add_job("sw", job_with_prompts("doc3", "m.gguf", 6_000));
    s.add_job("sw", job_with_prompts("rag3", "m.gguf", 900));
    assert_eq!(s.pick("cpu", 1, &mut ch)[0].0, "rag3.s0");
    assert_eq!(s.pick("gpu", 1, &mut ch)[0].0, "doc3.s0");
}

#[test]
fn a_judge_job_reads_its_generate_jobs_prompt_length() {
    let mut s = Scheduler::new();
    sweep(&mut s, "sw", (0, 0));
    s.add_job("sw", job_with_prompts("gen", "m", 5_000));
    s.add_job("sw", job("judge", "m", 1, &["gen"]));
    assert_eq!(s.jobs["judge"].prompt_tokens, 5_000);
}
