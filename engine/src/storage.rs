//! Byte storage for weights: either a window of a memory-mapped file (zero copy) or
//! an owned, 8-byte aligned buffer. `bytes()` is always the exact tensor bytes.
//!
//! This is the one place that memory-maps files (an FFI-like operation), hence the
//! one `unsafe` block below.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::{EngineError, Result};

#[derive(Clone)]
pub enum Storage {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    /// 8-byte aligned owned bytes (backed by u64 words); `len` is the byte length.
    Owned { words: Arc<Vec<u64>>, len: usize },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped { offset, len, .. } => write!(f, "Mapped({offset}+{len})"),
            Storage::Owned { len, .. } => write!(f, "Owned({len})"),
        }
    }
}

/// Memory-maps a whole file read-only.
pub fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    // SAFETY: the map is read-only; model files are not expected to be modified while
    // served. If another process truncates the file, reads may fault (same contract as
    // every mmap-based model loader).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
    Ok(Arc::new(map))
}

impl Storage {
    /// A window of a mapped file; fails if the window is out of bounds.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Storage> {
        let end = offset.checked_add(len)?;
        (end <= map.len()).then_some(Storage::Mapped { map, offset, len })
    }

    pub fn from_bytes(bytes: &[u8]) -> Storage {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned {
            words: Arc::new(words),
            len: bytes.len(),
        }
    }

    pub fn from_f32(values: &[f32]) -> Storage {
        Storage::from_bytes(bytemuck::cast_slice(values))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Mapped { len, .. } | Storage::Owned { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns storage whose bytes are 4-byte aligned (copies only if needed).
    pub fn aligned4(self) -> Storage {
        if (self.bytes().as_ptr() as usize).is_multiple_of(4) {
            self
        } else {
            Storage::from_bytes(self.bytes())
        }
    }
}
