//! End-to-end checks of the `pdserve` binary's failure behaviour: a bad model
//! (missing path, corrupt or truncated file) ends with exactly one `error:` line
//! on stderr and exit status 1, never a panic. Hermetic: `--offline`, temp files.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every command here must end on its own; one that is still running after this
/// long is killed and the test fails (a serving command that starts instead of
/// refusing its arguments must not hang the suite).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

fn pdserve(args: &[&str], home: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdserve"))
        .args(args)
        .env("HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME")
        .env_remove("PDSERVE_MODEL")
        .env_remove("PDSERVE_MODELS_DIR")
        .env_remove("PDSERVE_CACHE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pdserve");
    let started = Instant::now();
    while child.try_wait().expect("wait for pdserve").is_none() {
        if started.elapsed() > COMMAND_LIMIT {
            child.kill().ok();
            let out = child.wait_with_output().expect("collect pdserve output");
            panic!(
                "pdserve {args:?} still running after {COMMAND_LIMIT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect pdserve output")
}

/// Asserts a clean one-line failure mentioning `needle`; returns the line.
fn assert_one_line_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "want `{needle}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

fn generate(model: &str, home: &Path) -> Output {
    pdserve(
        &["generate", "--offline", "--model", model, "--prompt", "hi"],
        home,
    )
}

#[test]
fn missing_model_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("absent.gguf");
    let out = generate(path.to_str().unwrap(), tmp.path());
    let line = assert_one_line_error(&out, &path.display().to_string());
    assert!(line.contains("no such file"), "{line}");
}

#[test]
fn unknown_repo_id_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = generate("Org/Absent", tmp.path());
    let line = assert_one_line_error(&out, "Org/Absent");
    assert!(line.contains("models--Org--Absent"), "{line}");
}

#[test]
fn default_model_absent_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = generate("default", tmp.path());
    assert_one_line_error(&out, "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn corrupt_hf_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let out = generate(dir.to_str().unwrap(), tmp.path());
    assert_one_line_error(&out, &dir.join("config.json").display().to_string());
}

const TINY_CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":32,
"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
"num_key_value_heads":1,"max_position_embeddings":64}"#;

#[test]
fn truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 20]); // 12 bytes short
    let file = dir.join("model.safetensors");
    std::fs::write(&file, bytes).unwrap();
    let out = generate(dir.to_str().unwrap(), tmp.path());
    let line = assert_one_line_error(&out, &file.display().to_string());
    assert!(line.contains("truncated"), "{line}");
}

/// Needs the GGUF parser (helper A's `GgufFile::open`).
#[test]
fn truncated_and_corrupt_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    assert_one_line_error(
        &generate(garbage.to_str().unwrap(), tmp.path()),
        "garbage.gguf",
    );

    let truncated = tmp.path().join("truncated.gguf");
    // Magic, version 3, then the file ends inside the tensor count.
    std::fs::write(&truncated, b"GGUF\x03\x00\x00\x00\x05\x00").unwrap();
    assert_one_line_error(
        &generate(truncated.to_str().unwrap(), tmp.path()),
        "truncated.gguf",
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = pdserve(&["generate"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    // `serve` has a default for everything, so only a bad flag is a usage error.
    let out = pdserve(&["serve", "--no-such-flag"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let out = pdserve(&["serve", "--decode-workers", "many"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let out = pdserve(
        &["worker", "--role", "decode", "--kv-transport", "pigeon"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auto") && err.contains("nixl") && err.contains("tcp"),
        "lists the transports: {err}"
    );
}

#[test]
fn serving_commands_reject_bad_settings_before_starting() {
    let home = tempfile::tempdir().unwrap();
    let out = pdserve(
        &[
            "frontend",
            "--offline",
            "--http-port",
            "0",
            "--seed",
            "no-port-here",
        ],
        home.path(),
    );
    assert_one_line_error(&out, "invalid seed address \"no-port-here\"");
    let out = pdserve(
        &[
            "frontend",
            "--offline",
            "--http-port",
            "0",
            "--router-policy",
            "fastest",
        ],
        home.path(),
    );
    let line = assert_one_line_error(&out, "--router-policy");
    let timeout = pdserve(
        &[
            "frontend",
            "--offline",
            "--http-port",
            "0",
            "--header-timeout-s",
            "0",
        ],
        home.path(),
    );
    assert_one_line_error(&timeout, "--header-timeout-s");
    // No CUDA in this build (or no device): one line, before any model is loaded.
    let cuda = pdserve(
        &["generate", "--offline", "--device", "cuda", "--prompt", "x"],
        home.path(),
    );
    assert_one_line_error(&cuda, "--device cuda:0");
    let out = pdserve(
        &["generate", "--device", "tpu", "--prompt", "x"],
        home.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a device that does not exist is a usage error"
    );
    assert!(
        line.contains("kv-aware"),
        "lists the valid policies: {line}"
    );
}

/// `pdserve bench` input errors: a bad ShareGPT file, then a server that is not
/// there (a port just closed on loopback) — one `error:` line each, no panic.
#[test]
fn bench_bad_dataset_and_unreachable_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sharegpt.json");
    std::fs::write(&data, "{\"conversations\": [").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--url",
            &url,
            "--model",
            "m",
            "--num-requests",
            "2",
        ];
        args.extend_from_slice(extra);
        pdserve(&args, tmp.path())
    };
    let out = bench(&["--dataset", data.to_str().unwrap()]);
    let line = assert_one_line_error(&out, &data.display().to_string());
    assert!(line.contains("not valid JSON"), "{line}");
    let out = bench(&["--timeout-s", "10"]);
    let line = assert_one_line_error(&out, "every warm-up request");
    assert!(line.contains("request failed"), "{line}");
    let out = bench(&["--warmup", "0", "--timeout-s", "10"]);
    assert_one_line_error(&out, "all 2 requests failed");
}
