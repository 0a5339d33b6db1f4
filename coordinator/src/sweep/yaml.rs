//! Reading a YAML document while keeping the line of every value, so the sweep parser can
//! report every problem with its line instead of stopping at the first one.
//!
//! `saphyr` parses into nodes that carry spans; this module turns them into a small [`Node`]
//! tree (a mapping keeps its keys' order and lines) and offers the typed getters the sweep
//! parser uses. Each getter records a [`SweepError`] and returns `None` when the value has the
//! wrong shape, so parsing goes on and collects the next problem too.

use super::SweepError;
use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use std::path::{Path, PathBuf};

/// A YAML value and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in file order, each with its line.
    Map(Vec<(String, usize, Node)>),
}

impl Value {
    /// What the value is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parse `text` (one YAML document) into a [`Node`]; a syntax error is one [`SweepError`].
pub fn parse(text: &str, file: &Path) -> Result<Node, SweepError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| SweepError {
        file: file.to_path_buf(),
        line: e.marker().line(),
        message: format!("not valid YAML: {}", e.info()),
    })?;
    match docs.len() {
        0 => Err(SweepError {
            file: file.to_path_buf(),
            line: 0,
            message: "the sweep file is empty".into(),
        }),
        1 => convert(&docs[0], 1, true, file),
        _ => Err(SweepError {
            file: file.to_path_buf(),
            line: 0,
            message: "the sweep file holds several YAML documents; expected one".into(),
        }),
    }
}

/// Containers carry no position in saphyr's tree: the value of a key takes the key's line
/// (`inherited`); a list item or the document takes the line of its first entry (`first`).
fn convert(
    n: &MarkedYamlOwned,
    inherited: usize,
    first: bool,
    file: &Path,
) -> Result<Node, SweepError> {
    let own = n.span.start.line();
    let line = if own == 0 { inherited } else { own };
    let value = match &n.data {
        YamlDataOwned::Value(s) => match s {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(*b),
            ScalarOwned::Integer(i) => Value::Int(*i),
            ScalarOwned::FloatingPoint(f) => Value::Float(f.into_inner()),
            ScalarOwned::String(s) => Value::Str(s.clone()),
        },
        YamlDataOwned::Representation(s, _, _) => Value::Str(s.clone()),
        YamlDataOwned::Sequence(items) => {
            let mut out = Vec::new();
            let mut last = line;
            for item in items {
                let node = convert(item, last, true, file)?;
                last = node.line;
                out.push(node);
            }
            Value::Seq(out)
        }
        YamlDataOwned::Mapping(map) => {
            let mut out = Vec::new();
            let mut last = line;
            for (k, v) in map {
                let key_line = if k.span.start.line() == 0 {
                    last
                } else {
                    k.span.start.line()
                };
                let key = match &k.data {
                    YamlDataOwned::Value(ScalarOwned::String(s)) => s.clone(),
                    YamlDataOwned::Value(ScalarOwned::Integer(i)) => i.to_string(),
                    YamlDataOwned::Value(ScalarOwned::Boolean(b)) => b.to_string(),
                    _ => {
                        return Err(SweepError {
                            file: file.to_path_buf(),
                            line: key_line,
                            message: "mapping keys must be plain words".into(),
                        })
                    }
                };
                last = key_line;
                out.push((key, key_line, convert(v, key_line, false, file)?));
            }
            Value::Map(out)
        }
        YamlDataOwned::Tagged(tag, _) => {
            return Err(SweepError {
                file: file.to_path_buf(),
                line,
                message: format!(
                    "YAML tags (`{}{}`) are not supported",
                    tag.handle, tag.suffix
                ),
            })
        }
        YamlDataOwned::Alias(_) => {
            return Err(SweepError {
                file: file.to_path_buf(),
                line,
                message: "YAML aliases are not supported".into(),
            })
        }
        YamlDataOwned::BadValue => {
            return Err(SweepError {
                file: file.to_path_buf(),
                line,
                message: "a value that cannot be read".into(),
            })
        }
    };
    // A mapping or list with no position of its own starts where its first entry does.
    let line = match (&value, own) {
        (Value::Map(m), 0) if first => m.first().map(|e| e.1).unwrap_or(line),
        _ => line,
    };
    Ok(Node { line, value })
}

/// Collects problems while the sweep parser walks the tree.
pub struct Reader {
    pub file: PathBuf,
    pub errors: Vec<SweepError>,
}

impl Reader {
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(SweepError {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    /// The entries of a mapping; every key not in `allowed` is an error (`what` names the
    /// mapping, e.g. `datasets[0]`).
    pub fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.line,
                format!("`{what}` must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        for (k, line, _) in entries {
            if !allowed.contains(&k.as_str()) {
                self.error(
                    *line,
                    format!(
                        "unknown key `{k}` in `{what}` (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Fields {
            what: what.to_string(),
            line: node.line,
            entries,
        })
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.error(node.line, format!("`{what}` is empty"));
                None
            }
            // Numbers where a name is expected are fine (`name: 7`).
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            other => {
                self.error(
                    node.line,
                    format!("`{what}` must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn uint(&mut self, node: &Node, what: &str) -> Option<u64> {
        match &node.value {
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            other => {
                self.error(
                    node.line,
                    format!(
                        "`{what}` must be a whole number >= 0, found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    pub fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            other => {
                self.error(
                    node.line,
                    format!("`{what}` must be a number, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A list (a single string counts as a list of one); an empty list is an error.
    pub fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<Vec<&'n Node>> {
        match &node.value {
            Value::Seq(items) if items.is_empty() => {
                self.error(node.line, format!("`{what}` is empty: give at least one"));
                None
            }
            Value::Seq(items) => Some(items.iter().collect()),
            Value::Str(_) => Some(vec![node]),
            other => {
                self.error(
                    node.line,
                    format!("`{what}` must be a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, node: &Node, what: &str) -> Option<Vec<(String, usize)>> {
        let items = self.list(node, what)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.string(item, &format!("{what}[{i}]")) {
                out.push((s, item.line));
            }
        }
        Some(out)
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Int(i) => format!("{i}"),
        Value::Float(f) => format!("{f}"),
        Value::Str(s) => format!("`{s}`"),
        other => other.kind().to_string(),
    }
}

/// The entries of one mapping, by key.
pub struct Fields<'n> {
    pub what: String,
    pub line: usize,
    entries: &'n [(String, usize, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.0 == key).map(|e| &e.2)
    }

    /// A key that must be there; its absence is an error at the mapping's line.
    pub fn require(&self, r: &mut Reader, key: &str) -> Option<&'n Node> {
        let n = self.get(key);
        if n.is_none() {
            r.error(self.line, format!("`{}` needs `{key}`", self.what));
        }
        n
    }

    /// `what.key`, for error messages.
    pub fn path(&self, key: &str) -> String {
        if self.what.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.what)
        }
    }
}

/// A node as JSON (for blocks passed on opaquely, such as an adapter's `train:`).
pub fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Str(s) => s.clone().into(),
        Value::Seq(items) => items.iter().map(to_json).collect(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, _, v)| (k.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_lines() {
        let n = parse(
            "name: x\nmodels:\n  - smollm2\n  - {name: q, model: m}\nseed: 7\n",
            Path::new("s.yaml"),
        )
        .unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[0].0, "name");
        assert_eq!(m[0].1, 1);
        assert_eq!(m[1].1, 2);
        let Value::Seq(items) = &m[1].2.value else {
            panic!()
        };
        assert_eq!(items[0].line, 3);
        assert_eq!(items[1].line, 4);
        assert_eq!(
            m[2].2,
            Node {
                line: 5,
                value: Value::Int(7)
            }
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("a: [1,\nb: 2\n", Path::new("s.yaml")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not valid YAML"), "{e}");
    }
}
