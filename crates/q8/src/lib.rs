//! 8-bit matrix kernels for the embedded LLM's linear layers (GGML's Q8_0 format: blocks of 32
//! signed bytes sharing one f16 scale), and 4-bit weights in GGML's Q4_1 format (blocks of 32
//! nibbles with an f16 scale and an f16 minimum) against the same 8-bit activations.
//!
//! `y = x · Wᵀ` for `m` activation rows against a weight matrix of `rows × cols`: the activations
//! are quantized to Q8_0 per row, then every (activation row, weight row) pair is an integer dot
//! product per block, scaled and summed in f32.
//!
//! Why not candle's own Q8_0 matmul: it computes one dot product at a time, and each is a single
//! chain of dependent fused multiply-adds, so a prompt of many tokens runs at the latency of that
//! chain. Here a tile of 4 weight rows × 2 activation rows is computed at once (8 independent
//! chains, each weight block loaded once for both rows), and the weight rows a thread owns stay
//! in its cache while every activation row passes over them. Each single dot product still does
//! the same operations in the same order as candle's AVX2 kernel, so the results are bit for bit
//! the same (tested in voxd against candle's model), only sooner.
//!
//! Q4_1 weights stay 4-bit: a model shipped in Q4_1 then holds 20 bytes per 32 weights instead of
//! 34 (SmolLM2-135M: 66 MB instead of 113 MB for its layers), and decoding a token, which reads
//! every weight once and is bound by memory bandwidth, reads that much less. The dot product of a
//! Q4_1 block with an 8-bit activation block is `d_w·d_x·Σ q_w·q_x + m_w·s_x`, where `s_x` is
//! the activation block's sum (`d_x·Σ q_x`, rounded to f16 as GGML's Q8_1 stores it); the integer
//! sums are exact, only the order of the float additions differs from GGML's scalar code.
//!
//! The AVX2 path needs the crate built with AVX2 and FMA enabled (voxd's `.cargo/config.toml`
//! targets x86-64-v3); elsewhere a portable loop gives the same sums.

use half::f16;
use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block in a GGUF file: the f16 scale, then 32 signed bytes.
pub const BLOCK_BYTES: usize = 34;

/// One Q8_0 block: `value[i] = qs[i] × d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Block {
    /// The scale, as f16 bits.
    pub d: u16,
    pub qs: [i8; BLOCK],
}

impl Block {
    const ZERO: Block = Block {
        d: 0,
        qs: [0; BLOCK],
    };

    fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

/// Bytes per Q4_1 block in a GGUF file: f16 scale, f16 minimum, 16 bytes of nibbles.
pub const BLOCK_Q4_1_BYTES: usize = 20;

/// One Q4_1 block: `value[j] = (qs[j] & 15) × d + m` and `value[j + 16] = (qs[j] >> 4) × d + m`
/// for `j < 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The minimum, as f16 bits.
    pub m: u16,
    pub qs: [u8; BLOCK / 2],
}

impl BlockQ4_1 {
    fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }

    fn min(&self) -> f32 {
        f16::from_bits(self.m).to_f32()
    }

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.scale(), self.min());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = (q & 15) as f32 * d + m;
            out[j + BLOCK / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

/// A shape that does not fit the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// Quantizes `x` (a multiple of 32 values) into `out` (one block per 32 values): each block's
/// scale is its largest magnitude / 127, each value rounded to the nearest step.
pub fn quantize(x: &[f32], out: &mut [Block]) {
    debug_assert_eq!(x.len(), out.len() * BLOCK);
    for (values, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_bits();
        for (q, &v) in block.qs.iter_mut().zip(values) {
            *q = (v * inverse).round() as i8;
        }
    }
}

/// The values of `blocks`, into `out` (32 per block).
pub fn dequantize(blocks: &[Block], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * BLOCK);
    for (block, values) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = block.scale();
        for (v, &q) in values.iter_mut().zip(&block.qs) {
            *v = q as f32 * d;
        }
    }
}

/// The blocks of a matrix, row-major.
#[derive(Clone, Debug)]
enum Blocks {
    Q8_0(Vec<Block>),
    Q4_1(Vec<BlockQ4_1>),
}

/// A weight matrix of `rows × cols` in Q8_0 or Q4_1, row-major (`cols` a multiple of 32).
#[derive(Clone, Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

impl Matrix {
    fn check(rows: usize, cols: usize) -> Result<usize, ShapeError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(ShapeError(format!(
                "a Q8_0 row needs a multiple of {BLOCK} values, not {cols}"
            )));
        }
        rows.checked_mul(cols / BLOCK)
            .ok_or_else(|| ShapeError(format!("{rows} × {cols} is too large")))
    }

    /// Quantizes `data` (`rows × cols` values, row-major).
    pub fn quantize(rows: usize, cols: usize, data: &[f32]) -> Result<Self, ShapeError> {
        let n = Self::check(rows, cols)?;
        if data.len() != rows * cols {
            return Err(ShapeError(format!(
                "{} values for a {rows} × {cols} matrix",
                data.len()
            )));
        }
        let mut blocks = vec![Block::ZERO; n];
        quantize(data, &mut blocks);
        Ok(Matrix {
            rows,
            cols,
            blocks: Blocks::Q8_0(blocks),
        })
    }

    /// Reads GGUF's Q8_0 bytes (34 per block: f16 scale little-endian, then 32 signed bytes).
    pub fn from_gguf_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, ShapeError> {
        let n = Self::check(rows, cols)?;
        if bytes.len() != n * BLOCK_BYTES {
            return Err(ShapeError(format!(
                "{} bytes for a {rows} × {cols} Q8_0 matrix ({} expected)",
                bytes.len(),
                n * BLOCK_BYTES
            )));
        }
        let blocks = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|b| {
                let mut qs = [0i8; BLOCK];
                for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                    *q = byte as i8;
                }
                Block {
                    d: u16::from_le_bytes([b[0], b[1]]),
                    qs,
                }
            })
            .collect();
        Ok(Matrix {
            rows,
            cols,
            blocks: Blocks::Q8_0(blocks),
        })
    }

    /// Reads GGUF's Q4_1 bytes (20 per block: f16 scale, f16 minimum, 16 bytes of nibbles, low
    /// nibbles first).
    pub fn from_gguf_q4_1_bytes(
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, ShapeError> {
        let n = Self::check(rows, cols)?;
        if bytes.len() != n * BLOCK_Q4_1_BYTES {
            return Err(ShapeError(format!(
                "{} bytes for a {rows} × {cols} Q4_1 matrix ({} expected)",
                bytes.len(),
                n * BLOCK_Q4_1_BYTES
            )));
        }
        let blocks = bytes
            .chunks_exact(BLOCK_Q4_1_BYTES)
            .map(|b| {
                let mut qs = [0u8; BLOCK / 2];
                qs.copy_from_slice(&b[4..]);
                BlockQ4_1 {
                    d: u16::from_le_bytes([b[0], b[1]]),
                    m: u16::from_le_bytes([b[2], b[3]]),
                    qs,
                }
            })
            .collect();
        Ok(Matrix {
            rows,
            cols,
            blocks: Blocks::Q4_1(blocks),
        })
    }

    /// The weights' format: `"Q8_0"` or `"Q4_1"`.
    pub fn format(&self) -> &'static str {
        match self.blocks {
            Blocks::Q8_0(_) => "Q8_0",
            Blocks::Q4_1(_) => "Q4_1",
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (34 per 32 values in Q8_0, 20 in Q4_1).
    pub fn bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q8_0(b) => b.len() * std::mem::size_of::<Block>(),
            Blocks::Q4_1(b) => b.len() * std::mem::size_of::<BlockQ4_1>(),
        }
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// Row `r`'s values into `out` (`cols` long); false when `r` is out of range.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> bool {
        if r >= self.rows || out.len() != self.cols {
            return false;
        }
        let k = self.blocks_per_row();
        match &self.blocks {
            Blocks::Q8_0(b) => dequantize(&b[r * k..(r + 1) * k], out),
            Blocks::Q4_1(b) => {
                for (block, values) in b[r * k..(r + 1) * k]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                {
                    block.dequantize(values);
                }
            }
        }
        true
    }

    /// `out[i × rows + j] = x_i · w_j` for the `m` rows of `x` (`m × cols`, row-major): the
    /// activations are quantized to Q8_0 first. Runs on rayon's pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), ShapeError> {
        if x.len() != m * self.cols || out.len() != m * self.rows {
            return Err(ShapeError(format!(
                "matmul of {m} × {} activations (given {}) into {} outputs ({} expected)",
                self.cols,
                x.len(),
                out.len(),
                m * self.rows
            )));
        }
        let mut xq = vec![Block::ZERO; m * self.blocks_per_row()];
        quantize(x, &mut xq);
        match &self.blocks {
            Blocks::Q8_0(w) => self.matmul_quantized::<Block>(w, &xq, &[], m, out),
            Blocks::Q4_1(w) => {
                let sums = block_sums(x, &xq);
                self.matmul_quantized::<BlockQ4_1>(w, &xq, &sums, m, out)
            }
        }
        Ok(())
    }

    /// As [`Matrix::matmul`], with the activations already quantized (and, for Q4_1 weights,
    /// each activation block's sum).
    fn matmul_quantized<W: Weight>(
        &self,
        w: &[W],
        xq: &[Block],
        sums: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        let n = self.rows;
        let chunks = n.div_ceil(ROWS_PER_TASK);
        let dst = Dst(out.as_mut_ptr());
        let task = |c: usize| {
            let rows = c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(n);
            // SAFETY: tasks own disjoint column ranges of `out`, which outlives them.
            unsafe { self.columns(w, xq, sums, m, rows, &dst) };
        };
        if m * n * self.blocks_per_row() < SERIAL_BELOW {
            (0..chunks).for_each(task);
        } else {
            (0..chunks).into_par_iter().for_each(task);
        }
    }

    /// Computes output columns `cols` (weight rows) for every activation row.
    ///
    /// # Safety
    /// `dst` must point to `m × self.rows` floats, and no other thread may write these columns.
    unsafe fn columns<W: Weight>(
        &self,
        w: &[W],
        xq: &[Block],
        sums: &[f32],
        m: usize,
        cols: std::ops::Range<usize>,
        dst: &Dst,
    ) {
        let n = self.rows;
        let k = self.blocks_per_row();
        let x_row = |i: usize| X {
            q: &xq[i * k..(i + 1) * k],
            sums: sums.get(i * k..(i + 1) * k).unwrap_or(&[]),
        };
        let w_row = |j: usize| &w[j * k..(j + 1) * k];
        // Q4_1: this task's rows' block minimums as f32, for the `m_w·s_x` sums.
        let mins = W::minimums(&w[cols.start * k..cols.end * k]);
        let min_row = |j: usize| mins.get((j - cols.start) * k..(j - cols.start + 1) * k);
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + TOKENS_PER_TILE).min(m);
            let mut j = cols.start;
            while j < cols.end {
                let r = if cols.end - j >= 4 { 4 } else { 1 };
                let mut i = i0;
                while i < i1 {
                    let c = if i1 - i >= 2 { 2 } else { 1 };
                    let mut sums = [[0f32; 2]; 4];
                    match (r, c) {
                        (4, 2) => W::tile::<4, 2>(
                            [w_row(j), w_row(j + 1), w_row(j + 2), w_row(j + 3)],
                            [x_row(i), x_row(i + 1)],
                            &mut sums,
                        ),
                        (4, _) => W::tile::<4, 1>(
                            [w_row(j), w_row(j + 1), w_row(j + 2), w_row(j + 3)],
                            [x_row(i)],
                            &mut sums,
                        ),
                        (_, 2) => W::tile::<1, 2>([w_row(j)], [x_row(i), x_row(i + 1)], &mut sums),
                        _ => W::tile::<1, 1>([w_row(j)], [x_row(i)], &mut sums),
                    }
                    for (a, row) in sums.iter_mut().enumerate().take(r) {
                        if let Some(m) = min_row(j + a) {
                            for (b, s) in row.iter_mut().enumerate().take(c) {
                                *s += dot(m, x_row(i + b).sums);
                            }
                        }
                        for (b, &s) in row.iter().enumerate().take(c) {
                            // SAFETY: (i + b, j + a) is inside `m × n` and in this task's columns.
                            unsafe { *dst.0.add((i + b) * n + j + a) = s };
                        }
                    }
                    i += c;
                }
                j += r;
            }
            i0 = i1;
        }
    }
}

/// Weight rows per parallel task (their blocks stay in the core's cache).
const ROWS_PER_TASK: usize = 32;
/// Activation rows that pass over a task's weight rows before the next group.
const TOKENS_PER_TILE: usize = 64;
/// Below this many block products (~1 ns each), one thread: the hand-off would cost more than
/// it saves.
const SERIAL_BELOW: usize = 8192;

/// Where the tasks write.
struct Dst(*mut f32);
// SAFETY: the tasks write disjoint elements (see `Matrix::columns`).
unsafe impl Sync for Dst {}

/// One row of quantized activations: its Q8_0 blocks and, for Q4_1 weights, each block's sum.
#[derive(Clone, Copy)]
struct X<'a> {
    q: &'a [Block],
    sums: &'a [f32],
}

/// `s = d·Σq` per activation block, rounded to f16 as GGML's Q8_1 stores it (`d` before its own
/// rounding to f16, as GGML computes it).
fn block_sums(x: &[f32], xq: &[Block]) -> Vec<f32> {
    x.chunks_exact(BLOCK)
        .zip(xq)
        .map(|(values, q)| {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let sum: i32 = q.qs.iter().map(|&v| v as i32).sum();
            f16::from_f32(sum as f32 * d).to_f32()
        })
        .collect()
}

/// `a · b` (equal lengths), in 8 lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = a.chunks_exact(8).zip(b.chunks_exact(8));
    for (x, y) in chunks.by_ref() {
        for l in 0..8 {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    let tail = a.len() / 8 * 8;
    let mut sum: f32 = lanes.iter().sum();
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        sum = x.mul_add(*y, sum);
    }
    sum
}

/// A weight block type with a tile kernel.
trait Weight: Sync + Sized {
    /// Each block's minimum as f32 (Q4_1), or nothing (Q8_0 has none).
    fn minimums(_blocks: &[Self]) -> Vec<f32> {
        Vec::new()
    }

    /// Dot products of `R` weight rows with `C` activation rows into `sums[r][c]`.
    fn tile<const R: usize, const C: usize>(
        w: [&[Self]; R],
        x: [X<'_>; C],
        sums: &mut [[f32; 2]; 4],
    );
}

impl Weight for Block {
    fn tile<const R: usize, const C: usize>(
        w: [&[Self]; R],
        x: [X<'_>; C],
        sums: &mut [[f32; 2]; 4],
    ) {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        {
            // SAFETY: the CPU features are enabled at compile time.
            unsafe { avx2::tile::<R, C>(w, x.map(|x| x.q), sums) }
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        {
            for r in 0..R {
                for c in 0..C {
                    sums[r][c] = w[r]
                        .iter()
                        .zip(x[c].q)
                        .map(|(a, b)| {
                            let i: i32 =
                                a.qs.iter()
                                    .zip(&b.qs)
                                    .map(|(&p, &q)| p as i32 * q as i32)
                                    .sum();
                            i as f32 * (a.scale() * b.scale())
                        })
                        .sum();
                }
            }
        }
    }
}

impl Weight for BlockQ4_1 {
    fn minimums(blocks: &[Self]) -> Vec<f32> {
        blocks.iter().map(|b| b.min()).collect()
    }

    fn tile<const R: usize, const C: usize>(
        w: [&[Self]; R],
        x: [X<'_>; C],
        sums: &mut [[f32; 2]; 4],
    ) {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        {
            // SAFETY: the CPU features are enabled at compile time.
            unsafe { avx2::tile_q4_1::<R, C>(w, x.map(|x| x.q), sums) }
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        {
            for r in 0..R {
                for c in 0..C {
                    sums[r][c] = w[r]
                        .iter()
                        .zip(x[c].q)
                        .map(|(a, b)| {
                            let i: i32 = (0..BLOCK / 2)
                                .map(|j| {
                                    (a.qs[j] & 15) as i32 * b.qs[j] as i32
                                        + (a.qs[j] >> 4) as i32 * b.qs[j + BLOCK / 2] as i32
                                })
                                .sum();
                            i as f32 * (a.scale() * b.scale())
                        })
                        .sum();
                }
            }
        }
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{Block, BlockQ4_1};
    use std::arch::x86_64::*;

    /// Per (weight row, activation row): for each block, the 32 byte products summed in pairs
    /// (|w| × sign-adjusted x, as maddubs needs one unsigned side), widened to i32 lanes, made
    /// float, scaled by both blocks' scales and accumulated with one fused multiply-add in 8
    /// lanes; the lanes are summed at the end.
    #[inline(always)]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        w: [&[Block]; R],
        x: [&[Block]; C],
        sums: &mut [[f32; 2]; 4],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let k = w[0].len();
        for b in 0..k {
            let mut xd = [_mm256_setzero_ps(); C];
            let mut xv = [_mm256_setzero_si256(); C];
            for c in 0..C {
                let blk = x[c].get_unchecked(b);
                xd[c] = _mm256_set1_ps(blk.scale());
                xv[c] = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
            }
            for r in 0..R {
                let blk = w[r].get_unchecked(b);
                let wd = _mm256_set1_ps(blk.scale());
                let wv = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
                let w_abs = _mm256_sign_epi8(wv, wv);
                for c in 0..C {
                    let x_signed = _mm256_sign_epi8(xv[c], wv);
                    let pairs = _mm256_maddubs_epi16(w_abs, x_signed);
                    let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    // The product of the two scales in every lane (the same rounding as one
                    // scalar product).
                    let d = _mm256_mul_ps(wd, xd[c]);
                    acc[r][c] = _mm256_fmadd_ps(d, q, acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                sums[r][c] = hsum(acc[r][c]);
            }
        }
    }

    /// As [`tile`] for Q4_1 weights: the nibbles are unpacked to 32 unsigned bytes (low nibbles
    /// are values 0–15, high nibbles 16–31), multiplied with the signed activations, scaled and
    /// accumulated in 8 lanes. The `m_w·s_x` terms are added by the caller (one short dot
    /// product per row pair, over the blocks' minimums converted once per task).
    #[inline(always)]
    pub(super) unsafe fn tile_q4_1<const R: usize, const C: usize>(
        w: [&[BlockQ4_1]; R],
        x: [&[Block]; C],
        sums: &mut [[f32; 2]; 4],
    ) {
        let ones = _mm256_set1_epi16(1);
        let nibble = _mm256_set1_epi8(15);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let k = w[0].len();
        for b in 0..k {
            let mut xd = [_mm256_setzero_ps(); C];
            let mut xv = [_mm256_setzero_si256(); C];
            for c in 0..C {
                let blk = x[c].get_unchecked(b);
                xd[c] = _mm256_set1_ps(blk.scale());
                xv[c] = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
            }
            for r in 0..R {
                let blk = w[r].get_unchecked(b);
                let wd = _mm256_set1_ps(blk.scale());
                let packed = _mm_loadu_si128(blk.qs.as_ptr() as *const __m128i);
                let wv =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), nibble);
                for c in 0..C {
                    let pairs = _mm256_maddubs_epi16(wv, xv[c]);
                    let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, pairs));
                    let d = _mm256_mul_ps(wd, xd[c]);
                    acc[r][c] = _mm256_fmadd_ps(d, q, acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                sums[r][c] = hsum(acc[r][c]);
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(x: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(x, 1);
        let s = _mm_add_ps(hi, _mm256_castps256_ps128(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The reference: one block at a time, integer dot then scaled.
    fn reference(w: &Matrix, x: &[f32], m: usize) -> Vec<f32> {
        let k = w.cols() / BLOCK;
        let mut xq = vec![Block::ZERO; m * k];
        quantize(x, &mut xq);
        let mut out = vec![0f32; m * w.rows()];
        let Blocks::Q8_0(blocks) = &w.blocks else {
            panic!("a Q8_0 matrix")
        };
        for i in 0..m {
            for j in 0..w.rows() {
                out[i * w.rows() + j] = blocks[j * k..(j + 1) * k]
                    .iter()
                    .zip(&xq[i * k..(i + 1) * k])
                    .map(|(a, b)| {
                        let d: i32 =
                            a.qs.iter()
                                .zip(&b.qs)
                                .map(|(&p, &q)| p as i32 * q as i32)
                                .sum();
                        d as f64 * a.scale() as f64 * b.scale() as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn every_tile_shape_matches_the_reference() {
        // 7 rows (one 4-row tile and three single rows), 5 activation rows (pairs and a single),
        // and enough outputs to run in parallel.
        for (rows, m) in [(7, 5), (130, 67), (4, 1), (1, 1)] {
            let cols = 96;
            let w = Matrix::quantize(rows, cols, &values(rows * cols, 1)).unwrap();
            let x = values(m * cols, 2);
            let mut out = vec![0f32; m * rows];
            w.matmul(&x, m, &mut out).unwrap();
            let expected = reference(&w, &x, m);
            for (a, b) in out.iter().zip(&expected) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{a} vs {b} ({rows}×{m})"
                );
            }
        }
    }

    /// Random Q4_1 weights as GGUF bytes: scales ~0.01–0.03, minimums ~−0.1–0.
    fn q4_1_bytes(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let v = values(rows * cols / BLOCK * 2, seed);
        let mut bytes = Vec::new();
        let mut nibbles = values(rows * cols, seed + 1).into_iter();
        for pair in v.chunks(2) {
            bytes.extend(f16::from_f32(0.02 + 0.01 * pair[0]).to_le_bytes());
            bytes.extend(f16::from_f32(-0.05 + 0.05 * pair[1]).to_le_bytes());
            for _ in 0..BLOCK / 2 {
                let mut n = || ((nibbles.next().unwrap() + 1.0) * 7.99) as u8 & 15;
                let (lo, hi) = (n(), n());
                bytes.push(lo | (hi << 4));
            }
        }
        bytes
    }

    #[test]
    fn q4_1_weights_match_the_reference_and_dequantize() {
        for (rows, m) in [(7, 5), (130, 67), (4, 1), (1, 1)] {
            let cols = 96;
            let k = cols / BLOCK;
            let bytes = q4_1_bytes(rows, cols, 5);
            let w = Matrix::from_gguf_q4_1_bytes(rows, cols, &bytes).unwrap();
            assert_eq!((w.format(), w.bytes()), ("Q4_1", rows * k * 20));
            let x = values(m * cols, 6);
            let mut out = vec![0f32; m * rows];
            w.matmul(&x, m, &mut out).unwrap();
            // The reference: the weights' exact values, d_w·d_x·Σ q_w·q_x + m_w·s_x per block.
            let mut xq = vec![Block::ZERO; m * k];
            quantize(&x, &mut xq);
            let sums = block_sums(&x, &xq);
            let Blocks::Q4_1(blocks) = &w.blocks else {
                panic!("a Q4_1 matrix")
            };
            for i in 0..m {
                for j in 0..rows {
                    let mut want = 0f64;
                    for b in 0..k {
                        let (wb, xb) = (&blocks[j * k + b], &xq[i * k + b]);
                        let mut wv = [0f32; BLOCK];
                        wb.dequantize(&mut wv);
                        let isum: i64 = wv
                            .iter()
                            .zip(&xb.qs)
                            .map(|(&v, &q)| {
                                (((v - wb.min()) / wb.scale()).round() as i64) * q as i64
                            })
                            .sum();
                        want += isum as f64 * wb.scale() as f64 * xb.scale() as f64
                            + wb.min() as f64 * sums[i * k + b] as f64;
                    }
                    let got = out[i * rows + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{got} vs {want} ({rows}×{m})"
                    );
                }
            }
            // A row's values: nibble × scale + minimum, low nibbles first.
            let mut row = vec![0f32; cols];
            assert!(w.dequantize_row(rows - 1, &mut row));
            let b = &bytes[(rows - 1) * k * 20..];
            let (d, mn) = (
                f16::from_le_bytes([b[0], b[1]]).to_f32(),
                f16::from_le_bytes([b[2], b[3]]).to_f32(),
            );
            assert_eq!(row[0], (b[4] & 15) as f32 * d + mn);
            assert_eq!(row[16], (b[4] >> 4) as f32 * d + mn);
            assert!(!w.dequantize_row(rows, &mut row));
        }
        assert!(Matrix::from_gguf_q4_1_bytes(1, 32, &[0; 19]).is_err());
    }

    #[test]
    fn quantize_round_trips_within_about_half_a_step() {
        let x = values(64, 3);
        let mut q = [Block::ZERO; 2];
        quantize(&x, &mut q);
        let mut back = [0f32; 64];
        dequantize(&q, &mut back);
        for (block, (a, b)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = q[block].scale();
            for (u, v) in a.iter().zip(b) {
                // Half a step, plus the f16 scale's rounding (≤ 2⁻¹¹ relative) times 127.
                assert!((u - v).abs() <= step * (0.5 + 127.0 / 2048.0) + 1e-6);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Matrix::quantize(2, 33, &[0.0; 66]).is_err());
        assert!(Matrix::quantize(2, 32, &[0.0; 63]).is_err());
        assert!(Matrix::from_gguf_bytes(1, 32, &[0; 33]).is_err());
        let w = Matrix::quantize(2, 32, &[0.5; 64]).unwrap();
        assert!(w.matmul(&[0.0; 31], 1, &mut [0.0; 2]).is_err());
        assert!(!w.dequantize_row(2, &mut [0.0; 32]));
    }
}
