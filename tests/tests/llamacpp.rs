//! flotilla tokenizes and decodes SmolLM2 as llama.cpp does.
//!
//! `tests/fixtures/llamacpp-smollm2.json` is the recorded output of
//! `scripts/llamacpp_reference.py` (llama-cpp-python on the same GGUF, default settings): for
//! each prompt, llama.cpp's prompt token ids and its first greedy token ids. Regenerate it with
//! that script when the prompts change.
//!
//! flotilla's GGUF attention rounds to f16 as llama.cpp's KV cache does; with it, most prompts
//! agree on all 32 tokens. Remaining early divergences must be near-ties (see NEAR_TIE).

use flotilla_engine::SamplingParams;
use flotilla_tests::{fixture_cases, next_logits, smollm2, ReferenceCase};

/// Logit gap under which two tokens count as tied: Q4_1 rounding moves logits by about this.
const NEAR_TIE: f32 = 0.25;

fn cases() -> Vec<ReferenceCase> {
    fixture_cases("llamacpp-smollm2.json")
        .iter()
        .map(ReferenceCase::from_json)
        .collect()
}

#[test]
fn prompt_token_ids_equal_llama_cpp() {
    let lm = smollm2();
    let cases = cases();
    assert!(cases.len() >= 7, "fixture has {} cases", cases.len());
    for c in &cases {
        let ours = lm.tokenizer.encode(&c.prompt, true).unwrap();
        assert_eq!(ours, c.prompt_ids, "case {}: {:?}", c.name, c.prompt);
    }
}

#[test]
fn greedy_ids_agree_with_llama_cpp() {
    let lm = smollm2();
    let cases = cases();
    let mut long_agreements = 0;
    let mut report = Vec::new();
    let mut short = Vec::new();
    for c in &cases {
        let params = SamplingParams {
            max_tokens: c.greedy_ids.len(),
            ..Default::default()
        };
        let (out, _) = lm
            .generate_ids(std::slice::from_ref(&c.prompt_ids), &params)
            .unwrap();
        let ours = &out[0].token_ids;
        let agree = ours
            .iter()
            .zip(&c.greedy_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let possible = ours.len().min(c.greedy_ids.len());
        // Both stopped at the same EOS early: full agreement counts as long agreement.
        if agree >= 16 || agree == possible {
            long_agreements += 1;
        }
        // An early divergence is allowed only at a near-tie: after llama.cpp's tokens so far,
        // its choice must be within NEAR_TIE logits of our top token. A forward-pass or
        // tokenizer bug shows up as a large margin.
        let margin = if agree < possible {
            let mut ids = c.prompt_ids.clone();
            ids.extend(&c.greedy_ids[..agree]);
            let logits = next_logits(lm, &ids);
            let top = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            top - logits[c.greedy_ids[agree] as usize]
        } else {
            0.0
        };
        report.push(format!(
            "{}: {agree}/{possible} (margin at divergence {margin:.3})",
            c.name
        ));
        if agree < 8.min(possible) && margin > NEAR_TIE {
            short.push(format!(
                "case {}: only {agree} leading tokens agree\nours:  {:?}\nllama: {:?}",
                c.name, ours, c.greedy_ids
            ));
        }
    }
    eprintln!(
        "leading greedy agreement with llama.cpp: {}",
        report.join(", ")
    );
    assert!(short.is_empty(), "{}", short.join("\n"));
    assert!(
        long_agreements * 2 > cases.len(),
        "16+ tokens agree on only {long_agreements} of {} prompts: {}",
        cases.len(),
        report.join(", ")
    );
}
