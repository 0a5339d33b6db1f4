//! A LoRA adapter made by PEFT loads in flotilla and generates as PEFT does.
//!
//! `tests/fixtures/peft-smollm2-adapter/` was saved by PEFT (`save_pretrained`, safetensors,
//! bf16): r=4 on q_proj and v_proj, r=2 on down_proj through `rank_pattern`, and a
//! layer-specific `alpha_pattern` entry, B seeded random so that it changes what the model
//! says. `tests/fixtures/peft-smollm2-generations.json` holds PEFT's greedy generations with it
//! (and without it), its next-token top-5 after each prompt, and its own top-1 / top-2 logit
//! gap at every generated step, on flotilla's f32 Hugging Face conversion of the demo GGUF.
//! Both come from `scripts/peft_interop.py make-fixture`; regenerate them together.
//!
//! Both sides compute in f32 on the same weights, so generations must agree token for token;
//! a divergence is allowed only where PEFT itself saw a near-tie (gap under NEAR_TIE), and
//! flotilla's own gap between the two candidates is then checked to be as small.

use flotilla_engine::convert::{gguf_to_hf, OutDType};
use flotilla_engine::{LanguageModel, SamplingParams};
use flotilla_tests::{
    fixture, fixture_cases, json_floats as floats, json_ids as ids, load_model, next_logits,
    smollm2_path, temp_dir, ReferenceCase,
};
use flotilla_train::{load_with_adapter, merge_to_hf_dir, LoraAdapter};
use std::sync::OnceLock;

/// Logit gap under which two candidates count as tied. Both sides are f32 on identical weights
/// (the bf16 adapter is widened exactly), so logits differ only by summation order: ~1e-4.
const NEAR_TIE: f32 = 0.05;
/// Tolerance on next-token logits (f32 vs f32; SmolLM2's logits are of order 10-20).
const LOGIT_TOL: f32 = 0.02;

const ADAPTER: &str = "peft-smollm2-adapter";
const GENERATIONS: &str = "peft-smollm2-generations.json";

struct Case {
    name: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_gaps: Vec<f32>,
    top5_ids: Vec<u32>,
    top5_logits: Vec<f32>,
    base_greedy_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = fixture_cases(GENERATIONS)
        .iter()
        .map(|c| {
            let ReferenceCase {
                name,
                prompt,
                prompt_ids,
                greedy_ids,
            } = ReferenceCase::from_json(c);
            Case {
                name,
                prompt,
                prompt_ids,
                greedy_ids,
                greedy_gaps: floats(&c["greedy_gaps"]),
                top5_ids: ids(&c["top5_ids"]),
                top5_logits: floats(&c["top5_logits"]),
                base_greedy_ids: ids(&c["base_greedy_ids"]),
            }
        })
        .collect();
    assert!(cases.len() >= 4, "fixture has {} cases", cases.len());
    cases
}

/// The demo GGUF converted to an f32 Hugging Face directory (what PEFT ran on) and loaded, once
/// per test binary. The directory is removed once loaded.
fn hf_base() -> &'static LanguageModel {
    static MODEL: OnceLock<LanguageModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = temp_dir("peft-hf");
        let hf = dir.path().join("smollm2-hf");
        gguf_to_hf(&smollm2_path(), &hf, OutDType::F32).expect("convert the demo GGUF");
        load_model(&hf)
    })
}

fn with_fixture_adapter() -> &'static LanguageModel {
    static MODEL: OnceLock<LanguageModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_with_adapter(hf_base(), &fixture(ADAPTER)).expect("load the PEFT adapter")
    })
}

fn greedy(lm: &LanguageModel, prompt_ids: &[u32], n: usize) -> Vec<u32> {
    let params = SamplingParams {
        max_tokens: n,
        ..Default::default()
    };
    let (out, _) = lm
        .generate_ids(&[prompt_ids.to_vec()], &params)
        .expect("generate");
    out[0].token_ids.clone()
}

fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    idx.truncate(k);
    idx
}

fn leading_agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Compare flotilla's greedy ids with PEFT's. Returns a one-line summary; pushes a failure when
/// they diverge at a point that is not a near-tie on both sides.
fn check_greedy(
    lm: &LanguageModel,
    c: &Case,
    ours: &[u32],
    theirs: &[u32],
    gaps: Option<&[f32]>,
    failures: &mut Vec<String>,
) -> (String, bool) {
    let agree = leading_agreement(ours, theirs);
    let possible = ours.len().min(theirs.len());
    if agree == possible {
        // Same tokens; both must also stop at the same place (an EOS, or the length cap).
        if ours.len() != theirs.len() {
            failures.push(format!(
                "case {}: same {agree} tokens, but flotilla generated {} and PEFT {}\nours:  {ours:?}\nPEFT:  {theirs:?}",
                c.name,
                ours.len(),
                theirs.len()
            ));
        }
        return (format!("{}: {agree}/{possible}", c.name), true);
    }
    let mut prefix = c.prompt_ids.clone();
    prefix.extend(&theirs[..agree]);
    let logits = next_logits(lm, &prefix);
    let ours_gap = logits[ours[agree] as usize] - logits[theirs[agree] as usize];
    let peft_gap = gaps.and_then(|g| g.get(agree).copied());
    let tie = ours_gap <= NEAR_TIE && peft_gap.is_none_or(|g| g <= NEAR_TIE);
    if !tie {
        failures.push(format!(
            "case {}: diverges from PEFT at generated token {agree} (flotilla {} vs PEFT {}; \
             flotilla's logit gap {ours_gap:.4}, PEFT's top-1/top-2 gap {peft_gap:?})\nours:  {ours:?}\nPEFT:  {theirs:?}",
            c.name, ours[agree], theirs[agree]
        ));
    }
    (
        format!(
            "{}: {agree}/{possible} (near-tie at divergence: flotilla gap {ours_gap:.4}, PEFT gap {peft_gap:?})",
            c.name
        ),
        false,
    )
}

#[test]
fn prompt_ids_equal_transformers() {
    let lm = hf_base();
    for c in cases() {
        let ours = lm.tokenizer.encode(&c.prompt, true).unwrap();
        assert_eq!(ours, c.prompt_ids, "case {}: {:?}", c.name, c.prompt);
    }
}

#[test]
fn peft_adapter_loads_as_saved() {
    let adapter = LoraAdapter::load(&fixture(ADAPTER)).unwrap();
    // q_proj and v_proj (r=4) and down_proj (r=2 by rank_pattern) on all 30 layers.
    assert_eq!(adapter.weights.len(), 3 * 30);
    let mut ranks: Vec<(String, usize)> = adapter
        .weights
        .iter()
        .filter(|(k, _)| k.layer == 5)
        .map(|(k, (a, _))| (k.module.name().to_string(), a.dims2().unwrap().0))
        .collect();
    ranks.sort();
    assert_eq!(
        ranks,
        [
            ("down_proj".to_string(), 2),
            ("q_proj".to_string(), 4),
            ("v_proj".to_string(), 4)
        ]
    );
    // Scaling: alpha / r, with down_proj's own rank and layer 5 v_proj's own alpha (16).
    let scale = |layer: usize, name: &str| {
        let (k, _) = adapter
            .weights
            .iter()
            .find(|(k, _)| k.layer == layer && k.module.name() == name)
            .unwrap();
        adapter.scaling(k)
    };
    assert_eq!(scale(0, "q_proj"), 2.0);
    assert_eq!(scale(0, "down_proj"), 4.0);
    assert_eq!(scale(4, "v_proj"), 2.0);
    assert_eq!(scale(5, "v_proj"), 4.0);
    assert_eq!(
        scale(15, "v_proj"),
        2.0,
        "`layers.5.` must not match layer 15"
    );
}

#[test]
fn next_token_logits_equal_peft() {
    let lm = with_fixture_adapter();
    let mut worst = 0f32;
    for c in cases() {
        let logits = next_logits(lm, &c.prompt_ids);
        let ours = top_k(&logits, 5);
        assert_eq!(
            ours[0], c.top5_ids[0],
            "case {}: top-1 differs: ours {ours:?}, PEFT {:?}",
            c.name, c.top5_ids
        );
        for (id, want) in c.top5_ids.iter().zip(&c.top5_logits) {
            let got = logits[*id as usize];
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < LOGIT_TOL,
                "case {}: logit of {id} is {got}, PEFT's {want}",
                c.name
            );
        }
    }
    eprintln!("next-token top-5 logits: largest difference from PEFT {worst:.5}");
}

#[test]
fn greedy_generations_equal_peft() {
    let lm = with_fixture_adapter();
    let base = hf_base();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut full = 0;
    let cases = cases();
    for c in &cases {
        let ours = greedy(lm, &c.prompt_ids, c.greedy_ids.len().max(24));
        let (line, same) = check_greedy(
            lm,
            c,
            &ours,
            &c.greedy_ids,
            Some(&c.greedy_gaps),
            &mut failures,
        );
        full += same as usize;
        report.push(line);
        // The base model without the adapter must follow transformers too (so a mismatch
        // above is the adapter's, not the conversion's).
        let ours_base = greedy(base, &c.prompt_ids, c.base_greedy_ids.len().max(24));
        let (line, _) = check_greedy(base, c, &ours_base, &c.base_greedy_ids, None, &mut failures);
        report.push(format!("base {line}"));
    }
    eprintln!("greedy agreement with PEFT: {}", report.join(", "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        full * 2 > cases.len(),
        "all tokens agree on only {full} of {} prompts: {}",
        cases.len(),
        report.join(", ")
    );
}

/// The adapter must matter: with it, flotilla's generations and logits move away from the
/// base's (so a loader that silently dropped the weights would fail here).
#[test]
fn adapter_changes_the_output() {
    let lm = with_fixture_adapter();
    let base = hf_base();
    let cases = cases();
    let mut changed = 0;
    for c in &cases {
        let a = greedy(lm, &c.prompt_ids, 24);
        let b = greedy(base, &c.prompt_ids, 24);
        changed += (a != b) as usize;
        let la = next_logits(lm, &c.prompt_ids);
        let lb = next_logits(base, &c.prompt_ids);
        let diff = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff > 0.1,
            "case {}: the adapter moves no logit by more than {diff}",
            c.name
        );
    }
    // In PEFT's own run the adapter changed all but one generation.
    let peft_changed = cases
        .iter()
        .filter(|c| c.greedy_ids != c.base_greedy_ids)
        .count();
    assert!(
        peft_changed >= 3,
        "fixture: the adapter changes only {peft_changed} generations"
    );
    assert_eq!(
        changed, peft_changed,
        "flotilla's adapter changes {changed} generations, PEFT's {peft_changed}"
    );
}

/// Merged into the weights (`flotilla adapter merge`), the PEFT adapter gives PEFT's greedy
/// generations too.
#[test]
fn merged_peft_adapter_generates_as_peft() {
    let dir = temp_dir("peft-merge");
    let hf = dir.path().join("hf");
    gguf_to_hf(&smollm2_path(), &hf, OutDType::F32).unwrap();
    let adapter = LoraAdapter::load(&fixture(ADAPTER)).unwrap();
    let merged_dir = dir.path().join("merged");
    merge_to_hf_dir(hf.to_str().unwrap(), &adapter, &merged_dir).unwrap();
    std::fs::remove_dir_all(&hf).unwrap();
    let merged = load_model(&merged_dir);
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for c in cases() {
        let ours = greedy(&merged, &c.prompt_ids, c.greedy_ids.len().max(24));
        let (line, _) = check_greedy(
            &merged,
            &c,
            &ours,
            &c.greedy_ids,
            Some(&c.greedy_gaps),
            &mut failures,
        );
        report.push(line);
    }
    eprintln!("merged: greedy agreement with PEFT: {}", report.join(", "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Copy the fixture adapter with its config edited.
fn edited_adapter(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> flotilla_tests::TempDir {
    let dir = temp_dir(tag);
    let src = fixture(ADAPTER);
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(
        dir.path().join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn unsupported_peft_features_are_refused() {
    let refused = |tag: &str, edit: &dyn Fn(&mut serde_json::Value), words: &[&str]| {
        let dir = edited_adapter(tag, |c| edit(c));
        let err = LoraAdapter::load(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{tag}: the edited adapter loaded"));
        let msg = format!("{err:#}");
        for w in words {
            assert!(
                msg.contains(w),
                "{tag}: message {msg:?} does not mention {w:?}"
            );
        }
        // Through the model loader too (what --adapter does).
        let err = load_with_adapter(hf_base(), dir.path())
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains(words[0]), "{tag}: {err:#}");
    };
    refused(
        "peft-dora",
        &|c| c["use_dora"] = true.into(),
        &["use_dora", "DoRA"],
    );
    refused("peft-bias", &|c| c["bias"] = "all".into(), &["bias"]);
    refused(
        "peft-modules-to-save",
        &|c| c["modules_to_save"] = serde_json::json!(["lm_head"]),
        &["modules_to_save"],
    );
    refused("peft-loha", &|c| c["peft_type"] = "LOHA".into(), &["LOHA"]);

    // A bare missing weights file says what to do.
    let dir = temp_dir("peft-no-weights");
    std::fs::copy(
        fixture(ADAPTER).join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let msg = format!(
        "{:#}",
        LoraAdapter::load(dir.path()).err().expect("refused")
    );
    assert!(msg.contains("adapter_model.safetensors"), "{msg}");
}
