//! HF safetensors model directories as a [`TensorSource`] (OWNER: helper G).
//!
//! A directory holds either one `model.safetensors` or a sharded set described by
//! `model.safetensors.index.json` (`weight_map`: tensor name → shard file name).
//! Every shard is memory-mapped once; matrices are zero-copy windows of the map.
//!
//! Invariants established by [`SafetensorsDir::open`] (so later accessors never
//! index out of bounds): every shard's header parsed and validated (offsets
//! contiguous, sizes equal to shape × dtype, no overflow), the file is exactly
//! `8 + header + data` bytes long, every tensor's absolute byte range lies inside
//! its map, and every tensor the index names is present in the shard it names.
//! Shard names from the index are plain file names (no path components).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::Dtype as StDtype;

use crate::model::{TensorNaming, TensorSource};
use crate::quant::{DType, QMatrix};
use crate::storage::{map_file, Storage};
use crate::{EngineError, Result};

/// Single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Sharded weights index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One memory-mapped shard.
struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte offset of the tensor in its shard's map.
    offset: usize,
    len: usize,
}

/// An opened, validated safetensors model directory.
pub struct SafetensorsDir {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsDir")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Our name for a safetensors dtype (upper-case, as in the header).
fn dtype_name(d: StDtype) -> String {
    format!("{d:?}")
}

fn to_engine_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl SafetensorsDir {
    /// Opens `dir/model.safetensors`, or the shards listed by
    /// `dir/model.safetensors.index.json` when there is no single file.
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let mut out = SafetensorsDir {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            tensors: HashMap::new(),
        };
        if single.is_file() {
            out.add_shard(&single)?;
        } else if index.is_file() {
            let weight_map = read_index(&index)?;
            // Shard file → tensors the index places there, in a stable order.
            let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (tensor, file) in &weight_map {
                by_file
                    .entry(file.as_str())
                    .or_default()
                    .push(tensor.as_str());
            }
            for (file, names) in by_file {
                let path = dir.join(file);
                if !path.is_file() {
                    return Err(EngineError::bad_file(
                        &index,
                        format!(
                            "shard `{file}` (holding tensor `{}`) is missing from {}",
                            names[0],
                            dir.display()
                        ),
                    ));
                }
                let shard = out.add_shard(&path)?;
                for name in names {
                    match out.tensors.get(name) {
                        Some(e) if e.shard == shard => {}
                        _ => {
                            return Err(EngineError::bad_file(
                                &path,
                                format!(
                                    "tensor `{name}` listed in {INDEX_FILE} is not in this shard"
                                ),
                            ))
                        }
                    }
                }
            }
        } else {
            return Err(EngineError::bad_file(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            ));
        }
        Ok(out)
    }

    /// Maps and validates one shard, registering its tensors; returns its index.
    fn add_shard(&mut self, path: &Path) -> Result<usize> {
        let map = map_file(path)?;
        let (data_start, metadata) = parse_header(path, &map)?;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            let (s, e) = info.data_offsets;
            // `parse_header` checked data_start + data_len == file length and the
            // offsets are contiguous, so these cannot overflow or exceed the map.
            let offset = data_start + s;
            let len = e - s;
            if offset.checked_add(len).is_none_or(|end| end > map.len()) {
                return Err(EngineError::bad_file(
                    path,
                    format!("tensor `{name}` data lies outside the file"),
                ));
            }
            if let Some(prev) = self.tensors.get(&name) {
                return Err(EngineError::bad_file(
                    path,
                    format!(
                        "tensor `{name}` is also in {}",
                        self.shards[prev.shard].path.display()
                    ),
                ));
            }
            self.tensors.insert(
                name,
                Entry {
                    shard,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset,
                    len,
                },
            );
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(shard)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shard files with their maps, in open order (for pre-faulting).
    pub fn mapped_files(&self) -> Vec<(PathBuf, Arc<Mmap>)> {
        self.shards
            .iter()
            .map(|s| (s.path.clone(), Arc::clone(&s.map)))
            .collect()
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Shape of a tensor (row-major, outermost first), if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// Header dtype name of a tensor (`"BF16"`, `"F32"`, ...), if present.
    pub fn dtype_name(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|e| dtype_name(e.dtype))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| EngineError::bad_file(&self.dir, format!("missing tensor `{name}`")))
    }

    fn shard_path(&self, e: &Entry) -> &Path {
        &self.shards[e.shard].path
    }

    /// A tensor's dtype, rows, cols and zero-copy bytes, as `matrix` hands them to
    /// `QMatrix::new`: 2-D tensors are rows × cols, 1-D ones 1 × n.
    pub fn matrix_parts(&self, name: &str) -> Result<(DType, usize, usize, Storage)> {
        let e = self.entry(name)?;
        let path = self.shard_path(e);
        let dtype = to_engine_dtype(e.dtype).ok_or_else(|| {
            EngineError::bad_file(
                path,
                format!(
                    "tensor `{name}` has unsupported dtype {} (supported: F32, F16, BF16)",
                    dtype_name(e.dtype)
                ),
            )
        })?;
        let (rows, cols) = match e.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => {
                return Err(EngineError::bad_file(
                    path,
                    format!("tensor `{name}` has shape {other:?}, expected a matrix"),
                ))
            }
        };
        let map = Arc::clone(&self.shards[e.shard].map);
        let storage = Storage::mapped(map, e.offset, e.len).ok_or_else(|| {
            EngineError::bad_file(path, format!("tensor `{name}` data lies outside the file"))
        })?;
        Ok((dtype, rows, cols, storage))
    }
}

impl TensorSource for SafetensorsDir {
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (dtype, rows, cols, data) = self.matrix_parts(name)?;
        QMatrix::new(dtype, rows, cols, data).map_err(|err| {
            let path = self.entry(name).map(|e| self.shard_path(e).to_path_buf());
            EngineError::bad_file(
                path.unwrap_or_else(|_| self.dir.clone()),
                format!("tensor `{name}`: {err}"),
            )
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let bytes = &self.shards[e.shard].map[e.offset..e.offset + e.len];
        match e.dtype {
            StDtype::F32 => Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            StDtype::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            StDtype::BF16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            other => Err(EngineError::bad_file(
                self.shard_path(e),
                format!(
                    "tensor `{name}` has unsupported dtype {} (supported: F32, F16, BF16)",
                    dtype_name(other)
                ),
            )),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn naming(&self) -> TensorNaming {
        TensorNaming::HuggingFace
    }
}

/// Reads `weight_map` from an index file.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(path, format!("invalid index: {e}")))?;
    for file in index.weight_map.values() {
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(file));
        if !plain || file == ".." {
            return Err(EngineError::bad_file(
                path,
                format!("shard name `{file}` is not a plain file name"),
            ));
        }
    }
    Ok(index.weight_map)
}

/// Parses and validates a safetensors header. Returns the absolute offset of the
/// data section and the metadata (whose offsets are relative to it).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    let bad = |reason: String| EngineError::bad_file(path, reason);
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(format!(
            "truncated: {file_len} bytes, too short for a safetensors header"
        )));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(le);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} is implausible (not a safetensors file?)"
        )));
    }
    let data_start = 8 + header_len;
    if data_start > file_len {
        return Err(bad(format!(
            "truncated: header needs {data_start} bytes but the file has {file_len}"
        )));
    }
    let data_start = data_start as usize;
    let header = &bytes[8..data_start];
    let metadata: Metadata = serde_json::from_slice(header)
        .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let data_len = metadata.data_len() as u64;
    let expected = data_start as u64 + data_len;
    if expected > file_len {
        return Err(bad(format!(
            "truncated: header describes {expected} bytes but the file has {file_len}"
        )));
    }
    if expected < file_len {
        return Err(bad(format!(
            "{} unexpected trailing bytes after the tensor data",
            file_len - expected
        )));
    }
    Ok((data_start, metadata))
}

#[cfg(test)]
mod tests;
