//! A user points flotilla at benchmark cases: Flow's sample benchmark as published, flotilla's
//! own JSONL, and the documents they name (PDF, DOCX, HTML, text; English and Japanese).

use flotilla_bench::chunk::chunk_text;
use flotilla_bench::dataset::{load_dataset, Task};
use flotilla_bench::documents::load_document;
use flotilla_tests::{peer_dir, temp_dir};

#[test]
fn flow_sample_benchmark_loads_as_published() {
    let flow = peer_dir("flow_benchmark_tools");
    let files = flow.join("files");
    let rag = load_dataset(&flow.join("rag_benchmark.jsonl"), Some(&files)).unwrap();
    assert!(rag.errors.is_empty(), "{:?}", rag.errors);
    assert_eq!(rag.cases.len(), 4);
    assert!(rag
        .cases
        .iter()
        .all(|c| c.task == Task::Rag && c.language == "en"));
    assert_eq!(rag.cases[0].id, "rag_benchmark:1");
    assert_eq!(
        rag.cases[0].documents,
        vec![files.join("Rhinoceros_Wikipedia.pdf")]
    );
    assert!(rag.cases[2].tags.contains(&"docx".to_string()));
    assert!(rag.cases[1]
        .reference_answer
        .as_deref()
        .unwrap()
        .contains("16.3 million"));

    let crit = load_dataset(&flow.join("criteria_benchmark.jsonl"), Some(&files)).unwrap();
    assert!(crit.errors.is_empty(), "{:?}", crit.errors);
    assert_eq!(crit.cases.len(), 3);
    assert!(crit
        .cases
        .iter()
        .all(|c| c.task == Task::Criteria && c.criteria.is_some()));
    assert!(crit.cases[2]
        .criteria
        .as_deref()
        .unwrap()
        .starts_with("Clarity and Precision"));
}

#[test]
fn flow_documents_extract_readable_text() {
    let files = peer_dir("flow_benchmark_tools").join("files");
    let pdf = load_document(&files.join("Rhinoceros_Wikipedia.pdf")).unwrap();
    for word in ["Rhinoceros", "Floridaceras", "aphrodisiac"] {
        assert!(pdf.text.contains(word), "PDF text lacks {word}");
    }
    assert!(!pdf.text.contains("  "), "double spaces survived");
    assert_eq!(pdf.sha256.len(), 64);
    let docx = load_document(&files.join("Jane_Gilbert_resume.docx")).unwrap();
    for word in [
        "Jane Gilbert",
        "Minitab",
        "Quality Center",
        "Auto Melbourne",
    ] {
        assert!(
            docx.text.contains(word),
            "DOCX text lacks {word}: {}",
            docx.text
        );
    }
}

#[test]
fn japanese_survives_docx_pdf_html_and_chunking() {
    let dir = temp_dir("ja-docs");
    let ja = "富士山は日本で一番高い山です。標高は3776メートルです。";
    let docx_path = dir.path().join("fuji.docx");
    let file = std::fs::File::create(&docx_path).unwrap();
    docx_rs::Docx::new()
        .add_paragraph(docx_rs::Paragraph::new().add_run(docx_rs::Run::new().add_text(ja)))
        .add_table(docx_rs::Table::new(vec![docx_rs::TableRow::new(vec![
            docx_rs::TableCell::new().add_paragraph(
                docx_rs::Paragraph::new().add_run(docx_rs::Run::new().add_text("東京")),
            ),
            docx_rs::TableCell::new().add_paragraph(
                docx_rs::Paragraph::new().add_run(docx_rs::Run::new().add_text("大阪")),
            ),
        ])]))
        .build()
        .pack(file)
        .unwrap();
    let d = load_document(&docx_path).unwrap();
    assert_eq!(d.text, format!("{ja}\n東京 | 大阪"));

    let html = dir.path().join("fuji.html");
    std::fs::write(
        &html,
        format!("<html><body><h1>山</h1><p>{ja}</p></body></html>"),
    )
    .unwrap();
    assert!(load_document(&html).unwrap().text.contains(ja));

    // A real Japanese PDF from Debian's maint-guide-ja (installed by scripts/setup.sh).
    let pdf = std::path::Path::new("/usr/share/doc/maint-guide-ja/maint-guide.ja.pdf");
    assert!(
        pdf.exists(),
        "install maint-guide-ja (scripts/setup.sh does)"
    );
    let text = load_document(pdf).unwrap().text;
    for phrase in ["Debian", "パッケージ", "メンテナー"] {
        assert!(text.contains(phrase), "Japanese PDF text lacks {phrase}");
    }

    let chunks = chunk_text(&d.text, 20, 0);
    assert_eq!(chunks[0].text, "富士山は日本で一番高い山です。");
}

#[test]
fn bad_lines_and_documents_give_clear_errors_and_the_rest_still_load() {
    let dir = temp_dir("bad-cases");
    std::fs::write(dir.path().join("note.txt"), "Rhinos eat grass.").unwrap();
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        [
            r#"{"task": "rag", "query": "What do rhinos eat?", "reference_answer": "Grass.", "documents": ["note.txt"]}"#,
            r#"{"task": "rag", "query": "broken"#,
            r#"{"task": "summarise", "query": "x", "reference_answer": "y", "documents": ["note.txt"]}"#,
            r#"{"task": "rag", "query": "x", "refrence_answer": "typo", "documents": ["note.txt"]}"#,
            r#"{"task": "criteria", "query": "Is this clear?"}"#,
            r#"{"task": "rag", "query": "x", "reference_answer": "y", "documents": ["note.txt"], "answer_regex": "(unclosed"}"#,
            r#"{"task": "document", "language": "ja", "query": "何を食べますか？", "reference_answer": "草", "documents": ["note.txt"], "tags": ["t"]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let ds = load_dataset(&cases, None).unwrap();
    assert_eq!(ds.cases.len(), 2, "{:?}", ds.errors);
    let msgs: Vec<String> = ds.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        ds.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6],
        "{msgs:?}"
    );
    assert!(
        msgs[0].contains("cases.jsonl:2") && msgs[0].contains("not valid JSON"),
        "{msgs:?}"
    );
    assert!(msgs[1].contains("summarise"), "{msgs:?}");
    assert!(msgs[2].contains("refrence_answer"), "{msgs:?}");
    assert!(msgs[3].contains("rubric"), "{msgs:?}");
    assert!(msgs[4].contains("answer_regex"), "{msgs:?}");
    assert_eq!(ds.cases[1].language, "ja");

    let e = load_document(&dir.path().join("missing.pdf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pdf"), "{e}");
    // A byte-corrupted PDF: an error naming it, never a panic.
    let good =
        std::fs::read(peer_dir("flow_benchmark_tools").join("files/Rhinoceros_Wikipedia.pdf"))
            .unwrap();
    let mut bad = good.clone();
    for i in (2000..bad.len()).step_by(97) {
        bad[i] ^= 0x5a;
    }
    let bad_path = dir.path().join("corrupt.pdf");
    std::fs::write(&bad_path, &bad).unwrap();
    if let Err(e) = load_document(&bad_path) {
        assert!(e.to_string().contains("corrupt.pdf"), "{e}");
    }
    std::fs::write(dir.path().join("x.xlsx"), "PK").unwrap();
    let e = load_document(&dir.path().join("x.xlsx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.xlsx") && e.contains(".xlsx"), "{e}");
}
