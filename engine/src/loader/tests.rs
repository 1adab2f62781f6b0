//! Loader tests that need no other module's unfinished parts: error paths name
//! their file; pre-faulting the real default model when it is on this machine.

use super::*;

fn hermetic(home: &Path) -> LoadOptions {
    LoadOptions {
        progress: false,
        prefault: true,
        allow_download: false,
        hub_env: Some(HubEnv {
            home: Some(home.to_path_buf()),
            ..HubEnv::default()
        }),
    }
}

fn load_err(spec: &str, opts: &LoadOptions) -> String {
    match load_model(spec, opts) {
        Ok(m) => panic!("expected an error, loaded {}", m.name),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures":["GPT2LMHeadModel"],"vocab_size":8,"hidden_size":8,
            "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1}"#,
    )
    .unwrap();
    let msg = load_err(tmp.path().to_str().unwrap(), &hermetic(tmp.path()));
    let config = tmp.path().join("config.json").display().to_string();
    assert!(msg.starts_with(&format!("{config}: ")), "{msg}");
    assert!(msg.contains("GPT2LMHeadModel"), "{msg}");
}

#[test]
fn hf_dir_without_weights_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":8,"hidden_size":8,
            "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1}"#,
    )
    .unwrap();
    let msg = load_err(tmp.path().to_str().unwrap(), &hermetic(tmp.path()));
    assert!(msg.contains("no model.safetensors"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
}

#[test]
fn in_file_wraps_pathless_errors_only() {
    let p = Path::new("/m/model.gguf");
    let e = in_file(p, EngineError::Config("bad head count".into()));
    assert_eq!(
        e.to_string(),
        "/m/model.gguf: invalid model config: bad head count"
    );
    let e = in_file(p, EngineError::MissingTensor("output_norm.weight".into()));
    assert_eq!(
        e.to_string(),
        "/m/model.gguf: missing tensor `output_norm.weight`"
    );
    let e = in_file(p, EngineError::bad_file("/other", "x"));
    assert_eq!(e.to_string(), "/other: x");
}

#[test]
fn prefaults_the_real_default_model() {
    let Some(path) = HubEnv::from_env().default_model_path() else {
        eprintln!("skipping: no HOME / models dir");
        return;
    };
    if !path.is_file() {
        eprintln!("skipping: {} is absent", path.display());
        return;
    }
    let map = crate::storage::map_file(&path).unwrap();
    let len = map.len();
    let start = std::time::Instant::now();
    prefault::prefault(&[(path.clone(), map)], true);
    eprintln!("prefaulted {len} bytes in {:?}", start.elapsed());
    assert!(len > 16 << 20);
}
