//! Fine-tuning data on the real SmolLM2 tokenizer and chat template: the loss mask covers
//! exactly the assistant's words and its `<|im_end|>`, the prompt part tokenizes as generation
//! would see it, too-long examples are caught before training, and batches carry the mask.

use flotilla_engine::chat::ChatMessage;
use flotilla_engine::generate::Prompt;
use flotilla_engine::LanguageModel;
use flotilla_tests::smollm2;
use flotilla_train::data::{
    eval_batches, load_records, tokenize_records, DataLoader, RecordBody, TokenizedExample,
    TrainRecord,
};
use std::path::{Path, PathBuf};

fn chat(line: usize, messages: &[(&str, &str)]) -> TrainRecord {
    TrainRecord {
        line,
        id: None,
        body: RecordBody::Chat(
            messages
                .iter()
                .map(|(r, c)| ChatMessage::new(*r, *c))
                .collect(),
        ),
    }
}

fn completion(line: usize, prompt: &str, completion: &str) -> TrainRecord {
    TrainRecord {
        line,
        id: None,
        body: RecordBody::Completion {
            prompt: prompt.into(),
            completion: completion.into(),
        },
    }
}

fn tokenize(records: &[TrainRecord], model: &LanguageModel) -> Vec<TokenizedExample> {
    tokenize_records(records, model, 4096, Path::new("train.jsonl")).unwrap()
}

/// The masked tokens of `e`, one decoded string per contiguous run.
fn target_runs(e: &TokenizedExample, model: &LanguageModel) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (id, m) in e.ids.iter().zip(&e.loss_mask) {
        if *m {
            run.push(*id);
        } else if !run.is_empty() {
            runs.push(model.tokenizer.decode(&run, false).unwrap());
            run.clear();
        }
    }
    if !run.is_empty() {
        runs.push(model.tokenizer.decode(&run, false).unwrap());
    }
    runs
}

/// SmolLM2 with its template removed and, optionally, a shorter context.
fn variant_of_smollm2(template: bool, context: Option<usize>) -> LanguageModel {
    let m = smollm2();
    let mut info = m.info.clone();
    if let Some(c) = context {
        info.context_length = c;
    }
    let model = LanguageModel {
        model: m.model.clone(),
        tokenizer: m.tokenizer.clone(),
        template: None,
        info,
    };
    if template {
        LanguageModel {
            template: m.info.chat_template.as_deref().map(|s| {
                flotilla_engine::ChatTemplate::new(
                    s,
                    m.tokenizer.bos_token.as_deref(),
                    m.tokenizer.eos_token.as_deref(),
                )
                .unwrap()
            }),
            ..model
        }
    } else {
        model
    }
}

#[test]
fn only_the_assistant_reply_and_its_end_of_turn_are_targets() {
    let m = smollm2();
    let records = [chat(
        1,
        &[
            ("system", "Be brief."),
            ("user", "What is the capital of France?"),
            ("assistant", "The capital of France is Paris."),
        ],
    )];
    let e = &tokenize(&records, m)[0];
    assert_eq!(
        target_runs(e, m),
        ["The capital of France is Paris.<|im_end|>"]
    );
    // Everything before the reply is what generation is prompted with, token for token.
    let first = e.loss_mask.iter().position(|x| *x).unwrap();
    let prompt = m
        .prompt_ids(&Prompt::Chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "What is the capital of France?"),
        ]))
        .unwrap();
    assert_eq!(&e.ids[..first], &prompt[..]);
    // Nothing after the end-of-turn token is a target.
    let im_end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    let last = e.loss_mask.iter().rposition(|x| *x).unwrap();
    assert_eq!(e.ids[last], im_end);
}

#[test]
fn every_assistant_turn_of_a_conversation_is_a_target_including_japanese() {
    let m = smollm2();
    let records = [chat(
        3,
        &[
            ("user", "富士山の高さは？"),
            ("assistant", "3776メートルです。"),
            ("user", "最後の噴火は？"),
            ("assistant", "1707年の宝永噴火です。"),
        ],
    )];
    let e = &tokenize(&records, m)[0];
    assert_eq!(
        target_runs(e, m),
        [
            "3776メートルです。<|im_end|>",
            "1707年の宝永噴火です。<|im_end|>"
        ]
    );
}

#[test]
fn a_prompt_completion_record_is_a_one_turn_chat_with_a_template_and_plain_text_without() {
    let m = smollm2();
    let e = &tokenize(&[completion(1, "Name a primary colour.", "Red.")], m)[0];
    assert_eq!(target_runs(e, m), ["Red.<|im_end|>"]);
    let text = m.tokenizer.decode(&e.ids, false).unwrap();
    assert!(
        text.contains("<|im_start|>user\nName a primary colour.<|im_end|>"),
        "{text}"
    );

    let plain = variant_of_smollm2(false, None);
    let e = &tokenize(
        &[completion(1, "The capital of France is", " Paris.")],
        &plain,
    )[0];
    let eos = plain.tokenizer.eos_token.clone().unwrap();
    assert_eq!(target_runs(e, &plain), [format!(" Paris.{eos}")]);
    assert_eq!(
        plain.tokenizer.decode(&e.ids, false).unwrap(),
        format!("The capital of France is Paris.{eos}")
    );

    // A chat needs a template.
    let err = tokenize_records(
        &[chat(7, &[("user", "Hi"), ("assistant", "Hello")])],
        &plain,
        4096,
        Path::new("data/train.jsonl"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("data/train.jsonl:7: a chat record needs the model's chat template"),
        "{err}"
    );
}

#[test]
fn a_sequence_longer_than_the_limit_or_the_context_is_caught_before_training() {
    let m = smollm2();
    let long = "word ".repeat(200);
    let records = [
        completion(1, "Short?", "Yes."),
        completion(2, &long, "Done."),
    ];
    let err = tokenize_records(&records, m, 128, Path::new("train.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("train.jsonl:2: the example has ")
            && err.contains("longer than the maximum sequence length 128"),
        "{err}"
    );

    let small = variant_of_smollm2(true, Some(64));
    let err = tokenize_records(&records, &small, 4096, Path::new("train.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.jsonl:2:")
            && err.contains("longer than the model's context (64 tokens)"),
        "{err}"
    );
}

#[test]
fn a_file_of_both_forms_becomes_batches_whose_targets_are_assistant_tokens() {
    let dir = std::env::temp_dir().join(format!("flotilla-train-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("mixed.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}"#,
            "\n",
            r#"{"id": "b", "prompt": "Say hi.", "completion": "Hi!"}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "Answer in Japanese."}, {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "どういたしまして。"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let m = smollm2();
    let records = load_records(&path).unwrap();
    let examples = tokenize_records(&records, m, 512, &path).unwrap();
    let targets: usize = examples.iter().map(|e| e.target_count()).sum();

    for packing in [false, true] {
        // One epoch in one batch: three padded rows, or one packed row exactly as long as the
        // three (a longer row would go on with the next epoch's examples).
        let total: usize = examples.iter().map(|e| e.ids.len()).sum();
        let (rows, seq_len) = if packing { (1, total) } else { (3, 256) };
        let mut dl = DataLoader::new(examples.clone(), rows, seq_len, packing, 0).unwrap();
        let b = dl.next_batch();
        assert_eq!(b.rows, rows);
        assert_eq!(b.target_tokens, targets, "packing={packing}");
        let predicted: Vec<u32> = b
            .targets
            .iter()
            .zip(&b.loss_mask)
            .filter(|(_, m)| **m > 0.0)
            .map(|(t, _)| *t)
            .collect();
        let decoded = m.tokenizer.decode(&predicted, false).unwrap();
        for answer in [
            "4<|im_end|>",
            "Hi!<|im_end|>",
            "どういたしまして。<|im_end|>",
        ] {
            assert!(decoded.contains(answer), "{decoded}");
        }
    }
    let held = eval_batches(&examples, 2, 512);
    assert_eq!(held.len(), 2);
    assert_eq!(held.iter().map(|b| b.target_tokens).sum::<usize>(), targets);
}
