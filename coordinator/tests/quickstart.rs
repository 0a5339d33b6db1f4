//! The bundled quickstart sweep as the coordinator reads and plans it: the matrix it names,
//! the files it uploads, and the jobs, shards, answers and verdicts it makes.

mod common;

use common::examples;
use flotilla_coordinator::sweep::{self, AdapterSource, FileRoot, ModelCheck, Sweep};

#[test]
fn the_quickstart_is_the_whole_matrix_on_smollm2_and_validates_with_local_models() {
    let s = Sweep::load(&examples().join("quickstart.yaml"), ModelCheck::Local)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.models.len(), 1);
    assert_eq!(s.variants, ["query_first", "structured"]);
    assert_eq!(s.adapters.len(), 2);
    assert!(matches!(s.adapters[1].source, AdapterSource::Train(_)));
    let cells = s.cells(&FileRoot::local(examples())).unwrap();
    let cell_names: Vec<String> = cells
        .iter()
        .map(|c| format!("{} {}", c.task.name(), c.language))
        .collect();
    assert_eq!(
        cell_names,
        ["rag en", "rag ja", "document en", "document ja"]
    );
    assert!(cells.iter().all(|c| c.cases.len() == 6));
    // What the CLI uploads: the case file, every document, the training data.
    let files = s.local_files(&FileRoot::local(examples())).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert!(paths.contains(&"benchmarks/en-ja/cases.jsonl"));
    assert!(paths.contains(&"benchmarks/en-ja/documents/fuji-ja.txt"));
    assert!(paths.contains(&"train/en-ja-lora.jsonl"));
}

#[test]
fn the_quickstart_plan_counts_its_jobs_shards_answers_and_verdicts() {
    let path = examples().join("quickstart.yaml");
    let s = Sweep::load(&path, ModelCheck::Syntax).unwrap_or_else(|e| panic!("{e}"));
    let plan = sweep::preview(&s, &FileRoot::local(examples())).unwrap();
    let t = &plan.totals;
    // 24 cases (limit 6 x 2 tasks x 2 languages) x 2 variants x 2 adapters.
    assert_eq!(plan.cells.iter().map(|c| c.cases.len()).sum::<usize>(), 24);
    assert_eq!(t.generations, 96);
    assert_eq!(t.judgements, 96);
    assert_eq!(
        (t.jobs, t.train_jobs, t.generate_jobs, t.judge_jobs),
        (33, 1, 16, 16)
    );
    // shard_size 2: three shards per generate and judge job, plus the training shard.
    assert_eq!(t.shards, 97);
    assert_eq!(t.train_steps, 20);
    // Every generate job with the LoRA waits for the train job.
    let train = &plan.jobs.iter().find(|j| j.kind == "train").unwrap().id;
    let with_lora = plan
        .jobs
        .iter()
        .filter(|j| j.kind == "generate" && j.label.contains("/ lora /"))
        .collect::<Vec<_>>();
    assert_eq!(with_lora.len(), 8);
    assert!(with_lora.iter().all(|j| j.depends_on == [train.clone()]));
    // The upload: the case file, its documents, the training data.
    assert!(plan.files.contains_key("train/en-ja-lora.jsonl"));
    assert!(plan.upload_bytes() > 0);
}

#[test]
fn the_two_model_example_puts_gemma3_beside_smollm2_and_validates_with_local_models() {
    let path = examples().join("two-models.yaml");
    let s = Sweep::load(&path, ModelCheck::Local).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["smollm2", "gemma3"]);
    let plan = sweep::preview(&s, &FileRoot::local(examples())).unwrap();
    // 6 cases (limit 3 x 2 languages) x 2 models x 2 variants, every answer judged.
    assert_eq!(plan.totals.generations, 24);
    assert_eq!(plan.totals.judgements, 24);
}
