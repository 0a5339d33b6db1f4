//! Step 1 of reading a sweep: the YAML's shape, section by section, every problem collected
//! with its line.

use super::*;

mod settings;
use settings::{parse_generation, parse_judge, parse_retries, parse_retrieval};

const TOP_KEYS: &[&str] = &[
    "name",
    "seed",
    "models",
    "variants",
    "adapters",
    "datasets",
    "tasks",
    "languages",
    "judge",
    "generation",
    "retrieval",
    "shard_size",
    "retries",
];

/// Parse a sweep's text (`source` names the file in errors). Checks the shape only; see
/// [`Sweep::check`] for files and models.
pub fn parse(text: &str, source: &Path) -> Result<Sweep, SweepErrors> {
    let (sweep, errors) = parse_all(text, source)?;
    if errors.is_empty() {
        Ok(sweep)
    } else {
        Err(SweepErrors { errors })
    }
}

/// As [`parse`], but a file whose YAML could be read gives its sweep (with defaults where a
/// value was wrong) *and* every problem of its shape, so [`Sweep::load_text`] can check what
/// the parsed part points at in the same pass. `Err` only when there is no sweep to speak of
/// (unreadable YAML, a top level that is not a mapping).
pub(crate) fn parse_all(
    text: &str,
    source: &Path,
) -> Result<(Sweep, Vec<SweepError>), SweepErrors> {
    let root = yaml::parse(text, source)?;
    let mut r = Reader::new(source);
    let Some(top) = r.map(&root, "", TOP_KEYS) else {
        return Err(SweepErrors { errors: r.errors });
    };
    let name = match top.get("name") {
        Some(n) => r.string(n, "name").unwrap_or_default(),
        None => source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("sweep")
            .to_string(),
    };
    let seed = top.get("seed").and_then(|n| r.uint(n, "seed")).unwrap_or(0);

    let sweep_dir = source.parent().unwrap_or(Path::new(""));
    let models = top
        .require(&mut r, "models")
        .map(|n| parse_models(&mut r, n, sweep_dir))
        .unwrap_or_default();

    let mut variants = Vec::new();
    // A sweep without datasets generates nothing: its variants may be left out.
    let training_only = top.get("variants").is_none() && top.get("datasets").is_none();
    if training_only {
        variants.push(Variant::QueryFirst.name());
    }
    // A variant is its spec (`query_first`, `custom:FILE.jinja`, ...), or a map naming one
    // for the results: `{name: polite, variant: custom:polite.jinja}`.
    let mut variant_names = std::collections::BTreeMap::new();
    let mut labels: Vec<String> = Vec::new();
    let items = (!training_only)
        .then(|| top.require(&mut r, "variants"))
        .flatten()
        .and_then(|n| r.list(n, "variants"))
        .unwrap_or_default();
    for (i, item) in items.into_iter().enumerate() {
        let what = format!("variants[{i}]");
        let (spec, name) = match &item.value {
            Value::Map(_) => {
                let Some(f) = r.map(item, &what, &["name", "variant"]) else {
                    continue;
                };
                let spec = f
                    .require(&mut r, "variant")
                    .and_then(|n| r.string(n, &f.path("variant")));
                let name = f
                    .require(&mut r, "name")
                    .and_then(|n| r.string(n, &f.path("name")));
                let (Some(spec), Some(name)) = (spec, name) else {
                    continue;
                };
                (spec, Some(name))
            }
            _ => match r.string(item, &what) {
                Some(s) => (s, None),
                None => continue,
            },
        };
        match Variant::parse(&spec) {
            Ok(parsed) => {
                let spec = parsed.name();
                let label = name.clone().unwrap_or_else(|| spec.clone());
                if variants.contains(&spec) || labels.contains(&label) {
                    r.error(item.line, format!("variant `{label}` is listed twice"));
                }
                if let Some(n) = name {
                    variant_names.insert(spec.clone(), n);
                }
                variants.push(spec);
                labels.push(label);
            }
            Err(e) => r.error(item.line, e.to_string()),
        }
    }

    let adapters = match top.get("adapters") {
        Some(n) => parse_adapters(&mut r, n),
        None => vec![AdapterEntry {
            name: "base".into(),
            source: AdapterSource::None,
            line: top.line,
        }],
    };

    let default_tasks = match top.get("tasks") {
        Some(n) => parse_tasks(&mut r, n, "tasks"),
        None => vec![Task::Rag, Task::Document, Task::Criteria],
    };
    let default_languages = match top.get("languages") {
        Some(n) => parse_languages(&mut r, n, "languages"),
        None => Vec::new(),
    };
    // A sweep without datasets only trains (what `flotilla train --submit` sends).
    let trains = adapters
        .iter()
        .any(|a| matches!(a.source, AdapterSource::Train(_)));
    let datasets = match top.get("datasets") {
        Some(n) => parse_datasets(&mut r, n, &default_tasks, &default_languages),
        None if trains => Vec::new(),
        None => {
            r.error(
                top.line,
                "the sweep needs `datasets` (only a sweep that trains an adapter may leave them out)",
            );
            Vec::new()
        }
    };

    let judge = parse_judge(&mut r, top.get("judge"), top.line, sweep_dir);
    let (sampling, truncation) = parse_generation(&mut r, top.get("generation"), seed);
    let retrieval = parse_retrieval(&mut r, top.get("retrieval"));
    let shard_size = match top.get("shard_size") {
        Some(n) => match r.uint(n, "shard_size") {
            Some(0) => {
                r.error(n.line, "`shard_size` must be at least 1");
                1
            }
            Some(s) => s as usize,
            None => 1,
        },
        None => 4,
    };
    let retries = parse_retries(&mut r, top.get("retries"));

    r.errors.sort_by_key(|e| e.line);
    let sweep = Sweep {
        source: source.to_path_buf(),
        name,
        seed,
        models,
        variants,
        variant_names,
        adapters,
        datasets,
        judge,
        sampling,
        truncation,
        retrieval,
        shard_size,
        retries,
    };
    Ok((sweep, r.errors))
}

/// The models under test. A model given as a relative path names a file beside the sweep
/// file, like every other path in it: `model` is that path joined to the sweep's folder, while
/// `name` (the name in results) stays as written. Demo aliases and `hf:` ids are kept as they
/// are.
fn parse_models(r: &mut Reader, node: &Node, sweep_dir: &Path) -> Vec<ModelEntry> {
    let mut out: Vec<ModelEntry> = Vec::new();
    for (i, item) in r
        .list(node, "models")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let what = format!("models[{i}]");
        let entry = match &item.value {
            Value::Map(_) => {
                let Some(f) = r.map(item, &what, &["name", "model"]) else {
                    continue;
                };
                let model = f
                    .require(r, "model")
                    .and_then(|n| r.string(n, &f.path("model")));
                let name = f.get("name").and_then(|n| r.string(n, &f.path("name")));
                model.map(|m| ModelEntry {
                    name: name.unwrap_or_else(|| m.clone()),
                    model: m,
                    line: item.line,
                })
            }
            _ => r.string(item, &what).map(|m| ModelEntry {
                name: m.clone(),
                model: m,
                line: item.line,
            }),
        };
        let Some(mut entry) = entry else { continue };
        if let Err(e) = check::model_syntax_in(&entry.model, sweep_dir) {
            r.error(item.line, format!("{what}: {e}"));
        }
        entry.model = check::model_path(&entry.model, sweep_dir);
        if out.iter().any(|m| m.name == entry.name) {
            r.error(
                item.line,
                format!("model name `{}` is used twice", entry.name),
            );
        }
        out.push(entry);
    }
    out
}

fn parse_adapters(r: &mut Reader, node: &Node) -> Vec<AdapterEntry> {
    let mut out: Vec<AdapterEntry> = Vec::new();
    for (i, item) in r
        .list(node, "adapters")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let what = format!("adapters[{i}]");
        let entry = match &item.value {
            Value::Str(s) if s == "base" || s == "none" => Some(AdapterEntry {
                name: "base".into(),
                source: AdapterSource::None,
                line: item.line,
            }),
            Value::Str(s) => {
                r.error(
                    item.line,
                    format!(
                        "{what}: `{s}` is not an adapter: write `base` (no adapter), or a mapping \
                         with `name` and `path:` (a PEFT folder) or `train:` (a LoRA to train)"
                    ),
                );
                None
            }
            _ => {
                let Some(f) = r.map(item, &what, &["name", "path", "train"]) else {
                    continue;
                };
                let name = f
                    .require(r, "name")
                    .and_then(|n| r.string(n, &f.path("name")));
                let source = match (f.get("path"), f.get("train")) {
                    (Some(_), Some(_)) => {
                        r.error(
                            item.line,
                            format!("{what}: give `path` or `train`, not both"),
                        );
                        None
                    }
                    (Some(p), None) => r.string(p, &f.path("path")).map(AdapterSource::Dir),
                    (None, Some(t)) => {
                        let json = yaml::to_json(t);
                        match &json {
                            serde_json::Value::Object(m) => {
                                for key in ["model", "out"] {
                                    if m.contains_key(key) {
                                        r.error(
                                            t.line,
                                            format!(
                                                "{what}.train.{key}: not allowed in a sweep (the \
                                                 sweep sets the model and where adapters go)"
                                            ),
                                        );
                                    }
                                }
                                Some(AdapterSource::Train(json))
                            }
                            _ => {
                                r.error(t.line, format!("`{what}.train` must be a mapping"));
                                None
                            }
                        }
                    }
                    (None, None) => Some(AdapterSource::None),
                };
                match (name, source) {
                    (Some(name), Some(source)) => {
                        if source != AdapterSource::None && name == "base" {
                            r.error(
                                item.line,
                                format!("{what}: the name `base` means no adapter"),
                            );
                        }
                        Some(AdapterEntry {
                            name,
                            source,
                            line: item.line,
                        })
                    }
                    _ => None,
                }
            }
        };
        let Some(entry) = entry else { continue };
        if out.iter().any(|a| a.name == entry.name) {
            r.error(
                item.line,
                format!("adapter name `{}` is used twice", entry.name),
            );
        }
        out.push(entry);
    }
    out
}

fn parse_tasks(r: &mut Reader, node: &Node, what: &str) -> Vec<Task> {
    let mut out = Vec::new();
    for (t, line) in r.strings(node, what).unwrap_or_default() {
        match Task::parse(&t) {
            Some(task) if !out.contains(&task) => out.push(task),
            Some(_) => r.error(line, format!("task `{t}` is listed twice")),
            None => r.error(
                line,
                format!("unknown task `{t}` in `{what}` (expected rag, document or criteria)"),
            ),
        }
    }
    out
}

fn parse_languages(r: &mut Reader, node: &Node, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (l, line) in r.strings(node, what).unwrap_or_default() {
        if out.contains(&l) {
            r.error(line, format!("language `{l}` is listed twice"));
        } else {
            out.push(l);
        }
    }
    out
}

fn parse_datasets(
    r: &mut Reader,
    node: &Node,
    tasks: &[Task],
    languages: &[String],
) -> Vec<DatasetEntry> {
    let mut out: Vec<DatasetEntry> = Vec::new();
    for (i, item) in r
        .list(node, "datasets")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let what = format!("datasets[{i}]");
        let Some(f) = r.map(
            item,
            &what,
            &[
                "name",
                "cases",
                "documents",
                "tasks",
                "languages",
                "limit",
                "rubric",
            ],
        ) else {
            continue;
        };
        let Some(cases) = f
            .require(r, "cases")
            .and_then(|n| r.string(n, &f.path("cases")))
        else {
            continue;
        };
        let name = match f.get("name") {
            Some(n) => r.string(n, &f.path("name")).unwrap_or_default(),
            None => Path::new(&cases)
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|s| s.to_str())
                .unwrap_or("dataset")
                .to_string(),
        };
        let documents = f
            .get("documents")
            .and_then(|n| r.string(n, &f.path("documents")));
        let tasks = match f.get("tasks") {
            Some(n) => parse_tasks(r, n, &f.path("tasks")),
            None => tasks.to_vec(),
        };
        let languages = match f.get("languages") {
            Some(n) => parse_languages(r, n, &f.path("languages")),
            None => languages.to_vec(),
        };
        let limit = match f.get("limit") {
            Some(n) => match r.uint(n, &f.path("limit")) {
                Some(0) => {
                    r.error(n.line, format!("`{}` must be at least 1", f.path("limit")));
                    None
                }
                other => other.map(|l| l as usize),
            },
            None => None,
        };
        let rubric = f.get("rubric").and_then(|n| r.string(n, &f.path("rubric")));
        if out.iter().any(|d| d.name == name) {
            r.error(item.line, format!("dataset name `{name}` is used twice"));
        }
        out.push(DatasetEntry {
            name,
            cases,
            documents,
            tasks,
            languages,
            limit,
            rubric,
            line: item.line,
        });
    }
    out
}

#[cfg(test)]
mod generation_tests;
#[cfg(test)]
mod retrieval_tests;
