//! The GGUF byte parser: a bounds-checked cursor over the mapped file. Every count
//! read from the file is checked against the bytes that remain before it drives an
//! allocation or a loop; nesting of arrays is limited; no arithmetic can overflow.

use std::collections::HashSet;
use std::path::Path;

use super::{GgufMetadata, GgufTensorInfo, GgufValue};
use crate::quant::DType;
use crate::EngineError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array-of-array nesting accepted.
const MAX_DEPTH: u32 = 8;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// Why a file could not be parsed (path attached by the caller).
#[derive(Debug)]
pub enum ParseError {
    Bad(String),
    UnsupportedType { tensor: String, id: u32 },
}

impl ParseError {
    pub fn into_error(self, path: &Path) -> EngineError {
        match self {
            ParseError::Bad(reason) => EngineError::bad_file(path, reason),
            ParseError::UnsupportedType { tensor, id } => EngineError::UnsupportedDType {
                tensor,
                dtype: format!("ggml type id {id}"),
            },
        }
    }
}

type PResult<T> = Result<T, ParseError>;

fn bad<T>(msg: impl Into<String>) -> PResult<T> {
    Err(ParseError::Bad(msg.into()))
}

pub struct Parsed {
    pub version: u32,
    pub metadata: GgufMetadata,
    pub tensors: Vec<GgufTensorInfo>,
    pub data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        if n > self.remaining() {
            return bad(format!(
                "truncated: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be satisfiable with at least `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> PResult<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = (self.remaining() / min_size.max(1)) as u64;
        if n > max {
            return bad(format!(
                "{what} {n} at offset {at} is impossible: only {} bytes remain",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        let len = self.count(1, &format!("{what} length"))?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => bad(format!("{what} at offset {at} is not valid UTF-8")),
        }
    }

    fn value(&mut self, ty: u32, depth: u32, key: &str) -> PResult<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return bad(format!("metadata `{key}`: invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string(&format!("metadata `{key}` string"))?),
            9 => {
                if depth >= MAX_DEPTH {
                    return bad(format!("metadata `{key}`: arrays nested too deeply"));
                }
                let ety = self.u32(key)?;
                let min = min_value_size(ety).ok_or_else(|| {
                    ParseError::Bad(format!(
                        "metadata `{key}`: unknown array element type {ety}"
                    ))
                })?;
                let n = self.count(min, &format!("metadata `{key}` array count"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1, key)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return bad(format!("metadata `{key}`: unknown value type {ty}")),
        })
    }
}

/// Smallest encoded size of a value of type `ty` (None: unknown type).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

pub fn parse(buf: &[u8]) -> PResult<Parsed> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c
        .take(4, "magic")
        .map_err(|_| ParseError::Bad("not a GGUF file: too short".into()))?;
    if magic != MAGIC {
        return bad("not a GGUF file: bad magic");
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return bad("GGUF version 1 is not supported (re-convert the model)"),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return bad("big-endian GGUF files are not supported")
        }
        v => return bad(format!("unsupported GGUF version {v}")),
    }
    // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes.
    let n_tensors = c.count(32, "tensor count")?;
    // A metadata entry takes at least 8 (key) + 4 + 1 bytes.
    let n_kv = c.count(13, "metadata count")?;

    let mut metadata = GgufMetadata::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("metadata `{key}` type"))?;
        let value = c.value(ty, 0, &key)?;
        if metadata.insert(key.clone(), value).is_some() {
            return bad(format!("duplicate metadata key `{key}`"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return bad(format!("general.alignment {v:?} is not a power of two")),
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor #{i} name"))?;
        let n_dims = c.u32(&format!("tensor `{name}` rank"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return bad(format!(
                "tensor `{name}` has rank {n_dims} (1..={MAX_DIMS} allowed)"
            ));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64(&format!("tensor `{name}` shape"))?);
        }
        let ty = c.u32(&format!("tensor `{name}` type"))?;
        let offset = c.u64(&format!("tensor `{name}` offset"))?;
        let dtype = DType::from_ggml(ty).ok_or_else(|| ParseError::UnsupportedType {
            tensor: name.clone(),
            id: ty,
        })?;
        if !names.insert(name.clone()) {
            return bad(format!("duplicate tensor `{name}`"));
        }
        tensors.push((
            GgufTensorInfo {
                name,
                shape,
                dtype,
                offset,
            },
            i,
        ));
    }

    let data_start = (c.pos as u64).next_multiple_of(alignment);
    let data_len = (buf.len() as u64).saturating_sub(data_start);
    if !tensors.is_empty() && data_start > buf.len() as u64 {
        return bad("truncated: the tensor data section is missing");
    }
    let mut out = Vec::with_capacity(tensors.len());
    for (t, _) in tensors {
        check_tensor(&t, alignment, data_len)?;
        out.push(t);
    }
    Ok(Parsed {
        version,
        metadata,
        tensors: out,
        data_start: data_start as usize,
    })
}

fn check_tensor(t: &GgufTensorInfo, alignment: u64, data_len: u64) -> PResult<()> {
    let name = &t.name;
    let mut n: u64 = 1;
    for &d in &t.shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| {
                ParseError::Bad(format!("tensor `{name}` shape {:?} overflows", t.shape))
            })?;
    }
    let bl = t.dtype.block_len() as u64;
    if !t.shape[0].is_multiple_of(bl) {
        return bad(format!(
            "tensor `{name}`: row length {} is not a multiple of the {} block length {bl}",
            t.shape[0],
            t.dtype.name()
        ));
    }
    let bytes = (n / bl)
        .checked_mul(t.dtype.block_bytes() as u64)
        .ok_or_else(|| ParseError::Bad(format!("tensor `{name}` size overflows")))?;
    if !t.offset.is_multiple_of(alignment) {
        return bad(format!(
            "tensor `{name}` offset {} is not aligned to {alignment}",
            t.offset
        ));
    }
    match t.offset.checked_add(bytes) {
        Some(end) if end <= data_len => Ok(()),
        _ => bad(format!(
            "truncated: tensor `{name}` ({bytes} bytes at data offset {}) extends past the end of the file (data section is {data_len} bytes)",
            t.offset
        )),
    }
}
