//! Pre-faulting memory-mapped model files: reads one byte per page, in file order,
//! so that the weights are resident before the first request (first-token latency
//! then measures compute, not disk), with an optional progress line on stderr.
//!
//! Invariant: only reads; never fails (a file that cannot be advised is still
//! read). Progress is one `\r`-updated line, finished with a newline.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::Mmap;

/// Stride of the page walk (the smallest common page size).
const PAGE: usize = 4096;
/// Bytes touched between progress checks.
const CHUNK: usize = 8 << 20;
/// Below this total, no progress line is printed even when asked.
const MIN_PROGRESS_BYTES: usize = 16 << 20;
/// Minimum time between progress updates.
const UPDATE_EVERY: Duration = Duration::from_millis(200);

/// Touches every page of `files`. Returns a checksum of the bytes read (so the
/// reads cannot be optimized away; also handy in tests).
pub fn prefault(files: &[(PathBuf, Arc<Mmap>)], show_progress: bool) -> u64 {
    let total: usize = files.iter().map(|(_, m)| m.len()).sum();
    let show = show_progress && total >= MIN_PROGRESS_BYTES;
    let start = Instant::now();
    let mut last = start;
    let mut done = 0usize;
    let mut sum = 0u64;
    for (path, map) in files {
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for chunk in map.chunks(CHUNK) {
            sum = touch_pages(chunk, sum);
            done += chunk.len();
            if show && last.elapsed() >= UPDATE_EVERY {
                last = Instant::now();
                progress_line(&label, done, total, start.elapsed(), false);
            }
        }
        if show {
            progress_line(&label, done, total, start.elapsed(), done == total);
        }
    }
    std::hint::black_box(sum)
}

fn touch_pages(bytes: &[u8], mut sum: u64) -> u64 {
    for page in bytes.chunks(PAGE) {
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(page[0]));
    }
    std::hint::black_box(sum)
}

fn progress_line(label: &str, done: usize, total: usize, elapsed: Duration, finished: bool) {
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let secs = elapsed.as_secs_f64().max(1e-6);
    let mb = |b: usize| b as f64 / 1e6;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\rloading {label}: {pct:5.1}% ({:.0} of {:.0} MB, {:.0} MB/s)",
        mb(done),
        mb(total),
        mb(done) / secs
    );
    if finished {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_every_page_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w.bin");
        // 3 pages and a bit: first bytes of the pages are 1, 2, 3, 4.
        let mut bytes = vec![0u8; 3 * PAGE + 10];
        for (i, b) in bytes.iter_mut().enumerate() {
            if i % PAGE == 0 {
                *b = (i / PAGE + 1) as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let map = crate::storage::map_file(&path).unwrap();
        let sum = prefault(&[(path, map)], true);
        let want = [1u64, 2, 3, 4]
            .iter()
            .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(b));
        assert_eq!(sum, want);
    }
}
