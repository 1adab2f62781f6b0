//! GGML block layouts (byte offsets inside one block) and small helpers to read the
//! packed fields. All multi-byte fields are little-endian and unaligned.
//!
//! 32-value blocks:
//! - Q4_0 (18 B): f16 d | u8 qs[16]; value j<16 = lo nibble of qs[j], j≥16 = hi
//!   nibble of qs[j-16]; x = d·(q − 8).
//! - Q4_1 (20 B): f16 d | f16 m | u8 qs[16]; x = d·q + m.
//! - Q5_0 (22 B): f16 d | u32 qh | u8 qs[16]; bit j of qh is bit 4 of value j;
//!   x = d·(q − 16).
//! - Q5_1 (24 B): f16 d | f16 m | u32 qh | u8 qs[16]; x = d·q + m.
//! - Q8_0 (34 B): f16 d | i8 qs[32]; x = d·q.
//! - Q8_1 (36 B): f16 d | f16 s (= d·Σq) | i8 qs[32]; x = d·q.
//!
//! 256-value super-blocks (QK_K):
//! - Q2_K (84 B): u8 scales[16] (lo 4 bits scale, hi 4 bits min) | u8 qs[64] |
//!   f16 d | f16 dmin; 16 sub-blocks of 16; x = d·sc·q − dmin·m, q 2 bits.
//! - Q3_K (110 B): u8 hmask[32] | u8 qs[64] | u8 scales[12] (16 × 6-bit, offset 32)
//!   | f16 d; x = d·(sc−32)·(q − 4·(1−h)).
//! - Q4_K (144 B): f16 d | f16 dmin | u8 scales[12] (8 × 6-bit scale + 8 × 6-bit min)
//!   | u8 qs[128]; 8 sub-blocks of 32; x = d·sc·q − dmin·m.
//! - Q5_K (176 B): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128].
//! - Q6_K (210 B): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d; x = d·sc·(q − 32).
//! - Q8_K (292 B): f32 d | i8 qs[256] | i16 bsums[16]; x = d·q.

/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// Values per small block (Q4_0 .. Q8_1).
pub const QK: usize = 32;

#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

#[inline(always)]
pub fn bf16_at(b: &[u8], off: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[off], b[off + 1]]) as u32) << 16)
}

#[inline(always)]
pub fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Rounds an f32 through f16 (what a stored f16 scale will read back as).
#[inline(always)]
pub fn via_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Scale and min (6 bits each) of sub-block `j` (0..8) of a Q4_K / Q5_K block from
/// its 12 packed bytes: sub-blocks 0..4 keep their low 6 bits in bytes j (scale) and
/// j+4 (min); sub-blocks 4..8 keep 4 low bits in byte j+4 and their top 2 bits in
/// the top bits of bytes j-4 (scale) and j (min).
#[inline(always)]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Packs 8 (scale, min) 6-bit pairs into the 12-byte Q4_K/Q5_K layout.
pub fn pack_scale_min_k4(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j].min(63), mn[j].min(63));
        if j < 4 {
            s[j] |= ls;
            s[j + 4] |= lm;
        } else {
            s[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// The 16 signed 6-bit scales of a Q3_K block (already offset by −32).
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}

/// Packs 16 unsigned 6-bit Q3_K scales (already offset by +32) into 12 bytes.
pub fn pack_q3k_scales(l: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &v) in l.iter().enumerate() {
        let v = v.min(63);
        if j < 8 {
            s[j] |= v & 0x0f;
        } else {
            s[j - 8] |= (v & 0x0f) << 4;
        }
        s[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    s
}
