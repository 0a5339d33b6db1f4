//! `report.html`: one self-contained page per results folder (and `flotilla report` over
//! several): the data as JSON inside the page and one renderer (`assets/report.js`, the same
//! script the coordinator's dashboard draws with) that turns it into tables and SVG charts.
//! No network, no build step: the page opens from disk.
//!
//! Comparing runs ([`compare`]): what differs between their provenance (versions, settings,
//! file hashes), and for every configuration present in the first run and another, a paired
//! test over the cases both scored (Holm-adjusted across rows).

use super::{ConfigKey, Report};
use crate::case_result::CaseResult;
use crate::stats::{compare_paired, holm};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The page's stylesheet, shared with the dashboard.
pub const REPORT_CSS: &str = include_str!("../../assets/report.css");
/// The renderer, shared with the dashboard.
pub const REPORT_JS: &str = include_str!("../../assets/report.js");
/// The dashboard's page and script (served by the coordinator's `--http`).
pub const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
pub const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const TEMPLATE: &str = include_str!("../../assets/report.template.html");

/// One results folder as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Its folder's name.
    pub name: String,
    pub dir: String,
    pub report: Report,
    /// The cases, without the rendered prompt and context (in `cases.jsonl`), which would make
    /// the page as large as the documents.
    pub cases: Vec<Value>,
}

impl Run {
    pub fn new(name: &str, dir: &str, report: &Report, cases: &[CaseResult]) -> Run {
        let cases = cases
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("prompt");
                    o.remove("context");
                }
                v
            })
            .collect();
        Run {
            name: name.to_string(),
            dir: dir.to_string(),
            report: report.clone(),
            cases,
        }
    }
}

/// A setting or input that differs between runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub what: String,
    /// Its value in each run (`""` where a run has none).
    pub values: Vec<String>,
}

/// One configuration in two runs, over the cases both scored.
#[derive(Debug, Clone, Serialize)]
pub struct RunDelta {
    pub key: ConfigKey,
    pub metric: String,
    /// The runs compared (indices into the page's runs): `a` is the first run.
    pub a: usize,
    pub b: usize,
    pub n: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    pub delta: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: Option<f64>,
    pub p_holm: Option<f64>,
}

/// What changed between runs and what it did to the scores.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub changes: Vec<Change>,
    pub rows: Vec<RunDelta>,
    /// Configurations that are not in every run, or share no scored case with the first.
    pub unmatched: Vec<String>,
}

/// Leaves of a JSON value as `path = value` (arrays by index).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The provenance facts runs are compared on.
fn facts(report: &Report) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("flotilla version".into(), report.flotilla_version.clone());
    out.insert("seed".into(), report.seed.to_string());
    if let Some(p) = &report.provenance {
        out.insert("flotilla commit".into(), p.flotilla_commit.clone());
        out.insert("command".into(), p.command.clone());
        flatten("settings", &p.settings, &mut out);
        // Where a line of the sweep file moved is not a change of what ran.
        out.retain(|k, _| !k.ends_with(".line"));
        for f in &p.files {
            out.insert(format!("{} {} sha256", f.role, f.name), f.sha256.clone());
        }
        let mut machines: Vec<String> = p
            .machines
            .iter()
            .map(|m| serde_json::to_string(m).unwrap_or_default())
            .collect();
        machines.sort();
        out.insert("machines".into(), machines.join("; "));
    }
    out
}

/// Compare `runs` against the first: the provenance that differs, and each configuration's
/// paired score change over the cases scored in both (at least two).
pub fn compare(runs: &[Run], seed: u64) -> Comparison {
    let all: Vec<BTreeMap<String, String>> = runs.iter().map(|r| facts(&r.report)).collect();
    let mut keys: Vec<&String> = all.iter().flat_map(|f| f.keys()).collect();
    keys.sort();
    keys.dedup();
    let changes = keys
        .into_iter()
        .filter_map(|k| {
            let values: Vec<String> = all
                .iter()
                .map(|f| f.get(k).cloned().unwrap_or_default())
                .collect();
            (values.iter().any(|v| v != &values[0])).then(|| Change {
                what: k.clone(),
                values,
            })
        })
        .collect();

    // Scores per configuration and case (the mean over a case's samples).
    let scores = |r: &Report| -> BTreeMap<ConfigKey, BTreeMap<String, f64>> {
        let mut acc: BTreeMap<ConfigKey, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
        for c in &r.case_scores {
            if let Some(s) = c.score {
                let e = acc
                    .entry(c.key.clone())
                    .or_default()
                    .entry(c.case_id.clone())
                    .or_default();
                e.0 += s;
                e.1 += 1;
            }
        }
        acc.into_iter()
            .map(|(k, m)| {
                let m = m.into_iter().map(|(c, (s, n))| (c, s / n as f64)).collect();
                (k, m)
            })
            .collect()
    };
    let per_run: Vec<_> = runs.iter().map(|r| scores(&r.report)).collect();
    let mut rows = Vec::new();
    let mut unmatched = Vec::new();
    let label = |k: &ConfigKey| {
        format!(
            "{} / {} / {} / {} / {}",
            k.model, k.adapter, k.variant, k.task, k.language
        )
    };
    if let Some((first, rest)) = per_run.split_first() {
        for (i, other) in rest.iter().enumerate() {
            let b = i + 1;
            for (key, a_cases) in first {
                let Some(b_cases) = other.get(key) else {
                    unmatched.push(format!("{} is not in run {}", label(key), runs[b].name));
                    continue;
                };
                let (xs, ys): (Vec<f64>, Vec<f64>) = a_cases
                    .iter()
                    .filter_map(|(case, x)| b_cases.get(case).map(|y| (*x, *y)))
                    .unzip();
                match compare_paired(&xs, &ys, seed) {
                    Some(c) if xs.len() >= 2 => rows.push(RunDelta {
                        key: key.clone(),
                        metric: "judge".into(),
                        a: 0,
                        b,
                        n: c.n,
                        mean_a: c.mean_a,
                        mean_b: c.mean_b,
                        delta: c.delta,
                        ci_low: c.ci_low,
                        ci_high: c.ci_high,
                        p_value: Some(c.p_value),
                        p_holm: None,
                    }),
                    _ => unmatched.push(format!(
                        "{}: {} case(s) scored in both {} and {}, too few to compare",
                        label(key),
                        xs.len(),
                        runs[0].name,
                        runs[b].name
                    )),
                }
            }
            for key in other.keys().filter(|k| !first.contains_key(*k)) {
                unmatched.push(format!("{} is only in run {}", label(key), runs[b].name));
            }
        }
    }
    let ps: Vec<f64> = rows.iter().filter_map(|r| r.p_value).collect();
    for (r, p) in rows.iter_mut().zip(holm(&ps)) {
        r.p_holm = Some(p);
    }
    Comparison {
        changes,
        rows,
        unmatched,
    }
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `runs` (and their comparison, when there are several).
pub fn page(title: &str, runs: &[Run], comparison: Option<&Comparison>) -> String {
    let data = serde_json::json!({
        "kind": "report",
        "title": title,
        "generated_unix_ms": chrono::Utc::now().timestamp_millis(),
        "runs": runs,
        "comparison": comparison,
    });
    // Inside <script>, "</script" would close the element and "<!--<script" would keep it
    // open: no "<" at all, as JSON's "\u003c" (a "<" can only be inside a string).
    let json = data.to_string().replace('<', "\\u003c");
    // One pass over the template, so nothing substituted is substituted into again.
    let mut out = String::with_capacity(TEMPLATE.len() + json.len() + REPORT_JS.len());
    let mut rest = TEMPLATE;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (value, skip): (String, usize) = if after.starts_with("{{TITLE}}") {
            (escape(title), 9)
        } else if after.starts_with("{{CSS}}") {
            (REPORT_CSS.to_string(), 7)
        } else if after.starts_with("{{DATA}}") {
            (json.clone(), 8)
        } else if after.starts_with("{{JS}}") {
            (REPORT_JS.replace("</script", "<\\/script"), 6)
        } else {
            ("{{".to_string(), 2)
        };
        out.push_str(&value);
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// The title of a results folder's page.
pub fn title_for(report: &Report, name: &str) -> String {
    let what = report
        .provenance
        .as_ref()
        .and_then(|p| {
            p.settings
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!("sweep {n}"))
                .or_else(|| Some(p.command.clone()))
        })
        .unwrap_or_else(|| "results".into());
    format!("flotilla: {what} ({name})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_keeps_script_data_inert() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let report = super::super::build_report(&[], 0, crate::judging::Scale::default(), &[]);
        let title = "t</title><!--<script><b>";
        let html = page(title, &[Run::new("r", "r", &report, &[])], None);
        assert!(
            html.contains("<title>t&lt;/title&gt;&lt;!--&lt;script&gt;&lt;b&gt;</title>"),
            "{html:.300}"
        );
        // The data block holds no "<" that could end it early or keep it open, and reads back.
        let start = html.find("id=\"flotilla-data\">").unwrap() + "id=\"flotilla-data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        assert!(!html[start..end].contains('<'));
        let data: Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(data["title"], title);
    }
}
