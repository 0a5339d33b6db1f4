//! Document text for benchmarks: PDF, DOCX, HTML, plain text and Markdown, through well-kept
//! crates, keeping Japanese intact.
//!
//! PDF goes through oxidize-pdf, which extracts English and Japanese correctly but panics on
//! some corrupt files: it runs behind `catch_unwind` (the workspace keeps `panic = "unwind"`),
//! so a broken PDF is one clear error for one case, never a crash of the whole run.

use flotilla_engine::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A document's text and a hash of its bytes (the key of the embedding cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub path: PathBuf,
    pub text: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

/// Read `path` and extract its text, by extension.
pub fn load_document(path: &Path) -> Result<Document> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let text = match ext.as_str() {
        "pdf" => pdf_text(path)?,
        "docx" => docx_text(path, &bytes)?,
        "html" | "htm" => html_text(path, &bytes)?,
        "txt" | "md" | "markdown" | "text" | "" => {
            String::from_utf8(bytes).map_err(|_| Error::model(path, "is not UTF-8 text"))?
        }
        other => {
            return Err(Error::model(
                path,
                format!("documents of type .{other} are not supported (pdf, docx, html, txt, md)"),
            ))
        }
    };
    if text.trim().is_empty() {
        return Err(Error::model(
            path,
            "no text could be extracted from this document",
        ));
    }
    Ok(Document {
        path: path.to_path_buf(),
        text,
        sha256,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pdf_text(path: &Path) -> Result<String> {
    let owned = path.to_path_buf();
    let result = std::panic::catch_unwind(move || -> std::result::Result<String, String> {
        let doc = oxidize_pdf::parser::PdfDocument::open(&owned).map_err(|e| e.to_string())?;
        let pages = doc.extract_text().map_err(|e| e.to_string())?;
        Ok(pages
            .into_iter()
            .map(|p| p.text)
            .collect::<Vec<_>>()
            .join("\n\n"))
    });
    match result {
        Ok(Ok(text)) => Ok(collapse_spaces(&text)),
        Ok(Err(e)) => Err(Error::model(path, format!("unreadable PDF: {e}"))),
        Err(_) => Err(Error::model(
            path,
            "unreadable PDF (the PDF parser failed on it)",
        )),
    }
}

/// oxidize-pdf doubles the spaces between some words; collapse runs of spaces within a line.
fn collapse_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_space = false;
    for c in text.chars() {
        if c == ' ' {
            if !prev_space {
                out.push(c);
            }
            prev_space = true;
        } else {
            out.push(c);
            prev_space = false;
        }
    }
    out
}

fn docx_text(path: &Path, bytes: &[u8]) -> Result<String> {
    use docx_rs::DocumentChild;
    let docx = docx_rs::read_docx(bytes)
        .map_err(|e| Error::model(path, format!("unreadable DOCX: {e}")))?;
    let mut lines = Vec::new();
    for child in &docx.document.children {
        match child {
            DocumentChild::Paragraph(p) => lines.push(paragraph_text(p)),
            DocumentChild::Table(t) => table_text(t, &mut lines),
            _ => {}
        }
    }
    Ok(lines.join("\n"))
}

fn paragraph_text(p: &docx_rs::Paragraph) -> String {
    let mut s = String::new();
    for c in &p.children {
        paragraph_child_text(c, &mut s);
    }
    s
}

fn paragraph_child_text(c: &docx_rs::ParagraphChild, s: &mut String) {
    use docx_rs::{ParagraphChild, RunChild};
    match c {
        ParagraphChild::Run(r) => {
            for rc in &r.children {
                match rc {
                    RunChild::Text(t) => s.push_str(&t.text),
                    RunChild::Tab(_) => s.push('\t'),
                    RunChild::Break(_) | RunChild::CarriageReturn(_) => s.push('\n'),
                    _ => {}
                }
            }
        }
        ParagraphChild::Hyperlink(h) => {
            for hc in &h.children {
                paragraph_child_text(hc, s);
            }
        }
        _ => {}
    }
}

fn table_text(t: &docx_rs::Table, lines: &mut Vec<String>) {
    use docx_rs::{TableCellContent, TableChild, TableRowChild};
    for TableChild::TableRow(row) in &t.rows {
        let mut cells = Vec::new();
        for TableRowChild::TableCell(cell) in &row.cells {
            let mut parts = Vec::new();
            for content in &cell.children {
                match content {
                    TableCellContent::Paragraph(p) => parts.push(paragraph_text(p)),
                    TableCellContent::Table(inner) => {
                        let mut nested = Vec::new();
                        table_text(inner, &mut nested);
                        parts.push(nested.join(" "));
                    }
                    _ => {}
                }
            }
            cells.push(parts.join(" "));
        }
        lines.push(cells.join(" | "));
    }
}

fn html_text(path: &Path, bytes: &[u8]) -> Result<String> {
    html2text::config::plain()
        .string_from_read(bytes, 100_000)
        .map_err(|e| Error::model(path, format!("unreadable HTML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_collapse_but_newlines_stay() {
        assert_eq!(collapse_spaces("a  b   c\n  d"), "a b c\n d");
    }
}
