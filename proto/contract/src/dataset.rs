//! Benchmark cases: read from Flow Benchmark Tools case files as they are published, or from
//! flotilla's own JSONL format (docs/DATASETS.md). A malformed line is reported with its line
//! number and the other cases still load.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a case asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Answer from retrieved chunks of the documents.
    Rag,
    /// Answer from the whole document in the prompt.
    Document,
    /// Grade the query text against a rubric (Flow's `criteria`).
    Criteria,
}

impl Task {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rag" => Some(Task::Rag),
            "document" => Some(Task::Document),
            "criteria" => Some(Task::Criteria),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Rag => "rag",
            Task::Document => "document",
            Task::Criteria => "criteria",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Task::parse(s)
            .ok_or_else(|| Error::input(format!("task `{s}`: expected rag, document or criteria")))
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One benchmark case, whatever file format it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: String,
    pub task: Task,
    /// `en`, `ja`, ...
    pub language: String,
    pub query: String,
    pub reference_answer: Option<String>,
    /// Resolved document paths.
    pub documents: Vec<PathBuf>,
    /// The rubric, for criteria cases.
    pub criteria: Option<String>,
    /// Passages a correct retrieval must find (for recall@k).
    pub gold_passages: Vec<String>,
    pub tags: Vec<String>,
    /// A regex a correct answer matches (the `regex_match` metric).
    #[serde(default)]
    pub answer_regex: Option<String>,
}

/// A line that could not become a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Cases read from one file, and the lines that failed.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub cases: Vec<Case>,
    pub errors: Vec<LineError>,
}

/// `ja` if the text has kana or CJK ideographs, else `en`.
pub fn detect_language(text: &str) -> String {
    let cjk = text
        .chars()
        .filter(|c| {
            matches!(*c as u32,
                0x3040..=0x30FF   // hiragana, katakana
                | 0x4E00..=0x9FFF // CJK unified ideographs
                | 0xFF66..=0xFF9F) // half-width katakana
        })
        .count();
    if cjk > 0 && cjk * 5 >= text.chars().filter(|c| !c.is_whitespace()).count() {
        "ja".into()
    } else {
        "en".into()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlotillaLine {
    id: Option<String>,
    task: String,
    language: Option<String>,
    query: String,
    reference_answer: Option<String>,
    #[serde(default)]
    documents: Vec<String>,
    criteria: Option<String>,
    #[serde(default)]
    gold_passages: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    answer_regex: Option<String>,
}

#[derive(Deserialize)]
struct FlowLine {
    query: String,
    reference_answer: Option<String>,
    reference_answer_file: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    extras: FlowExtras,
}

#[derive(Deserialize, Default)]
struct FlowExtras {
    #[serde(default)]
    documents: Vec<String>,
    criteria: Option<String>,
}

/// Read a case file (Flow or flotilla JSONL; told apart per line by `labels` vs `task`).
/// Documents resolve against `documents_dir`, or the case file's folder when none is given.
pub fn load_dataset(path: &Path, documents_dir: Option<&Path>) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let docs = documents_dir.unwrap_or(base);
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("case")
        .to_string();
    let mut ds = Dataset::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| LineError {
            file: path.to_path_buf(),
            line: n,
            message,
        };
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                ds.errors.push(err(format!("not valid JSON: {e}")));
                continue;
            }
        };
        let case = if value.get("task").is_some() {
            flotilla_case(value, &stem, n, docs)
        } else {
            flow_case(value, &stem, n, docs)
        };
        match case {
            Ok(c) => ds.cases.push(c),
            Err(m) => ds.errors.push(err(m)),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for c in &ds.cases {
        if !seen.insert(c.id.clone()) {
            return Err(Error::file(
                path,
                format!("case id `{}` appears twice", c.id),
            ));
        }
    }
    Ok(ds)
}

fn flotilla_case(
    v: serde_json::Value,
    stem: &str,
    n: usize,
    docs: &Path,
) -> std::result::Result<Case, String> {
    let l: FlotillaLine = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let task = Task::parse(&l.task).ok_or_else(|| {
        format!(
            "field `task`: `{}` is not rag, document or criteria",
            l.task
        )
    })?;
    check_case(
        task,
        &l.query,
        l.reference_answer.as_deref(),
        &l.documents,
        l.criteria.as_deref(),
    )?;
    if let Some(re) = &l.answer_regex {
        regex::Regex::new(re).map_err(|e| format!("field `answer_regex`: {e}"))?;
    }
    Ok(Case {
        id: l.id.unwrap_or_else(|| format!("{stem}:{n}")),
        task,
        language: l.language.unwrap_or_else(|| detect_language(&l.query)),
        query: l.query,
        reference_answer: l.reference_answer,
        documents: l.documents.iter().map(|d| docs.join(d)).collect(),
        criteria: l.criteria,
        gold_passages: l.gold_passages,
        tags: l.tags,
        answer_regex: l.answer_regex,
    })
}

fn flow_case(
    v: serde_json::Value,
    stem: &str,
    n: usize,
    docs: &Path,
) -> std::result::Result<Case, String> {
    let l: FlowLine = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let has = |label: &str| l.labels.iter().any(|x| x == label);
    let task = if has("criteria") {
        Task::Criteria
    } else if has("rag") {
        Task::Rag
    } else {
        Task::Document
    };
    let reference_answer = match (&l.reference_answer, &l.reference_answer_file) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(f)) => {
            let p = docs.join(f);
            Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("field `reference_answer_file`: {}: {e}", p.display()))?,
            )
        }
        (None, None) => None,
    };
    check_case(
        task,
        &l.query,
        reference_answer.as_deref(),
        &l.extras.documents,
        l.extras.criteria.as_deref(),
    )?;
    let language = ["en", "ja"]
        .iter()
        .find(|x| has(x))
        .map(|x| x.to_string())
        .unwrap_or_else(|| detect_language(&l.query));
    Ok(Case {
        id: format!("{stem}:{n}"),
        task,
        language,
        query: l.query,
        reference_answer,
        documents: l.extras.documents.iter().map(|d| docs.join(d)).collect(),
        criteria: l.extras.criteria,
        gold_passages: Vec::new(),
        tags: l.labels,
        answer_regex: None,
    })
}

fn check_case(
    task: Task,
    query: &str,
    reference: Option<&str>,
    documents: &[String],
    criteria: Option<&str>,
) -> std::result::Result<(), String> {
    if query.trim().is_empty() {
        return Err("field `query` is empty".into());
    }
    match task {
        Task::Rag | Task::Document if documents.is_empty() => Err(format!(
            "a {} case needs at least one document",
            task.name()
        )),
        Task::Rag | Task::Document if reference.is_none() => Err(format!(
            "a {} case needs `reference_answer` (or Flow's `reference_answer_file`)",
            task.name()
        )),
        Task::Criteria if criteria.map(str::trim).unwrap_or("").is_empty() => {
            Err("a criteria case needs a rubric (`criteria`)".into())
        }
        _ => Ok(()),
    }
}
