//! The CUDA backend's paged attention: the per-step tables (each row's position
//! and block table) and the launch of `paged_attention_bf16` (kernels.cu), one
//! thread block per (row, query head).

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::backend::{CudaBackend, DevBuf, DevKv};
use crate::backend::AttnSeq;

/// Warps per (row, head) block of the attention kernel.
const ATTN_WARPS: u32 = 4;
/// Largest head_dim the attention kernel holds in registers (`ATTN_MAX_PER_LANE`).
const MAX_HEAD_DIM: usize = 256;

/// Per-row attention tables: `[row_pos; rows] ++ [row_table; rows] ++ block tables`.
fn attention_tables(seqs: &[AttnSeq], rows: usize) -> Option<Vec<u32>> {
    let mut pos = vec![u32::MAX; rows];
    let mut table = vec![0u32; rows];
    let mut blocks = Vec::new();
    for s in seqs {
        let start = (2 * rows + blocks.len()) as u32;
        blocks.extend(s.block_table.iter().map(|b| b.0));
        for i in 0..s.len {
            let r = s.row_start + i;
            *pos.get_mut(r)? = (s.pos_start + i) as u32;
            table[r] = start;
        }
    }
    if pos.contains(&u32::MAX) {
        return None;
    }
    pos.extend(table);
    pos.extend(blocks);
    Some(pos)
}

impl CudaBackend {
    /// `Backend::attention` on the device.
    pub(super) fn paged_attention(
        &self,
        q: &DevBuf,
        kv: &DevKv,
        layer: usize,
        seqs: &[AttnSeq],
        n_heads: usize,
        out: &mut DevBuf,
    ) {
        let (Some(q), Some(o)) = (q.data.as_ref(), out.data.as_mut()) else {
            return;
        };
        let l = kv.layout;
        let hd = l.head_dim;
        let rows = q.len() / (n_heads * hd).max(1);
        if !self.ensure(
            hd > 0
                && hd <= MAX_HEAD_DIM
                && n_heads.is_multiple_of(l.num_kv_heads.max(1))
                && o.len() >= rows * n_heads * hd,
            || {
                format!(
                    "attention: head_dim {hd}, {n_heads} heads, {} kv heads",
                    l.num_kv_heads
                )
            },
        ) {
            return;
        }
        let Some(host) = attention_tables(seqs, rows) else {
            return self.fail("attention: a batch row belongs to no sequence".into());
        };
        let Ok(mut t) = self.tables.lock() else {
            return;
        };
        let t = &mut *t;
        if !self.cached_upload(&mut t.attn, &mut t.attn_dev, host) {
            return;
        }
        let Some(tab) = t.attn_dev.as_ref() else {
            return;
        };
        let row_pos = tab.slice(0..rows);
        let row_table = tab.slice(rows..2 * rows);
        let blocks = tab.slice(0..tab.len());
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, n_heads as u32, 1),
            block_dim: (32 * ATTN_WARPS, 1, 1),
            shared_mem_bytes: ATTN_WARPS * (hd as u32 + 2) * 4,
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let ints = [
            n_heads as i32,
            l.num_kv_heads as i32,
            hd as i32,
            l.block_size as i32,
            l.num_layers as i32,
            layer as i32,
        ];
        launch!(self, self.k.attention, cfg;
            q, &kv.data, o, &row_pos, &row_table, &blocks,
            &ints[0], &ints[1], &ints[2], &ints[3], &ints[4], &ints[5], &scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockId;

    fn seq(row_start: usize, len: usize, pos_start: usize, blocks: &[u32]) -> AttnSeq {
        AttnSeq {
            row_start,
            len,
            pos_start,
            block_table: blocks.iter().map(|&b| BlockId(b)).collect(),
        }
    }

    #[test]
    fn attention_tables_cover_every_row() {
        // A prefill of 3 rows at positions 5..8 and a decode row at position 20.
        let t = attention_tables(&[seq(0, 3, 5, &[7]), seq(3, 1, 20, &[1, 2])], 4)
            .expect("all rows covered");
        let (pos, rest) = t.split_at(4);
        let (table, blocks) = rest.split_at(4);
        assert_eq!(pos, &[5, 6, 7, 20]);
        assert_eq!(table, &[8, 8, 8, 9], "offsets into the whole table");
        assert_eq!(blocks, &[7, 1, 2]);
        assert_eq!(t[table[3] as usize..], [1, 2]);
        // A row that no sequence covers is refused, not attended with garbage.
        assert!(attention_tables(&[seq(0, 1, 0, &[0])], 2).is_none());
        assert!(attention_tables(&[seq(1, 2, 0, &[0])], 2).is_none());
    }
}
