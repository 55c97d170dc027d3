//! The dense layers' forward product `C = X Wᵀ` in f32 on x86-64 CPUs with AVX2 and FMA (AVX-512 where
//! present), reading the weight matrix in its stored (out × in) layout: only the input rows are packed, the
//! weights never are.
//!
//! Why not BLIS here: a BLAS packs both operands on every call, and on the few-row products of short
//! requests (16 rows against 384 × 1536 weights) packing the weights costs as much memory traffic as the
//! product itself; neither BLIS nor OpenBLAS can keep packed weights across calls, and a cache of packed
//! copies would have to be invalidated by every in-place writer (graft apply/revert, optimizers). Here the
//! kernel broadcasts each weight once from where it is stored and multiplies it into 16 input rows held
//! as one 16-lane (AVX-512, 12 weight rows per tile) or two 8-lane vectors (AVX2, 6 weight rows), packed
//! `k`-major, so a forward pass streams the weights exactly once.
//!
//! Every output element is one fused multiply-add chain over the inner dimension in order,
//! `c = fma(x[k-1], w[k-1], … fma(x[0], w[0], 0))`, whatever the kernel, the tiling, the blocking of the
//! inner dimension (a block resumes from the stored partial sum), the thread split or the other rows: a
//! text's result never depends on its batch mates or on the CPU's vector width, and tests compare both
//! kernels against that chain bit for bit.

/// The vector kernels, widest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Kernel {
    /// 8-lane AVX2 + FMA, tiles of 16 rows × 6 outputs.
    Avx2,
    /// 16-lane AVX-512F, tiles of 16 rows × 12 outputs.
    Avx512,
}

/// The kernels this CPU can run, widest last (checked once).
pub fn kernels() -> &'static [Kernel] {
    static HAS: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
    HAS.get_or_init(|| {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Kernel::Avx2);
                if is_x86_feature_detected!("avx512f") {
                    v.push(Kernel::Avx512);
                }
            }
        }
        v
    })
}

/// `c[m×n, ldc] = x[m×k, ldx] · w[n×k, ldw]ᵀ (+ bias[n] on every row)` on the calling thread with the
/// widest kernel this CPU has; false (nothing written) when it has none ([`kernels`] is empty). The bias is
/// added to each finished chain, `fl(chain + b)`, as a separate pass over the output would.
///
/// # Safety
/// `x` must be readable over `m` rows of stride `ldx` (`k` values each), `w` over `n` rows of stride
/// `ldw`, `bias` (when given) over `n` values, and `c` writable over `m` rows of stride `ldc` (`n` values
/// each).
#[allow(clippy::too_many_arguments)]
pub unsafe fn xwt(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
) -> bool {
    match kernels().last() {
        // SAFETY: the CPU runs this kernel; extents are the caller's contract.
        Some(&kernel) => unsafe { xwt_with(kernel, m, n, k, (x, ldx), (w, ldw), bias, (c, ldc)) },
        None => return false,
    }
    true
}

/// [`xwt`] with a given kernel.
///
/// # Safety
/// As [`xwt`], and `kernel` must be one of [`kernels`].
#[allow(clippy::too_many_arguments)]
unsafe fn xwt_with(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    x: (*const f32, usize),
    w: (*const f32, usize),
    bias: Option<*const f32>,
    c: (*mut f32, usize),
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as this function's.
    unsafe {
        x86::xwt(kernel == Kernel::Avx512, m, n, k, x, w, bias, c)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (kernel, m, n, k, x, w, bias, c);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// Input rows per tile: two 8-lane vectors.
    const ROWS: usize = 16;
    /// Weight rows per tile (12 accumulators + 2 input vectors + 1 broadcast = 15 of 16 registers).
    const OUTS: usize = 6;
    /// Weight rows per tile with AVX-512 (one 16-lane accumulator each; 12 + 1 input + 1 broadcast of 32).
    const WIDE_OUTS: usize = 12;
    /// Inner-dimension block: a packed 16-row panel of it (24 KiB) stays in the 32 KiB L1 cache while
    /// the weight tiles of a block pass over it.
    const KC: usize = 384;
    /// Weight rows per block: 96 × 384 × 4 B = 144 KiB, read from the L2 cache once per input panel.
    const BLOCK_OUTS: usize = 96;
    /// Packed input rows per chunk are sized to this much of the L2 cache.
    const CHUNK_BYTES: usize = 256 * 1024;

    /// A thread's buffers, reused across calls: packed input panels and, when the inner dimension takes
    /// more than one block, the partial sums between blocks (16 lanes per output and panel).
    #[derive(Default)]
    struct Scratch {
        packed: Vec<f32>,
        partial: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }

    fn grow(v: &mut Vec<f32>, len: usize) {
        if v.len() < len {
            v.resize(len, 0.0);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn xwt(
        wide: bool,
        m: usize,
        n: usize,
        k: usize,
        (x, ldx): (*const f32, usize),
        (w, ldw): (*const f32, usize),
        bias: Option<*const f32>,
        (c, ldc): (*mut f32, usize),
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for r in 0..m {
                for j in 0..n {
                    // SAFETY: row r of c holds n writable values, bias n readable ones.
                    *c.add(r * ldc + j) = bias.map_or(0.0, |b| 0.0 + *b.add(j));
                }
            }
            return;
        }
        let outs = if wide { WIDE_OUTS } else { OUTS };
        let kc_max = KC.min(k);
        // Chunks of about equal size, each a whole number of panels.
        let most = (CHUNK_BYTES / (4 * kc_max) / ROWS).max(1) * ROWS;
        let chunk = m.div_ceil(m.div_ceil(most)).next_multiple_of(ROWS);
        let chunk_pad = chunk.min(m.next_multiple_of(ROWS));
        SCRATCH.with_borrow_mut(|scratch| {
            grow(&mut scratch.packed, chunk_pad * kc_max);
            if k > KC {
                grow(&mut scratch.partial, chunk_pad * n);
            }
            let partial = scratch.partial.as_mut_ptr();
            for r0 in (0..m).step_by(chunk) {
                let rows = (m - r0).min(chunk);
                let panels = rows.div_ceil(ROWS);
                for p0 in (0..k).step_by(KC) {
                    let kc = (k - p0).min(KC);
                    // SAFETY: rows r0..r0+rows and columns p0..p0+kc of x are inside its extent.
                    unsafe { pack(x.add(r0 * ldx + p0), ldx, rows, kc, &mut scratch.packed) };
                    let packed = scratch.packed.as_ptr();
                    for b0 in (0..n).step_by(BLOCK_OUTS) {
                        for q in 0..panels {
                            for j0 in (b0..(b0 + BLOCK_OUTS).min(n)).step_by(outs) {
                                let tile = Tile {
                                    kc,
                                    w: w.add(j0 * ldw + p0),
                                    ldw,
                                    xp: packed.add(q * ROWS * kc),
                                    partial: partial.wrapping_add((q * n + j0) * ROWS),
                                    resume: p0 > 0,
                                    last: p0 + kc == k,
                                    bias: bias.map(|b| b.add(j0)),
                                    c: c.add((r0 + q * ROWS) * ldc + j0),
                                    ldc,
                                    rows: (rows - q * ROWS).min(ROWS),
                                };
                                // SAFETY: the tile's weights, packed panel, partial sums and outputs
                                // are inside the extents above.
                                unsafe {
                                    if wide {
                                        match (n - j0).min(WIDE_OUTS) {
                                            12 => tile.run_wide::<12>(),
                                            11 => tile.run_wide::<11>(),
                                            10 => tile.run_wide::<10>(),
                                            9 => tile.run_wide::<9>(),
                                            8 => tile.run_wide::<8>(),
                                            7 => tile.run_wide::<7>(),
                                            6 => tile.run_wide::<6>(),
                                            5 => tile.run_wide::<5>(),
                                            4 => tile.run_wide::<4>(),
                                            3 => tile.run_wide::<3>(),
                                            2 => tile.run_wide::<2>(),
                                            _ => tile.run_wide::<1>(),
                                        }
                                    } else {
                                        match (n - j0).min(OUTS) {
                                            6 => tile.run::<6>(),
                                            5 => tile.run::<5>(),
                                            4 => tile.run::<4>(),
                                            3 => tile.run::<3>(),
                                            2 => tile.run::<2>(),
                                            _ => tile.run::<1>(),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    /// The transpose of an 8 × 8 block held as 8 row vectors.
    #[target_feature(enable = "avx2,fma")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4g + 0..4]: columns 0/1/2/3 (+4) of rows 4g..4g+4, from t[4g..4g+4].
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let g = i / 4 * 4;
            match i % 4 {
                0 => _mm256_shuffle_ps::<0x44>(t[g], t[g + 2]),
                1 => _mm256_shuffle_ps::<0xEE>(t[g], t[g + 2]),
                2 => _mm256_shuffle_ps::<0x44>(t[g + 1], t[g + 3]),
                _ => _mm256_shuffle_ps::<0xEE>(t[g + 1], t[g + 3]),
            }
        });
        std::array::from_fn(|i| {
            if i < 4 {
                _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4])
            } else {
                _mm256_permute2f128_ps::<0x31>(u[i - 4], u[i])
            }
        })
    }

    /// Packs `rows × kc` values of `x` into 16-row panels, each `kc` groups of 16 (row-minor); rows past
    /// the end of the last panel are zero.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack(x: *const f32, ldx: usize, rows: usize, kc: usize, packed: &mut [f32]) {
        let full = kc / 8 * 8;
        for q in 0..rows.div_ceil(ROWS) {
            let panel = &mut packed[q * ROWS * kc..(q + 1) * ROWS * kc];
            let valid = (rows - q * ROWS).min(ROWS);
            for half in 0..2 {
                let i0 = half * 8;
                if i0 + 8 <= valid {
                    // 8 × 8 blocks through registers.
                    let row = |i: usize| x.add((q * ROWS + i0 + i) * ldx);
                    for p0 in (0..full).step_by(8) {
                        let block =
                            transpose8(std::array::from_fn(|i| _mm256_loadu_ps(row(i).add(p0))));
                        for (t, v) in block.iter().enumerate() {
                            _mm256_storeu_ps(panel.as_mut_ptr().add((p0 + t) * ROWS + i0), *v);
                        }
                    }
                    for i in 0..8 {
                        for p in full..kc {
                            panel[p * ROWS + i0 + i] = *row(i).add(p);
                        }
                    }
                    continue;
                }
                for i in i0..i0 + 8 {
                    if i >= valid {
                        for p in 0..kc {
                            panel[p * ROWS + i] = 0.0;
                        }
                        continue;
                    }
                    // SAFETY: row q·16+i of the block holds kc readable values.
                    let row = std::slice::from_raw_parts(x.add((q * ROWS + i) * ldx), kc);
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * ROWS + i] = v;
                    }
                }
            }
        }
    }

    /// One output tile: up to 16 rows × `R` weight rows over one inner-dimension block.
    struct Tile {
        kc: usize,
        w: *const f32,
        ldw: usize,
        xp: *const f32,
        /// Partial sums of this tile between inner-dimension blocks (`R` × 16, output-major).
        partial: *mut f32,
        /// Continue the chains from `partial` (not the first block).
        resume: bool,
        /// The last block: write the rows to `c`, not to `partial`.
        last: bool,
        /// Added to each output's finished chain (`R` values).
        bias: Option<*const f32>,
        c: *mut f32,
        ldc: usize,
        /// Valid rows (≤ 16); the rest of the panel is padding.
        rows: usize,
    }

    impl Tile {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const R: usize>(&self) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            if self.resume {
                for (j, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm256_loadu_ps(self.partial.add(j * ROWS));
                    a[1] = _mm256_loadu_ps(self.partial.add(j * ROWS + 8));
                }
            }
            let wr: [*const f32; R] = std::array::from_fn(|j| self.w.add(j * self.ldw));
            let step = |p: usize, acc: &mut [[__m256; 2]; R]| {
                let x0 = _mm256_loadu_ps(self.xp.add(p * ROWS));
                let x1 = _mm256_loadu_ps(self.xp.add(p * ROWS + 8));
                for j in 0..R {
                    let wv = _mm256_broadcast_ss(&*wr[j].add(p));
                    acc[j][0] = _mm256_fmadd_ps(wv, x0, acc[j][0]);
                    acc[j][1] = _mm256_fmadd_ps(wv, x1, acc[j][1]);
                }
            };
            let lines = self.kc / 16 * 16;
            for p0 in (0..lines).step_by(16) {
                // The next tile's weights (the following R rows), one cache line per row ahead.
                for wj in &wr {
                    _mm_prefetch::<_MM_HINT_T0>(wj.wrapping_add(p0 + R * self.ldw) as *const i8);
                }
                for p in p0..p0 + 16 {
                    step(p, &mut acc);
                }
            }
            for p in lines..self.kc {
                step(p, &mut acc);
            }
            if !self.last {
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(self.partial.add(j * ROWS), a[0]);
                    _mm256_storeu_ps(self.partial.add(j * ROWS + 8), a[1]);
                }
                return;
            }
            if let Some(b) = self.bias {
                for (j, a) in acc.iter_mut().enumerate() {
                    let bv = _mm256_set1_ps(*b.add(j));
                    a[0] = _mm256_add_ps(a[0], bv);
                    a[1] = _mm256_add_ps(a[1], bv);
                }
            }
            if R == OUTS {
                // Rows out through 8 × 8 transposes: row i's six values are lanes 0..6 of one vector.
                for h in [0usize, 1] {
                    let cols = transpose8(std::array::from_fn(|j| {
                        if j < R {
                            acc[j][h]
                        } else {
                            _mm256_setzero_ps()
                        }
                    }));
                    for (i, v) in cols
                        .iter()
                        .enumerate()
                        .take(self.rows.saturating_sub(h * 8))
                    {
                        let row = self.c.add((h * 8 + i) * self.ldc);
                        _mm_storeu_ps(row, _mm256_castps256_ps128(*v));
                        _mm_storel_epi64(
                            row.add(4) as *mut __m128i,
                            _mm_castps_si128(_mm256_extractf128_ps::<1>(*v)),
                        );
                    }
                }
                return;
            }
            let mut lanes = [[0f32; ROWS]; R];
            for (a, l) in acc.iter().zip(lanes.iter_mut()) {
                _mm256_storeu_ps(l.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(l.as_mut_ptr().add(8), a[1]);
            }
            for i in 0..self.rows {
                let row = self.c.add(i * self.ldc);
                for (j, l) in lanes.iter().enumerate() {
                    *row.add(j) = l[i];
                }
            }
        }

        /// [`Tile::run`] with AVX-512: one 16-lane accumulator per weight row, up to 12 rows; the same
        /// chains, so the same bits.
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn run_wide<const R: usize>(&self) {
            let mut acc = [_mm512_setzero_ps(); R];
            if self.resume {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(self.partial.add(j * ROWS));
                }
            }
            let wr: [*const f32; R] = std::array::from_fn(|j| self.w.add(j * self.ldw));
            let step = |p: usize, acc: &mut [__m512; R]| {
                let xv = _mm512_loadu_ps(self.xp.add(p * ROWS));
                for j in 0..R {
                    acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(*wr[j].add(p)), xv, acc[j]);
                }
            };
            let lines = self.kc / 16 * 16;
            for p0 in (0..lines).step_by(16) {
                for wj in &wr {
                    _mm_prefetch::<_MM_HINT_T0>(wj.wrapping_add(p0 + R * self.ldw) as *const i8);
                }
                for p in p0..p0 + 16 {
                    step(p, &mut acc);
                }
            }
            for p in lines..self.kc {
                step(p, &mut acc);
            }
            if !self.last {
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(self.partial.add(j * ROWS), *a);
                }
                return;
            }
            if let Some(b) = self.bias {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, _mm512_set1_ps(*b.add(j)));
                }
            }
            let half = |a: __m512, h: usize| -> __m256 {
                if h == 0 {
                    _mm512_castps512_ps256(a)
                } else {
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
                }
            };
            if R == WIDE_OUTS {
                // Rows out through 8 × 8 transposes: outputs 0..8 as one vector, 8..12 as the low half
                // of another.
                for h in [0usize, 1] {
                    let lo = transpose8(std::array::from_fn(|j| half(acc[j], h)));
                    let hi = transpose8(std::array::from_fn(|j| {
                        if 8 + j < R {
                            half(acc[8 + j], h)
                        } else {
                            _mm256_setzero_ps()
                        }
                    }));
                    for i in 0..self.rows.saturating_sub(h * 8).min(8) {
                        let row = self.c.add((h * 8 + i) * self.ldc);
                        _mm256_storeu_ps(row, lo[i]);
                        _mm_storeu_ps(row.add(8), _mm256_castps256_ps128(hi[i]));
                    }
                }
                return;
            }
            let mut lanes = [[0f32; ROWS]; R];
            for (a, l) in acc.iter().zip(lanes.iter_mut()) {
                _mm512_storeu_ps(l.as_mut_ptr(), *a);
            }
            for i in 0..self.rows {
                let row = self.c.add(i * self.ldc);
                for (j, l) in lanes.iter().enumerate() {
                    *row.add(j) = l[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::test_tensors::det_f32;

    /// The documented chain, in scalar code: `fma` over the inner dimension in order from zero.
    fn chain(m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f32;
                for p in 0..k {
                    s = x[i * k + p].mul_add(w[j * k + p], s);
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn every_kernel_matches_the_fma_chain_plus_bias_bit_for_bit_on_every_edge() {
        if kernels().is_empty() {
            eprintln!("xwt: CPU without AVX2/FMA, kernel not used here");
            return;
        }
        // Row and column counts around both tile sizes, inner dimensions around the block size, and a
        // destination wider than the product (its other columns must stay untouched).
        for &(m, n, k, ldc) in &[
            (1, 1, 1, 1),
            (16, 6, 8, 6),
            (17, 7, 33, 7),
            (3, 13, 384, 13),
            (35, 20, 385, 20),
            (40, 12, 1000, 12),
            (16, 24, 40, 24),
            (19, 10, 50, 23),
            (33, 30, 17, 41),
            (5, 384, 0, 384),
        ] {
            let x: Vec<f32> = det_f32(m * k, 1 + m as u64);
            let w: Vec<f32> = det_f32(n * k, 2 + n as u64);
            let b: Vec<f32> = det_f32(n, 3 + n as u64);
            for (&kernel, with_bias) in kernels().iter().flat_map(|k| [(k, false), (k, true)]) {
                let mut want = chain(m, n, k, &x, &w);
                if with_bias {
                    want.iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v += b[i % n]);
                }
                let bias = with_bias.then_some(b.as_ptr());
                let mut c = vec![-7f32; m * ldc];
                // SAFETY: x, w and b hold exactly their extents, c holds m rows of stride ldc ≥ n.
                unsafe {
                    xwt_with(
                        kernel,
                        m,
                        n,
                        k,
                        (x.as_ptr(), k),
                        (w.as_ptr(), k),
                        bias,
                        (c.as_mut_ptr(), ldc),
                    )
                };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j < n {
                            let b = want[i * n + j];
                            assert_eq!(
                                got.to_bits(),
                                b.to_bits(),
                                "{kernel:?} bias {with_bias} {m}x{n}x{k}: ({i}, {j}): {got} vs {b}"
                            );
                        } else {
                            assert_eq!(
                                got, -7.0,
                                "{kernel:?}: ({i}, {j}) outside the block was written"
                            );
                        }
                    }
                }
            }
        }
    }
}
