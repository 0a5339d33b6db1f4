use std::path::Path;

const HEAD: &str =
    "name: t\nmodels: [smollm2]\nadapters:\n  - name: lora\n    train: {data: d.jsonl, steps: 2}\n";

#[test]
fn enable_thinking_is_left_to_the_template_unless_the_sweep_sets_it() {
    let s = super::parse(HEAD, Path::new("t.yaml")).unwrap();
    assert_eq!(s.sampling.enable_thinking, None);
    let text = format!("{HEAD}generation:\n  enable_thinking: false\n");
    let s = super::parse(&text, Path::new("t.yaml")).unwrap();
    assert_eq!(s.sampling.enable_thinking, Some(false));
    let bad = format!("{HEAD}generation:\n  enable_thinking: sometimes\n");
    let e = super::parse(&bad, Path::new("t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`generation.enable_thinking` must be true or false, found a string"),
        "{e}"
    );
}
