//! SmolLM2 as a local judge: it always yields a valid rating (constrained), with a G-Eval
//! score from the same pass, and continuation scoring matches plain teacher forcing.

use candle_core::{Device, Tensor};
use flotilla_bench::judge::{JudgeInput, LocalJudge, Scale};
use flotilla_contract::Task;
use flotilla_engine::models::llama::KvCache;
use flotilla_tests::smollm2;

const PARIS: JudgeInput<'static> = JudgeInput::Reference {
    task: Task::Rag,
    question: "What is the capital of France?",
    reference: Some("Paris is the capital of France."),
    answer: "The capital of France is Paris.",
    context: "[1] Paris is the capital and largest city of France.",
    template: None,
};

#[test]
fn local_judge_always_gives_a_rating_in_the_scale() {
    let judge = LocalJudge {
        name: "smollm2".into(),
        model: smollm2(),
        scale: Scale::FLOW,
        explanation_tokens: 48,
    };
    let good = judge.judge(&PARIS).unwrap();
    let crit = judge
        .judge(&JudgeInput::Criteria {
            text: "If Tom buys 5 bananas, and then Jim steals 3, how many bananas does Jim have?",
            rubric: "Clarity and Precision: the question should be clearly worded.",
            template: None,
        })
        .unwrap();
    for v in [&good, &crit] {
        let r = v.rating.expect("constrained judge always rates");
        assert!((1.0..=10.0).contains(&r) && r.fract() == 0.0, "{v:?}");
        let g = v.geval.unwrap();
        assert!((1.0..=10.0).contains(&g), "{v:?}");
        assert!(v.raw.ends_with(&format!("Rating: [[{r}]]")), "{:?}", v.raw);
        assert!(v.error.is_none());
    }
    // Deterministic: the same input gives the same verdict.
    let again = judge.judge(&PARIS).unwrap();
    assert_eq!(again, good);
}

#[test]
fn batched_continuation_scores_equal_teacher_forcing() {
    let lm = smollm2();
    let prompt = lm
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let candidates: Vec<Vec<u32>> = [" Paris.", " London, of course", " a"]
        .iter()
        .map(|t| lm.tokenizer.encode(t, false).unwrap())
        .collect();
    let batched = lm.continuation_logprobs(&prompt, &candidates).unwrap();
    for (c, b) in candidates.iter().zip(&batched) {
        let mut ids = prompt.clone();
        ids.extend(c);
        let mut cache = KvCache::new(lm.model.config().num_layers, vec![0]);
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = lm.model.forward(&x, &mut cache, true).unwrap();
        let logp = candle_nn_log_softmax(&logits);
        let mut expect = 0.0;
        for (j, &t) in c.iter().enumerate() {
            expect += logp[prompt.len() - 1 + j][t as usize] as f64;
        }
        assert!(
            (expect - b).abs() < 0.05,
            "{c:?}: batched {b} vs forced {expect}"
        );
    }
    assert!(
        batched[0] > batched[1],
        "Paris should be likelier than London: {batched:?}"
    );
}

fn candle_nn_log_softmax(logits: &Tensor) -> Vec<Vec<f32>> {
    let l = logits.squeeze(0).unwrap();
    let max = l.max_keepdim(1).unwrap();
    let shifted = l.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .log()
        .unwrap();
    shifted
        .broadcast_sub(&lse)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}
