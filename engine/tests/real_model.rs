//! Real-model checks on the default SmolLM2-135M-Instruct GGUF; skipped with a
//! printed reason when the asset is absent (the test command fetches it).

#[macro_use]
mod common;

use std::path::PathBuf;

use common::offline;
use pdserve_engine::engine::{Engine, EngineConfig, EngineRequest};
use pdserve_engine::fixtures::real_asset;
use pdserve_engine::loader::load_model;
use pdserve_engine::sampling::SamplingParams;
use pdserve_engine::SeqId;

fn smollm2() -> Option<PathBuf> {
    real_asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Greedy text of `max_tokens` tokens after `tokens`.
fn run(engine: &mut Engine, tokens: Vec<u32>, max_tokens: usize) -> String {
    engine
        .add_request(EngineRequest {
            id: SeqId(1),
            prompt_tokens: tokens,
            params: SamplingParams::greedy(max_tokens),
        })
        .unwrap();
    let mut text = String::new();
    while engine.has_work() {
        for o in engine.step().unwrap() {
            text.push_str(&o.text);
        }
    }
    text
}

/// Plain completion of `prompt` (BOS added as the model wants).
fn generate(engine: &mut Engine, prompt: &str, max_tokens: usize) -> String {
    let tokens = engine.tokenizer().encode(prompt, true).unwrap();
    run(engine, tokens, max_tokens)
}

/// One user turn through the model's chat template; returns (rendered prompt, answer).
fn chat(engine: &mut Engine, user: &str, max_tokens: usize) -> (String, String) {
    let msgs = [pdserve_engine::tokenizer::ChatMessage {
        role: "user".into(),
        content: user.into(),
    }];
    let prompt = engine
        .tokenizer()
        .apply_chat_template(&msgs, true, &serde_json::Value::Null)
        .unwrap();
    let tokens = engine.tokenizer().encode(&prompt, false).unwrap();
    let text = run(engine, tokens, max_tokens);
    (prompt, text)
}

per_device! {
fn smollm2_knows_the_capital_of_france(device) {
    let Some(path) = smollm2() else { return };
    let model = load_model(path.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(model.config.num_layers, 30);
    let mut engine = Engine::new(model, EngineConfig { device, ..EngineConfig::default() }).unwrap();
    let text = generate(&mut engine, "The capital of France is", 12);
    assert!(text.starts_with(" Paris"), "got {text:?}");
    // llama.cpp's greedy continuation of the same prompt starts the same way.
    assert!(
        text.starts_with(" Paris.\n\nThe United States has a population"),
        "got {text:?}"
    );
}
}

#[test]
fn smollm2_chat_answers() {
    let Some(path) = smollm2() else { return };
    let model = load_model(path.to_str().unwrap(), &offline()).unwrap();
    let mut engine = Engine::new(model, EngineConfig::default()).unwrap();
    let (prompt, text) = chat(&mut engine, "What is the capital of France?", 24);
    assert!(prompt.contains("<|im_start|>assistant"), "{prompt}");
    // SmolLM2-135M at 4 bits sits near a tie here: llama.cpp's greedy answer (measured
    // with llama-cpp-python, 2 threads, 2026-11-21) is "L'Étoile, la Marseillaise, ...",
    // and tiny numerical differences flip it to the right answer. Either is the
    // model run correctly; anything else is a bug.
    assert!(
        text.contains("Paris") || text.starts_with("L'Étoile, la Marseillaise, la femme"),
        "got {text:?}"
    );
}

/// Qwen2 architecture with K-quants (Q4_K_M mix: Q4_K, Q5_0, Q6_K, Q8_0 ...), only
/// when `scripts/fetch-assets.sh --all` fetched it.
#[test]
fn qwen2_5_coder_q4_k_m_writes_python() {
    let Some(path) = real_asset("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let model = load_model(path.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(
        model.config.arch,
        pdserve_engine::config::Architecture::Qwen2
    );
    let mut engine = Engine::new(model, EngineConfig::default()).unwrap();
    let (_, text) = chat(
        &mut engine,
        "Write a Python function that returns the square of a number.",
        40,
    );
    assert!(text.contains("def square"), "got {text:?}");
}
