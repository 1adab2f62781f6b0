//! Writes GGUF v3 files: used by test fixtures (tiny models) and tools.
//!
//! OWNER: helper F.
//!
//! Layout written (all integers little-endian):
//! `"GGUF"`, version `u32 = 3`, tensor count `u64`, metadata count `u64`, the
//! metadata key/value pairs, the tensor directory (name, `n_dims: u32`, dims `u64`
//! in ggml order, type `u32`, offset `u64`), zero padding up to `general.alignment`,
//! then the tensor data, each tensor starting at a multiple of the alignment
//! (offsets in the directory are relative to the start of the data section).
//!
//! Invariants: the writer always emits `general.alignment` (a `u32` power of two,
//! default 32); metadata keys are unique (a later `add_metadata` replaces the value
//! in place); tensor names are unique; every tensor's byte length is checked against
//! its shape and type with a size table kept here, independent of `quant`, so the
//! writer can serve as an oracle for the reader. Metadata arrays must be
//! homogeneous; an empty array is written with element type `u8`.

use std::path::Path;

use super::GgufValue;
use crate::quant::DType;
use crate::{EngineError, Result};

/// File magic, as the first four bytes.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// The only version written.
pub const GGUF_VERSION: u32 = 3;
/// Alignment used when `general.alignment` is not set.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Longest tensor name llama.cpp accepts (GGML_MAX_NAME - 1).
pub const MAX_TENSOR_NAME: usize = 63;
const ALIGNMENT_KEY: &str = "general.alignment";

/// GGUF metadata value type id of a value (GGUF spec numbering).
pub fn value_type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

/// `(values per block, bytes per block)` of a GGML type (ggml.c type traits).
pub fn ggml_block_size(dtype: DType) -> (usize, usize) {
    match dtype {
        DType::F32 => (1, 4),
        DType::F16 | DType::BF16 => (1, 2),
        DType::Q4_0 => (32, 18),
        DType::Q4_1 => (32, 20),
        DType::Q5_0 => (32, 22),
        DType::Q5_1 => (32, 24),
        DType::Q8_0 => (32, 34),
        DType::Q8_1 => (32, 36),
        DType::Q2_K => (256, 84),
        DType::Q3_K => (256, 110),
        DType::Q4_K => (256, 144),
        DType::Q5_K => (256, 176),
        DType::Q6_K => (256, 210),
        DType::Q8_K => (256, 292),
    }
}

fn invalid(msg: String) -> EngineError {
    EngineError::Config(format!("GGUF writer: {msg}"))
}

struct PendingTensor {
    name: String,
    shape: Vec<u64>,
    dtype: DType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory; `to_bytes` / `write` serialize it.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (replacing an earlier value of the same key, keeping its position).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Convenience: an array of strings (token lists, merges).
    pub fn add_string_array<S: AsRef<str>>(&mut self, key: &str, items: &[S]) -> &mut Self {
        let arr = items
            .iter()
            .map(|s| GgufValue::String(s.as_ref().to_string()))
            .collect();
        self.add_metadata(key, GgufValue::Array(arr))
    }

    /// Sets `general.alignment` (must be a power of two).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        if !alignment.is_power_of_two() {
            return Err(invalid(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        Ok(self.add_metadata(ALIGNMENT_KEY, GgufValue::U32(alignment)))
    }

    /// Adds a tensor. `shape` is in ggml order (`shape[0]` = columns, fastest
    /// varying); `data` must be exactly the bytes of that many values of `dtype`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        dtype: DType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_TENSOR_NAME {
            return Err(invalid(format!(
                "tensor name `{name}` must have 1..={MAX_TENSOR_NAME} bytes"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("duplicate tensor `{name}`")));
        }
        if shape.is_empty() || shape.len() > 4 || shape.contains(&0) {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} must have 1..=4 non-zero dims"
            )));
        }
        let (block_len, block_bytes) = ggml_block_size(dtype);
        if !shape[0].is_multiple_of(block_len as u64) {
            return Err(invalid(format!(
                "tensor `{name}`: row length {} is not a multiple of the {:?} block ({block_len})",
                shape[0], dtype
            )));
        }
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / block_len as u64).checked_mul(block_bytes as u64));
        if expected != Some(data.len() as u64) {
            return Err(invalid(format!(
                "tensor `{name}`: {} bytes given, shape {shape:?} of {dtype:?} needs {expected:?}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            shape: shape.to_vec(),
            dtype,
            data,
        });
        Ok(self)
    }

    /// Convenience: an F32 tensor from values.
    pub fn add_f32_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        values: &[f32],
    ) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape, DType::F32, data)
    }

    /// The alignment that will be used (from `general.alignment`, else 32).
    pub fn alignment(&self) -> Result<u32> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(*a),
            Some((_, v)) => Err(invalid(format!(
                "{ALIGNMENT_KEY} must be a u32 power of two, got {v:?}"
            ))),
        }
    }

    /// Serializes the whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let alignment = self.alignment()? as u64;
        let mut meta: Vec<(&str, GgufValue)> = Vec::with_capacity(self.metadata.len() + 1);
        if !self.metadata.iter().any(|(k, _)| k == ALIGNMENT_KEY) {
            meta.push((ALIGNMENT_KEY, GgufValue::U32(alignment as u32)));
        }
        meta.extend(self.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())));

        let mut out = Vec::new();
        out.extend_from_slice(GGUF_MAGIC);
        put_u32(&mut out, GGUF_VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, meta.len() as u64);
        for (key, value) in &meta {
            put_str(&mut out, key);
            put_u32(&mut out, value_type_id(value));
            put_value(&mut out, key, value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.shape.len() as u32);
            for &d in &t.shape {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.dtype as u32);
            put_u64(&mut out, offset);
            offset = align_up(offset + t.data.len() as u64, alignment);
        }
        pad_to(&mut out, alignment);
        let data_start = out.len() as u64;
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            let end = out.len() as u64 - data_start;
            out.resize((data_start + align_up(end, alignment)) as usize, 0);
        }
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|e| EngineError::io(path, e))
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = align_up(out.len() as u64, alignment) as usize;
    out.resize(len, 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The value's payload (without its leading type id).
fn put_value(out: &mut Vec<u8>, key: &str, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => put_u32(out, *x),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => put_u64(out, *x),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            let elem_type = items.first().map_or(0, value_type_id);
            if let Some(bad) = items.iter().find(|x| value_type_id(x) != elem_type) {
                return Err(invalid(format!(
                    "metadata `{key}`: array mixes type {elem_type} with {bad:?}"
                )));
            }
            put_u32(out, elem_type);
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    fn le64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    fn s(text: &str) -> Vec<u8> {
        [le64(text.len() as u64), text.as_bytes().to_vec()].concat()
    }

    /// One string metadata entry plus one 2×3 F32 tensor, checked byte by byte.
    #[test]
    fn byte_layout_matches_hand_computed_file() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", GgufValue::String("llama".into()));
        let vals = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        w.add_f32_tensor("w", &[3, 2], &vals).unwrap();
        let bytes = w.to_bytes().unwrap();

        let mut expected = Vec::new();
        expected.extend_from_slice(b"GGUF"); // 0..4
        expected.extend(le32(3)); // 4..8 version
        expected.extend(le64(1)); // 8..16 tensor count
        expected.extend(le64(2)); // 16..24 kv count (alignment is added first)
        expected.extend(s("general.alignment")); // 24..49 (8 + 17)
        expected.extend(le32(4)); // 49..53 type u32
        expected.extend(le32(32)); // 53..57
        expected.extend(s("general.architecture")); // 57..85 (8 + 20)
        expected.extend(le32(8)); // 85..89 type string
        expected.extend(s("llama")); // 89..102 (8 + 5)
        expected.extend(s("w")); // 102..111 tensor name
        expected.extend(le32(2)); // 111..115 n_dims
        expected.extend(le64(3)); // 115..123 ne0 (columns)
        expected.extend(le64(2)); // 123..131 ne1 (rows)
        expected.extend(le32(0)); // 131..135 type F32
        expected.extend(le64(0)); // 135..143 offset
        assert_eq!(expected.len(), 143);
        expected.extend([0u8; 17]); // pad to 160 = 5 × 32
        for v in vals {
            expected.extend(v.to_le_bytes()); // 160..184
        }
        expected.extend([0u8; 8]); // tensor padded to 32 bytes: file ends at 192
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 192);
    }

    #[test]
    fn every_value_kind_is_encoded_with_its_type_id() {
        let cases: Vec<(GgufValue, u32, Vec<u8>)> = vec![
            (GgufValue::U8(7), 0, vec![7]),
            (GgufValue::I8(-2), 1, vec![0xfe]),
            (GgufValue::U16(0x1234), 2, vec![0x34, 0x12]),
            (GgufValue::I16(-1), 3, vec![0xff, 0xff]),
            (GgufValue::U32(5), 4, le32(5)),
            (GgufValue::I32(-5), 5, (-5i32).to_le_bytes().to_vec()),
            (GgufValue::F32(1.5), 6, 1.5f32.to_le_bytes().to_vec()),
            (GgufValue::Bool(true), 7, vec![1]),
            (GgufValue::String("hé".into()), 8, s("hé")),
            (GgufValue::U64(1 << 40), 10, le64(1 << 40)),
            (GgufValue::I64(-3), 11, (-3i64).to_le_bytes().to_vec()),
            (GgufValue::F64(0.25), 12, 0.25f64.to_le_bytes().to_vec()),
            (
                GgufValue::Array(vec![st("a b"), st("c")]),
                9,
                [le32(8), le64(2), s("a b"), s("c")].concat(),
            ),
            (
                // nested: array of arrays of i32
                GgufValue::Array(vec![
                    GgufValue::Array(vec![GgufValue::I32(1)]),
                    GgufValue::Array(vec![]),
                ]),
                9,
                [
                    le32(9),
                    le64(2),
                    le32(5),
                    le64(1),
                    le32(1),
                    le32(0),
                    le64(0),
                ]
                .concat(),
            ),
        ];
        for (value, type_id, payload) in cases {
            let mut w = GgufWriter::new();
            w.add_metadata("k", value.clone());
            let bytes = w.to_bytes().unwrap();
            // header (24) + alignment entry (8+17+4+4 = 33) then our entry.
            let entry = [s("k"), le32(type_id), payload].concat();
            assert_eq!(&bytes[57..57 + entry.len()], &entry[..], "{value:?}");
            // No tensors: the file ends at the next multiple of 32.
            assert_eq!(bytes.len() % 32, 0);
            assert!(bytes.len() - (57 + entry.len()) < 32);
        }
    }

    fn st(text: &str) -> GgufValue {
        GgufValue::String(text.to_string())
    }

    #[test]
    fn tensors_are_aligned_and_offsets_relative_to_data_start() {
        let mut w = GgufWriter::new();
        w.set_alignment(64).unwrap();
        w.add_tensor("a", &[5], DType::F32, vec![1; 20]).unwrap();
        w.add_tensor("b", &[4, 2], DType::F16, vec![2; 16]).unwrap();
        w.add_tensor("c", &[32, 1], DType::Q8_0, vec![3; 34])
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        // Directory: each tensor's offset field is the last 8 bytes of its entry.
        let find = |needle: &[u8]| {
            bytes
                .windows(needle.len())
                .position(|x| x == needle)
                .unwrap()
        };
        let off = |name: &str, ndims: usize| {
            let at = find(&s(name)) + 8 + name.len() + 4 + 8 * ndims + 4;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        assert_eq!(off("a", 1), 0);
        assert_eq!(off("b", 2), 64);
        assert_eq!(off("c", 2), 128);
        let data_start = bytes.len() - 192;
        assert_eq!(data_start % 64, 0);
        assert_eq!(&bytes[data_start..data_start + 20], &[1; 20]);
        assert_eq!(&bytes[data_start + 20..data_start + 64], &[0; 44]);
        assert_eq!(&bytes[data_start + 64..data_start + 80], &[2; 16]);
        assert_eq!(&bytes[data_start + 128..data_start + 162], &[3; 34]);
        // The explicit alignment replaced the default: only one entry, value 64.
        assert_eq!(find(&s(ALIGNMENT_KEY)), 24);
        assert_eq!(bytes[49..57], [le32(4), le32(64)].concat()[..]);
    }

    #[test]
    fn metadata_key_is_replaced_in_place() {
        let mut w = GgufWriter::new();
        w.add_metadata("x", GgufValue::U8(1));
        w.add_metadata("y", GgufValue::U8(2));
        w.add_metadata("x", GgufValue::U8(3));
        let bytes = w.to_bytes().unwrap();
        assert_eq!(bytes[16..24], le64(3)[..]); // alignment, x, y
        let tail = [s("x"), le32(0), vec![3], s("y"), le32(0), vec![2]].concat();
        assert_eq!(&bytes[57..57 + tail.len()], &tail[..]);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let mut w = GgufWriter::new();
        assert!(w.set_alignment(24).is_err());
        assert!(w.add_tensor("t", &[3], DType::F32, vec![0; 8]).is_err());
        assert!(w.add_tensor("t", &[16], DType::Q8_0, vec![0; 34]).is_err());
        assert!(w.add_tensor("t", &[0, 2], DType::F32, vec![]).is_err());
        assert!(w
            .add_tensor("t", &[1, 1, 1, 1, 1], DType::F32, vec![0; 4])
            .is_err());
        assert!(w.add_tensor("", &[1], DType::F32, vec![0; 4]).is_err());
        let long = "x".repeat(64);
        assert!(w.add_tensor(long, &[1], DType::F32, vec![0; 4]).is_err());
        assert!(w
            .add_tensor("t", &[u64::MAX, 2], DType::F32, vec![0; 4])
            .is_err());
        w.add_tensor("t", &[1], DType::F32, vec![0; 4]).unwrap();
        assert!(w.add_tensor("t", &[1], DType::F32, vec![0; 4]).is_err());

        let mut mixed = GgufWriter::new();
        mixed.add_metadata(
            "m",
            GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]),
        );
        assert!(mixed.to_bytes().is_err());

        let mut bad_align = GgufWriter::new();
        bad_align.add_metadata(ALIGNMENT_KEY, GgufValue::U64(32));
        assert!(bad_align.to_bytes().is_err());
    }

    #[test]
    fn write_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let mut w = GgufWriter::new();
        w.add_f32_tensor("v", &[2], &[1.0, -1.0]).unwrap();
        w.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes().unwrap());
        assert!(w.write(&dir.path().join("no/such/dir.gguf")).is_err());
    }

    /// Writer → reader round trip. Ignored until `GgufFile::open` (helper A) is on
    /// main; the lead un-ignores it after merging.
    #[test]
    fn round_trip_through_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.gguf");
        let mut w = GgufWriter::new();
        let meta: Vec<(&str, GgufValue)> = vec![
            ("general.architecture", st("llama")),
            ("u8", GgufValue::U8(1)),
            ("i8", GgufValue::I8(-1)),
            ("u16", GgufValue::U16(2)),
            ("i16", GgufValue::I16(-2)),
            ("u32", GgufValue::U32(3)),
            ("i32", GgufValue::I32(-3)),
            ("u64", GgufValue::U64(4)),
            ("i64", GgufValue::I64(-4)),
            ("f32", GgufValue::F32(0.5)),
            ("f64", GgufValue::F64(-0.25)),
            ("bool", GgufValue::Bool(true)),
            ("strs", GgufValue::Array(vec![st("a"), st("Ġb c")])),
            ("empty", GgufValue::Array(vec![])),
        ];
        for (k, v) in &meta {
            w.add_metadata(*k, v.clone());
        }
        let m: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        w.add_f32_tensor("m", &[3, 2], &m).unwrap();
        w.add_f32_tensor("v", &[5], &[1.0; 5]).unwrap();
        w.write(&path).unwrap();

        let f = crate::gguf::GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get(ALIGNMENT_KEY), Some(&GgufValue::U32(32)));
        assert_eq!(f.tensors.len(), 2);
        assert_eq!(f.tensor_info("m").unwrap().shape, vec![3, 2]);
        assert_eq!(f.tensor_info("v").unwrap().offset, 32);
        let mq = f.matrix("m").unwrap();
        assert_eq!((mq.rows, mq.cols), (2, 3));
        assert_eq!(mq.to_f32(), m);
        assert_eq!(f.tensor_f32("v").unwrap(), vec![1.0; 5]);
    }
}
