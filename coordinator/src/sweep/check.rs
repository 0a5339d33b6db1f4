//! What a sweep points at: files (on the user's disk, or the coordinator's copy of the
//! uploads), the cases in its case files, and its models.

use super::{AdapterSource, Sweep, SweepError, SweepErrors};
use flotilla_contract::dataset::{load_dataset, Case, Task};
use flotilla_contract::model_ref::{resolve, DEMO_ALIASES};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// How far model specs are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelCheck {
    /// Resolve every model on this machine (`flotilla run`: the workers are local).
    Local,
    /// Check the spelling only: demo aliases, `hf:org/name[@rev]`, paths. A cluster's
    /// coordinator (and `flotilla sweep submit`) need not hold the models; a worker that lacks
    /// one reports a task failure naming it.
    Syntax,
}

/// The key under which the coordinator stores a sweep path: normalised, `/`-separated,
/// relative, never escaping its folder (`..` becomes `_up_`, a leading `/` becomes `_root_`).
/// `Assignment.files` and every path inside a shard spec use keys.
pub fn file_key(path: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let p = path.replace('\\', "/");
    if p.starts_with('/') {
        parts.push("_root_".into());
    }
    for c in Path::new(&p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => match parts.last().map(String::as_str) {
                Some(last) if last != "_up_" && last != "_root_" => {
                    parts.pop();
                }
                _ => parts.push("_up_".into()),
            },
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    parts.join("/")
}

/// Where the sweep's paths point.
#[derive(Debug, Clone)]
pub struct FileRoot {
    base: PathBuf,
    keyed: bool,
}

impl FileRoot {
    /// The user's disk: paths relative to the sweep file's folder.
    pub fn local(sweep_dir: impl Into<PathBuf>) -> Self {
        Self {
            base: sweep_dir.into(),
            keyed: false,
        }
    }

    /// The coordinator's copy of the uploaded files, stored under [`file_key`]s.
    pub fn uploaded(root: impl Into<PathBuf>) -> Self {
        Self {
            base: root.into(),
            keyed: true,
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The file a sweep path names.
    pub fn path(&self, sweep_path: &str) -> PathBuf {
        if self.keyed {
            self.base.join(file_key(sweep_path))
        } else {
            self.base.join(sweep_path)
        }
    }

    /// The sweep-path key of a file under this root (the inverse of [`FileRoot::path`] for
    /// an uploaded root; for a local root, the path relative to the sweep folder).
    pub fn key_of(&self, file: &Path) -> String {
        let rel = file.strip_prefix(&self.base).unwrap_or(file);
        file_key(&rel.to_string_lossy())
    }
}

/// Is `spec` spelled like a model flotilla can load? (Existence is [`ModelCheck::Local`]'s
/// business.) A bare name is taken for a path when it exists in the current folder.
pub(crate) fn model_syntax(spec: &str) -> Result<(), String> {
    model_syntax_in(spec, Path::new(""))
}

/// Whether a model spec names a file or folder (rather than a demo alias or a hub id), for
/// a sweep in `sweep_dir`: anything with a path separator or a `.gguf` ending, or a bare name
/// that exists there.
fn is_model_path(spec: &str, sweep_dir: &Path) -> bool {
    if spec.starts_with("hf:")
        || spec.starts_with("openai:")
        || spec.starts_with(crate::models::PREFIX)
        || DEMO_ALIASES.iter().any(|(a, _)| *a == spec)
    {
        return false;
    }
    spec.contains('/')
        || spec.contains('\\')
        || spec.ends_with(".gguf")
        || sweep_dir.join(spec).exists()
}

/// A model spec as it loads: a relative path joined to the sweep's folder (as every other
/// path in a sweep); absolute paths, demo aliases and `hf:` ids as they are.
pub fn model_path(spec: &str, sweep_dir: &Path) -> String {
    if sweep_dir.as_os_str().is_empty()
        || Path::new(spec).is_absolute()
        || !is_model_path(spec, sweep_dir)
    {
        return spec.to_string();
    }
    sweep_dir.join(spec).to_string_lossy().into_owned()
}

/// [`model_syntax`] for a sweep in `sweep_dir` (bare names are looked for there).
pub(crate) fn model_syntax_in(spec: &str, sweep_dir: &Path) -> Result<(), String> {
    if let Some(rest) = spec.strip_prefix("openai:") {
        return match rest.split_once('@') {
            Some((m, url)) if !m.is_empty() && !url.is_empty() => Ok(()),
            _ => Err(format!(
                "`{spec}` is not an endpoint model: expected openai:MODEL@BASE_URL"
            )),
        };
    }
    if let Some(hub) = spec.strip_prefix("hf:") {
        let repo = hub.split('@').next().unwrap_or("");
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "`{spec}` is not a hub id: expected hf:<org>/<name>[@revision]"
            ));
        }
        return Ok(());
    }
    if let Some(name) = spec.strip_prefix(crate::models::PREFIX) {
        return crate::models::check_name(name).map_err(|e| format!("`{spec}`: {e}"));
    }
    if DEMO_ALIASES.iter().any(|(a, _)| *a == spec) {
        return Ok(());
    }
    if is_model_path(spec, sweep_dir) {
        return Ok(());
    }
    let aliases: Vec<&str> = DEMO_ALIASES.iter().map(|(a, _)| *a).collect();
    Err(format!(
        "unknown model `{spec}`: expected a demo alias ({}), a GGUF file, a Hugging Face folder \
         or hf:<org>/<name>",
        aliases.join(", ")
    ))
}

/// The cases of one matrix cell: a dataset's cases for one task and language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub dataset: String,
    pub task: Task,
    pub language: String,
    /// The cases, with `documents` as sweep-path keys.
    pub cases: Vec<Case>,
}

impl Sweep {
    /// Check everything the sweep points at; every problem is reported.
    pub fn check(&self, root: &FileRoot, models: ModelCheck) -> Result<(), SweepErrors> {
        let mut errors = Vec::new();
        let mut err = |line: usize, message: String| {
            errors.push(SweepError {
                file: self.source.clone(),
                line,
                message,
            })
        };
        if models == ModelCheck::Local {
            for m in self
                .models
                .iter()
                .filter(|m| !m.model.starts_with("openai:"))
            {
                if m.model.starts_with(crate::models::PREFIX) {
                    err(
                        m.line,
                        format!(
                            "model `{}` is pushed to a cluster's coordinator; `flotilla run` \
                             loads models from this machine (give its path instead)",
                            m.model
                        ),
                    );
                    continue;
                }
                if let Err(e) = resolve(&m.model) {
                    err(m.line, format!("model `{}`: {e}", m.model));
                }
            }
            for j in &self.judge.judges {
                if j != "self" && !j.starts_with("openai:") {
                    if let Err(e) = resolve(&self.model_spec(j)) {
                        err(self.judge.line, format!("judge `{j}`: {e}"));
                    }
                }
            }
            let needs_embedder = self.datasets.iter().any(|d| d.tasks.contains(&Task::Rag));
            if needs_embedder {
                if let Err(e) = resolve(&self.model_spec(&self.retrieval.embedder)) {
                    err(
                        0,
                        format!("retrieval.embedder `{}`: {e}", self.retrieval.embedder),
                    );
                }
            }
        }
        let has_base = self
            .adapters
            .iter()
            .any(|a| a.source == AdapterSource::None);
        for m in self
            .models
            .iter()
            .filter(|m| m.model.starts_with("openai:"))
        {
            if !has_base {
                err(
                    m.line,
                    format!(
                        "model `{}` is behind an API, which takes no LoRA adapter: it runs only \
                         with the `base` adapter, and `adapters` has none",
                        m.model
                    ),
                );
            }
        }
        for v in &self.variants {
            if let Some(t) = v.strip_prefix("custom:") {
                if !root.path(t).is_file() {
                    err(0, format!("variant `{v}`: template {t} does not exist"));
                }
            }
        }
        for a in &self.adapters {
            match &a.source {
                AdapterSource::None => {}
                AdapterSource::Dir(d) => {
                    let dir = root.path(d);
                    for f in ["adapter_config.json", "adapter_model.safetensors"] {
                        if !dir.join(f).is_file() {
                            err(
                                a.line,
                                format!(
                                    "adapter `{}`: {d} has no {f} (expected a PEFT folder)",
                                    a.name
                                ),
                            );
                        }
                    }
                }
                AdapterSource::Train(block) => {
                    if let Err(e) = check_train(block, root, &self.source) {
                        err(a.line, format!("adapter `{}`: {e}", a.name));
                    }
                }
            }
        }
        if let Err(e) = self.cells(root) {
            errors.extend(e.errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            errors.sort_by_key(|e| e.line);
            Err(SweepErrors { errors })
        }
    }

    /// Load every dataset and cut it into cells (task x language), applying `limit`.
    /// Document paths become sweep-path keys. Bad case lines, missing documents and datasets
    /// with no case in the chosen tasks and languages are errors.
    pub fn cells(&self, root: &FileRoot) -> Result<Vec<Cell>, SweepErrors> {
        let mut errors = Vec::new();
        let mut cells = Vec::new();
        for d in &self.datasets {
            let mut err = |message: String| {
                errors.push(SweepError {
                    file: self.source.clone(),
                    line: d.line,
                    message: format!("dataset `{}`: {message}", d.name),
                })
            };
            if let Some(t) = &d.rubric {
                if !root.path(t).is_file() {
                    err(format!("rubric template {t} does not exist"));
                }
            }
            let cases_path = root.path(&d.cases);
            if !cases_path.is_file() {
                err(format!("case file {} does not exist", d.cases));
                continue;
            }
            let docs_dir = d.documents.as_ref().map(|p| root.path(p));
            if let Some(dir) = &docs_dir {
                if !dir.is_dir() {
                    err(format!(
                        "documents folder {} does not exist",
                        d.documents.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
            }
            let ds = match load_dataset(&cases_path, docs_dir.as_deref()) {
                Ok(ds) => ds,
                Err(e) => {
                    err(e.to_string());
                    continue;
                }
            };
            for e in ds.errors {
                errors.push(SweepError {
                    file: PathBuf::from(&d.cases),
                    line: e.line,
                    message: e.message,
                });
            }
            let mut keyed: Vec<Case> = Vec::new();
            let mut missing = Vec::new();
            for mut c in ds.cases {
                if !d.tasks.contains(&c.task) {
                    continue;
                }
                if !d.languages.is_empty() && !d.languages.contains(&c.language) {
                    continue;
                }
                for doc in &c.documents {
                    if !doc.is_file() {
                        missing.push(format!(
                            "case `{}`: document {} does not exist",
                            c.id,
                            root.key_of(doc)
                        ));
                    }
                }
                c.documents = c
                    .documents
                    .iter()
                    .map(|p| PathBuf::from(root.key_of(p)))
                    .collect();
                keyed.push(c);
            }
            for m in missing {
                errors.push(SweepError {
                    file: self.source.clone(),
                    line: d.line,
                    message: format!("dataset `{}`: {m}", d.name),
                });
            }
            // Cells in the order tasks and languages are listed (languages: first seen).
            let mut languages = d.languages.clone();
            if languages.is_empty() {
                for c in &keyed {
                    if !languages.contains(&c.language) {
                        languages.push(c.language.clone());
                    }
                }
            }
            let before = cells.len();
            for task in &d.tasks {
                for lang in &languages {
                    let mut cases: Vec<Case> = keyed
                        .iter()
                        .filter(|c| c.task == *task && &c.language == lang)
                        .cloned()
                        .collect();
                    if let Some(limit) = d.limit {
                        cases.truncate(limit);
                    }
                    if cases.is_empty() {
                        tracing::warn!(dataset = %d.name, task = task.name(), language = %lang, "no cases in this cell");
                        continue;
                    }
                    cells.push(Cell {
                        dataset: d.name.clone(),
                        task: *task,
                        language: lang.clone(),
                        cases,
                    });
                }
            }
            if cells.len() == before {
                errors.push(SweepError {
                    file: self.source.clone(),
                    line: d.line,
                    message: format!(
                        "dataset `{}`: no case in {} matches tasks [{}] and languages [{}]",
                        d.name,
                        d.cases,
                        d.tasks
                            .iter()
                            .map(|t| t.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                        d.languages.join(", ")
                    ),
                });
            }
        }
        if errors.is_empty() {
            Ok(cells)
        } else {
            Err(SweepErrors { errors })
        }
    }

    /// Every file the sweep names, to upload to a coordinator: `(sweep path, local file)`.
    /// Folders (documents, adapters) contribute every file under them (hidden files
    /// skipped). Call after [`Sweep::check`] passed on the same root.
    pub fn local_files(&self, root: &FileRoot) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        let mut add = |sweep_path: String, local: PathBuf| {
            if !out.iter().any(|(p, _)| *p == sweep_path) {
                out.push((sweep_path, local));
            }
        };
        for d in &self.datasets {
            add(d.cases.clone(), root.path(&d.cases));
            if let Some(t) = &d.rubric {
                add(t.clone(), root.path(t));
            }
            let docs = match &d.documents {
                Some(p) => p.clone(),
                None => parent_of(&d.cases),
            };
            for (rel, local) in walk(&root.path(&docs))? {
                add(join(&docs, &rel), local);
            }
        }
        for v in &self.variants {
            if let Some(t) = v.strip_prefix("custom:") {
                add(t.to_string(), root.path(t));
            }
        }
        for a in &self.adapters {
            match &a.source {
                AdapterSource::None => {}
                AdapterSource::Dir(d) => {
                    for (rel, local) in walk(&root.path(d))? {
                        add(join(d, &rel), local);
                    }
                }
                AdapterSource::Train(block) => {
                    for p in train_paths(block) {
                        add(p.clone(), root.path(&p));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The sweep paths inside a `train:` block (training and held-out data).
pub fn train_paths(block: &serde_json::Value) -> Vec<String> {
    ["data", "eval_data"]
        .iter()
        .filter_map(|k| block.get(*k).and_then(|v| v.as_str()).map(str::to_string))
        .collect()
}

/// Check a `train:` block with the trainer's own validation, its paths resolved on `root`.
fn check_train(block: &serde_json::Value, root: &FileRoot, source: &Path) -> Result<(), String> {
    let mut resolved = block.clone();
    for key in ["data", "eval_data"] {
        if let Some(p) = block.get(key).and_then(|v| v.as_str()) {
            // Absolute, so the trainer's own resolution against `root.base()` leaves it as is.
            let local = root.path(p);
            let local = std::path::absolute(&local).unwrap_or(local);
            resolved[key] = local.to_string_lossy().into_owned().into();
        }
    }
    flotilla_contract::train_config::TrainConfig::from_json_value(&resolved, source, root.base())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn parent_of(sweep_path: &str) -> String {
    match Path::new(sweep_path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
        _ => ".".into(),
    }
}

fn join(dir: &str, rel: &str) -> String {
    if dir == "." || dir.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    }
}

/// Files under `dir`, as `/`-separated relative paths, sorted; hidden entries skipped.
fn walk(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push((rel, entry.path()));
            } else if ty.is_file() || entry.path().is_file() {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_train_block_under_a_relative_sweep_folder_resolves_its_data_once() {
        // As `flotilla run examples/quickstart.yaml` from the repository root: the sweep folder
        // is relative. (Unit tests run in coordinator/; `tests/../../examples` is the shipped
        // examples folder, and it does not survive being joined twice.)
        let root = FileRoot::local("tests/../../examples");
        let block = serde_json::json!({"data": "train/en-ja-lora.jsonl", "steps": 2});
        check_train(&block, &root, Path::new("quickstart.yaml")).unwrap();
        let missing = serde_json::json!({"data": "train/nope.jsonl", "steps": 2});
        let e = check_train(&missing, &root, Path::new("quickstart.yaml")).unwrap_err();
        assert!(e.contains("train/nope.jsonl"), "{e}");
    }

    #[test]
    fn keys_never_escape_their_folder() {
        assert_eq!(
            file_key("benchmarks/en-ja/cases.jsonl"),
            "benchmarks/en-ja/cases.jsonl"
        );
        assert_eq!(file_key("./a/../b/c.txt"), "b/c.txt");
        assert_eq!(file_key("../data/x.jsonl"), "_up_/data/x.jsonl");
        assert_eq!(file_key("../../x"), "_up_/_up_/x");
        assert_eq!(file_key("/abs/x"), "_root_/abs/x");
        assert_eq!(file_key("/.."), "_root_/_up_");
        // Idempotent: a key is its own key.
        for k in ["_up_/data/x.jsonl", "_root_/abs/x", "b/c.txt"] {
            assert_eq!(file_key(k), k);
        }
    }

    #[test]
    fn model_specs_are_checked_for_spelling() {
        assert!(model_syntax("smollm2").is_ok());
        assert!(model_syntax("hf:Qwen/Qwen2.5-7B-Instruct").is_ok());
        assert!(model_syntax("hf:meta-llama/Llama-3.1-8B-Instruct@main").is_ok());
        assert!(model_syntax("models/x.gguf").is_ok());
        assert!(model_syntax("hf:Qwen").unwrap_err().contains("hub id"));
        assert!(model_syntax("smollm3")
            .unwrap_err()
            .contains("unknown model `smollm3`"));
    }
}
