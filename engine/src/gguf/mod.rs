//! GGUF files (llama.cpp / Ollama): header, metadata, tensor directory, and
//! memory-mapped tensor data. `writer` produces GGUF files (test fixtures, tools).
//!
//! OWNER: helper A (format + quant).
//!
//! Layout (little-endian, versions 2 and 3): magic `GGUF`, u32 version, u64 tensor
//! count, u64 metadata count; metadata entries (string key, u32 type, value); tensor
//! infos (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset);
//! padding to `general.alignment` (default 32); tensor data. Strings are u64 length +
//! UTF-8 bytes; arrays are u32 element type + u64 count + elements.
//!
//! Invariants after [`GgufFile::open`]: every tensor's extent lies inside the file,
//! its offset is aligned, its element count fits in `usize`, and `shape[0]` is a
//! multiple of its type's block length. Parsing never trusts a count: every length is
//! checked against the bytes left in the file before anything is allocated.

pub mod writer;

mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::quant::{DType, QMatrix};
use crate::storage::{map_file, Storage};
use crate::{EngineError, Result};

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Integer value of any integer type (and bool), if non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            GgufValue::Bool(b) => Some(b as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

pub type GgufMetadata = BTreeMap<String, GgufValue>;

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the fastest-varying (columns of a matrix).
    pub shape: Vec<u64>,
    pub dtype: DType,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (checked not to overflow when the file was opened).
    pub fn n_elements(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }
    /// Bytes of tensor data.
    pub fn n_bytes(&self) -> usize {
        self.dtype.bytes_for(self.n_elements())
    }
}

/// An opened, validated GGUF file. Tensor data stays memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: GgufMetadata,
    pub tensors: Vec<GgufTensorInfo>,
    pub(crate) map: Arc<Mmap>,
    /// Absolute offset of the tensor data section in the file.
    pub(crate) data_start: usize,
}

impl GgufFile {
    /// Parses and validates header, metadata and tensor directory. Every bound is
    /// checked (counts, string lengths, offsets, tensor extents vs file size): a
    /// truncated or corrupt file yields `EngineError::BadModelFile` naming the
    /// file and the reason, never a panic or a huge allocation.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = map_file(path)?;
        let parsed = parse::parse(&map).map_err(|e| e.into_error(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            map,
            data_start: parsed.data_start,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (mapped, zero copy).
    pub fn tensor_storage(&self, name: &str) -> Result<(&GgufTensorInfo, Storage)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))?;
        let storage = Storage::mapped(
            self.map.clone(),
            self.data_start + info.offset as usize,
            info.n_bytes(),
        )
        .ok_or_else(|| {
            EngineError::bad_file(&self.path, format!("tensor `{name}` extends past the end"))
        })?;
        Ok((info, storage))
    }

    /// A 2-D tensor as a matrix: rows = shape[1], cols = shape[0]. 1-D tensors come
    /// back as a 1×n matrix.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (info, storage) = self.tensor_storage(name)?;
        let (rows, cols) = match info.shape[..] {
            [c] => (1, c as usize),
            [c, r] => (r as usize, c as usize),
            // Trailing unit dimensions are harmless.
            [c, r, ref rest @ ..] if rest.iter().all(|&d| d == 1) => (r as usize, c as usize),
            _ => {
                return Err(EngineError::ShapeMismatch {
                    name: name.to_string(),
                    found: info.shape.iter().map(|&d| d as usize).collect(),
                    expected: vec![0, 0],
                })
            }
        };
        QMatrix::new(info.dtype, rows, cols, storage)
            .map_err(|e| EngineError::bad_file(&self.path, format!("tensor `{name}`: {e}")))
    }

    /// A tensor of any rank dequantized to f32 (norm weights, biases).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, storage) = self.tensor_storage(name)?;
        let n = info.n_elements();
        let m = QMatrix::new(info.dtype, 1, n, storage)
            .map_err(|e| EngineError::bad_file(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(m.to_f32())
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
}
