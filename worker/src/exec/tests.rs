use super::*;
use flotilla_engine::loader::LoadOptions;

#[test]
fn a_device_out_of_memory_is_an_infrastructure_failure_that_says_so() {
    let oom = Error::Candle(candle_core::Error::Msg(
        "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
    ));
    match ShardError::from(oom) {
        ShardError::Infrastructure(m) => {
            assert!(
                m.contains("ran out of memory") && m.contains("back to the queue"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let other = Error::Candle(candle_core::Error::Msg("shape mismatch".into()));
    assert_eq!(
        ShardError::from(other),
        ShardError::Infrastructure("tensor operation failed: shape mismatch".into())
    );
    assert!(!is_out_of_memory("shape mismatch"));
}

const KIND_NOOP: &str = "noop";
const KIND_GENERATE: &str = "generate";

/// Runs a spec of `kind` given as its fields (`spec`), tagged as the wire tags it.
fn run(kind: &str, spec: &str, cancel: bool) -> Result<Completed, ShardError> {
    let models = ModelCache::new(LoadOptions::default(), 1);
    let flag = AtomicBool::new(cancel);
    let root = std::env::temp_dir();
    let ctx = ShardContext {
        worker_id: "w1",
        models: &models,
        device: &Device::Cpu,
        device_name: "cpu",
        root: &root,
        files: &[],
        scratch: &root,
        embeddings_cache: None,
        cancel: &flag,
        progress: &|_, _| {},
        pushed_models: None,
    };
    let fields = spec.trim().strip_prefix('{').unwrap_or(spec).trim_start();
    let sep = if fields.starts_with('}') { "" } else { "," };
    let tagged = format!("{{\"kind\":\"{kind}\"{sep}{fields}");
    execute(tagged.as_bytes(), &ctx)
}

#[test]
fn noop_shards_answer_fail_or_stop_on_cancel() {
    let out = run(KIND_NOOP, r#"{"units": 7}"#, false).unwrap();
    assert_eq!(out.units, 7);
    let ShardOutput::Noop(r) = out.output else {
        panic!("a noop spec answered {:?}", out.output)
    };
    assert_eq!(r.worker_id, "w1");
    assert_eq!(
        run(KIND_NOOP, r#"{"fail": "bad case"}"#, false).unwrap_err(),
        ShardError::Task("bad case".into())
    );
    assert_eq!(
        run(KIND_NOOP, r#"{"sleep_ms": 5000}"#, true).unwrap_err(),
        ShardError::Cancelled
    );
}

#[test]
fn bad_specs_and_unknown_kinds_are_task_failures() {
    let err = run(KIND_GENERATE, "{", false).unwrap_err();
    assert!(
        matches!(&err, ShardError::Task(m) if m.contains("generate shard's spec")),
        "{err:?}"
    );
    let err = run("paint", "{}", false).unwrap_err();
    assert!(
        matches!(&err, ShardError::Task(m) if m.contains("\"paint\"")),
        "{err:?}"
    );
}

#[test]
fn a_missing_model_is_a_task_failure_naming_it() {
    let spec = serde_json::json!({
        "model": "/nowhere/model.gguf", "model_label": "m", "adapter": null,
        "variant": "query_last", "cases": [],
        "sampling": flotilla_contract::SamplingParams::default(),
        "truncation": "head", "retrieval": {"embedder": "minilm", "top_k": 2,
            "chunks": {"size": 100, "overlap": 10}}
    });
    let err = run(KIND_GENERATE, &spec.to_string(), false).unwrap_err();
    assert!(
        matches!(&err, ShardError::Task(m) if m.contains("/nowhere/model.gguf")),
        "{err:?}"
    );
}
