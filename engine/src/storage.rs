//! Byte storage for weights: a window of a memory-mapped file (zero copy), an
//! owned, 8-byte aligned buffer, or a window of a read-only arena of anonymous
//! memory ([`Arena`]) that a backend filled with its own copies of many tensors.
//! `bytes()` is always the exact tensor bytes.
//!
//! The arena exists for huge pages: a decode step streams every weight once, and
//! with 4 KiB pages that is a TLB miss every 4 KiB (25,000 per step for a 100 MB
//! model). Tensors of a few hundred KB cannot each get a 2 MiB page; one arena
//! for all of them, aligned to 2 MiB and advised for huge pages, can.
//!
//! This is the one place that memory-maps files (an FFI-like operation), hence its
//! two `unsafe` blocks: the map itself, and dropping pages no longer needed from it.

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
    /// A window of a finished [`Arena`] (anonymous memory: its pages are never
    /// released, unlike a file map's, since they cannot be read back).
    Arena {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped { offset, len, .. } => write!(f, "Mapped({offset}+{len})"),
            Storage::Owned { len, .. } => write!(f, "Owned({len})"),
            Storage::Arena { offset, len, .. } => write!(f, "Arena({offset}+{len})"),
        }
    }
}

/// Huge page size the arena aligns to (x86-64 and most arm64 kernels).
const HUGE_PAGE: usize = 2 << 20;
/// Alignment of each region inside the arena (a cache line).
const REGION_ALIGN: usize = 64;

/// Anonymous memory for the copies of many tensors, filled region by region and
/// then frozen read-only ([`Arena::finish`]); its windows become
/// [`Storage::Arena`]. The first region starts on a 2 MiB boundary and the map
/// is advised for transparent huge pages (a hint: where the kernel has them off,
/// it is ordinary memory). Pages are only resident once written, so sizing it
/// by the sum of the regions costs nothing more than the copies themselves.
pub struct Arena {
    map: memmap2::MmapMut,
    /// Offset of the next region (the first is on the 2 MiB boundary).
    next: usize,
}

impl Arena {
    /// An arena with room for regions of `lens` bytes (each rounded up to 64).
    pub fn new(lens: impl IntoIterator<Item = usize>) -> Result<Arena> {
        let total: usize = lens
            .into_iter()
            .map(|l| l.next_multiple_of(REGION_ALIGN))
            .sum();
        let map = memmap2::MmapMut::map_anon(total + HUGE_PAGE).map_err(|e| {
            EngineError::Device(format!("cannot reserve {total} bytes for the weights: {e}"))
        })?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        Ok(Arena { map, next: start })
    }

    /// The next region of `len` bytes: its offset (for [`Arena::window`]) and its
    /// bytes to fill (zeroed). Panics if the arena's room is exceeded (a caller
    /// that asks for more than it declared: a programming error).
    pub fn region(&mut self, len: usize) -> (usize, &mut [u8]) {
        let at = self.next;
        self.next += len.next_multiple_of(REGION_ALIGN);
        (at, &mut self.map[at..at + len])
    }

    /// Freezes the filled arena read-only.
    pub fn finish(self) -> Result<Arc<Mmap>> {
        let map = self
            .map
            .make_read_only()
            .map_err(|e| EngineError::Device(format!("cannot seal the weights' memory: {e}")))?;
        Ok(Arc::new(map))
    }

    /// The storage of the region at `offset` (from [`Arena::region`]) of a
    /// finished arena.
    pub fn window(map: &Arc<Mmap>, offset: usize, len: usize) -> Storage {
        Storage::Arena {
            map: map.clone(),
            offset,
            len,
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
        Storage::filled(bytes.len(), |out| out.copy_from_slice(bytes))
    }

    /// Owned storage of `len` bytes (zeroed), written in place by `fill`.
    pub fn filled(len: usize, fill: impl FnOnce(&mut [u8])) -> Storage {
        let mut words = vec![0u64; len.div_ceil(8)];
        fill(&mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len]);
        Storage::Owned {
            words: Arc::new(words),
            len,
        }
    }

    /// Drops this window's whole pages from the process's resident memory, for a
    /// mapped tensor that was copied (permuted, realigned) and will not be read
    /// again: without this, its pages touched by the copy stay resident beside the
    /// copy and count twice. Harmless if it is read again (the pages fault back
    /// in from the file). A no-op for owned storage; best effort (errors ignored).
    pub fn release_pages(&self) {
        self.release_range(0, self.len());
    }

    /// [`Storage::release_pages`] for bytes `start..start + len` of this window
    /// (clamped to it): the whole pages inside that range.
    pub fn release_range(&self, start: usize, len: usize) {
        let Storage::Mapped {
            map,
            offset,
            len: window,
        } = self
        else {
            return;
        };
        let start = start.min(*window);
        let (from, len) = (offset + start, len.min(*window - start));
        let page = page_size();
        let base = map.as_ptr() as usize;
        let start = (base + from).next_multiple_of(page) - base;
        let end = (base + from + len) / page * page - base;
        if end > start {
            // SAFETY: the map is read-only and private, so no page of it holds data
            // that differs from the file: MADV_DONTNEED only unmaps pages, and any
            // later read refaults the same bytes from the file (the contract of
            // `map_file`: the file is not modified while served). The range lies
            // inside the map (whole pages within this window).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    pub fn from_f32(values: &[f32]) -> Storage {
        Storage::from_bytes(bytemuck::cast_slice(values))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
            Storage::Arena { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Mapped { len, .. }
            | Storage::Owned { len, .. }
            | Storage::Arena { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns storage whose bytes are 4-byte aligned (copies only if needed, and
    /// then releases the mapped original's pages).
    pub fn aligned4(self) -> Storage {
        if (self.bytes().as_ptr() as usize).is_multiple_of(4) {
            self
        } else {
            let copy = Storage::from_bytes(self.bytes());
            self.release_pages();
            copy
        }
    }
}

/// The kernel's page size, read once from /proc/self/smaps (4 KiB where it cannot
/// be read: a wrong guess only makes `release_pages` a refused no-op).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("KernelPageSize:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            })
            .map_or(4096, |kb| kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let bytes: Vec<u8> = (0..5 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let map = map_file(&path).unwrap();
        // An unaligned window spanning whole pages, and one smaller than a page.
        for (offset, len) in [(1000, 3 * 4096 + 500), (5, 100), (0, bytes.len())] {
            let s = Storage::mapped(map.clone(), offset, len).unwrap();
            let before = s.bytes().to_vec();
            s.release_pages();
            assert_eq!(s.bytes(), &before[..], "window {offset}+{len}");
            assert_eq!(s.bytes(), &bytes[offset..offset + len]);
            // Part of the window, and ranges past its end (clamped).
            s.release_range(len / 3, len / 2);
            s.release_range(len, 10);
            s.release_range(len / 2, usize::MAX);
            assert_eq!(
                s.bytes(),
                &bytes[offset..offset + len],
                "window {offset}+{len}"
            );
        }
        // Owned storage: nothing to release, bytes unchanged.
        let owned = Storage::from_bytes(&bytes[..10]);
        owned.release_pages();
        assert_eq!(owned.bytes(), &bytes[..10]);
    }
}
