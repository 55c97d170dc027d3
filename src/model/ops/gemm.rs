//! Matrix products on the CPU, in f32 and f64: BLIS (Debian's single-threaded static library, found by
//! `build.rs`) when the build found it, otherwise the `gemm` crate that candle itself uses. Either way each
//! call runs on one thread, and [`par_matmul`] splits a product into row or column blocks over the rayon
//! pool, so the model has one thread pool and every block's epilogue (bias, activation, residual) runs on
//! its block while it is still in cache.
//!
//! Why BLIS: both libraries run the encoder's large products at similar speed, but BLIS's small-matrix path is
//! faster on the few-row products of short requests (16 × 384 × 384); the end-to-end numbers are in the
//! README's "CPU speed" section (`benches/compare.sh`).

use rayon::prelude::*;

/// The library doing the products, for reports (`bench`, `info`).
pub fn backend() -> &'static str {
    if cfg!(skillgraft_blis) {
        "blis (static, single-threaded per block)"
    } else {
        "gemm crate"
    }
}

/// A matrix operand: row-major storage with row stride `ld`, read as stored or transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a, T> {
    /// The storage (the operand starts at its first element).
    pub data: &'a [T],
    /// Row stride of the storage.
    pub ld: usize,
    /// Read the transpose of the stored matrix.
    pub trans: bool,
}

impl<'a, T> Mat<'a, T> {
    /// A stored matrix read as is.
    pub fn n(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            ld,
            trans: false,
        }
    }

    /// A stored matrix read transposed.
    pub fn t(data: &'a [T], ld: usize) -> Self {
        Self {
            data,
            ld,
            trans: true,
        }
    }

    /// Whether the storage holds an operand of `rows × cols` (as read).
    fn covers(&self, rows: usize, cols: usize) -> bool {
        let (sr, sc) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        sr == 0 || sc == 0 || (sc <= self.ld && (sr - 1) * self.ld + sc <= self.data.len())
    }

    /// The operand starting `r` rows and `c` columns in (as read).
    fn offset(&self, r: usize, c: usize) -> *const T {
        let (sr, sc) = if self.trans { (c, r) } else { (r, c) };
        self.data[sr * self.ld + sc..].as_ptr()
    }
}

/// Element types with a single-threaded product `C = alpha op(A) op(B) (+ C)`.
pub trait GemmScalar: Copy + Send + Sync + 'static + num_traits::Float {
    /// `c[m×n, ldc] = alpha · op(a)[m×k] · op(b)[k×n]`, plus the old `c` when `accumulate`.
    ///
    /// # Safety
    /// `a`, `b` must be readable and `c` writable over the extents their strides describe; when
    /// `accumulate` is false `c` is only written.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: (*const Self, usize, bool),
        b: (*const Self, usize, bool),
        c: (*mut Self, usize),
        accumulate: bool,
    );
}

#[cfg(skillgraft_blis)]
#[path = "blis.rs"]
mod blas;

/// Whether a product runs through BLIS's packing (large-matrix) path instead of the small-matrix path BLIS
/// itself would pick. Measured single-threaded on this project's dense layers (hidden 384, intermediate
/// 1536; weights cold in cache as in a forward pass), in GFLOP/s small-matrix → packed:
///
/// - forward `x Wᵀ` (`b` read transposed from the (out, in) weight) with a long inner dimension (the FFN
///   output layer, 1536 → 384): the small-matrix path runs it as dot products, 52–75 → 77–97 from 32 rows
///   up (52 → 48 at 16 rows, the one shape where it loses);
/// - `dW = dyᵀ x` (`a` read transposed): 58–90 → 85–108 at 64–512 rows;
/// - `dx = dy W` with a long inner dimension (the FFN input layer): 60–87 → 69–97 at 64–512 rows.
///
/// The choice never depends on the number of rows `m`: each path computes a row the same way whatever the
/// other rows are, but the two paths round differently, so a row-dependent switch would make a text's
/// result depend on its batch mates. Products with fewer than 128 columns (attention's per-head
/// products) or a short inner dimension keep the small-matrix path.
#[cfg_attr(not(skillgraft_blis), allow(dead_code))]
fn prefer_packed(n: usize, k: usize, a_trans: bool, b_trans: bool) -> bool {
    if n < 128 || k < 64 {
        return false;
    }
    match (a_trans, b_trans) {
        (true, false) => true,
        (false, _) => k >= 256 && k > 2 * n,
        (true, true) => false,
    }
}

macro_rules! gemm_scalar {
    ($t:ty, $blas:ident, $blis_ex:ident) => {
        impl GemmScalar for $t {
            unsafe fn gemm_raw(
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: (*const Self, usize, bool),
                b: (*const Self, usize, bool),
                c: (*mut Self, usize),
                accumulate: bool,
            ) {
                if m == 0 || n == 0 {
                    return;
                }
                #[cfg(skillgraft_blis)]
                {
                    use blas::int;
                    let packed = if prefer_packed(n, k, a.2, b.2) {
                        blas::Runtime::packed()
                    } else {
                        None
                    };
                    if let Some(mut rntm) = packed {
                        let ((rsa, csa), (rsb, csb)) =
                            (blas::strides(a.1, a.2), blas::strides(b.1, b.2));
                        let beta: Self = if accumulate { 1.0 } else { 0.0 };
                        blas::$blis_ex(
                            0,
                            0,
                            m as i64,
                            n as i64,
                            k as i64,
                            &alpha,
                            a.0,
                            rsa,
                            csa,
                            b.0,
                            rsb,
                            csb,
                            &beta,
                            c.0,
                            c.1.max(1) as i64,
                            1,
                            std::ptr::null(),
                            &mut rntm,
                        );
                        return;
                    }
                    cblas_sys::$blas(
                        blas::ROW_MAJOR,
                        blas::trans(a.2),
                        blas::trans(b.2),
                        int(m),
                        int(n),
                        int(k),
                        alpha,
                        a.0,
                        int(a.1.max(1)),
                        b.0,
                        int(b.1.max(1)),
                        if accumulate { 1.0 } else { 0.0 },
                        c.0,
                        int(c.1.max(1)),
                    );
                }
                #[cfg(not(skillgraft_blis))]
                {
                    let strides = |(_, ld, t): (*const Self, usize, bool)| -> (isize, isize) {
                        // (column stride, row stride) of the operand as read.
                        if t {
                            (ld as isize, 1)
                        } else {
                            (1, ld as isize)
                        }
                    };
                    let (a_cs, a_rs) = strides(a);
                    let (b_cs, b_rs) = strides(b);
                    if k == 0 {
                        if !accumulate {
                            for r in 0..m {
                                for j in 0..n {
                                    *c.0.add(r * c.1 + j) = 0.0;
                                }
                            }
                        }
                        return;
                    }
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.0,
                        1,
                        c.1 as isize,
                        accumulate,
                        a.0,
                        a_cs,
                        a_rs,
                        b.0,
                        b_cs,
                        b_rs,
                        1.0,
                        alpha,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
    };
}

gemm_scalar!(f32, cblas_sgemm, bli_sgemm_ex);
gemm_scalar!(f64, cblas_dgemm, bli_dgemm_ex);

/// A raw pointer that may cross to the pool's threads: the blocks each task writes are disjoint.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, not its raw field).
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// `c[m×n] = alpha · op(a) · op(b)` on the calling thread, into a destination with row stride `ldc`
/// (`c` may be a column block of a wider matrix). Panics when an operand does not cover its extent.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into<T: GemmScalar>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    assert!(a.covers(m, k) && b.covers(k, n), "gemm: operand too small");
    assert!(
        m == 0 || n == 0 || (n <= ldc && (m - 1) * ldc + n <= c.len()),
        "gemm: destination too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: extents checked above.
    unsafe {
        T::gemm_raw(
            m,
            n,
            k,
            alpha,
            (a.data.as_ptr(), a.ld, a.trans),
            (b.data.as_ptr(), b.ld, b.trans),
            (c.as_mut_ptr(), ldc),
            accumulate,
        )
    }
}

/// How a product is cut into tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Blocks of this many rows.
    Rows(usize),
    /// Blocks of this many columns.
    Cols(usize),
}

/// Products below this many multiply-adds run as one block (a task costs a few microseconds).
const MIN_PARALLEL_MACS: usize = 1 << 18;

fn split(m: usize, n: usize, k: usize, threads: usize) -> Split {
    if threads <= 1 || m * n * k < MIN_PARALLEL_MACS {
        return Split::Rows(m.max(1));
    }
    if m >= 64 * threads {
        // Two blocks per thread keeps both cores busy when one is briefly taken; each block packs the
        // shared operand once, which costs about 1/rows of the block's work.
        let tasks = if m >= 512 * threads {
            2 * threads
        } else {
            threads
        };
        Split::Rows(m.div_ceil(tasks).next_multiple_of(8))
    } else {
        Split::Cols(n.div_ceil(threads).next_multiple_of(16).max(16))
    }
}

/// `alpha · op(a) · op(b)` (m × k times k × n) as a new row-major `m × n` matrix, computed in blocks over the rayon pool;
/// `epilogue(row, first_col, values)` runs on every finished block row segment (in any order, each segment
/// once) before the call returns. The output is never zero-filled: every element is written by the product.
pub fn par_matmul<T: GemmScalar>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    epilogue: impl Fn(usize, usize, &mut [T]) + Sync,
) -> Vec<T> {
    assert!(a.covers(m, k) && b.covers(k, n), "gemm: operand too small");
    let len = m * n;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let dst = SendPtr(out.as_mut_ptr());
    let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
        // SAFETY: blocks are disjoint and inside the m × n allocation; operands were checked to cover
        // the full extents, so every sub-block is covered too.
        unsafe {
            T::gemm_raw(
                r1 - r0,
                c1 - c0,
                k,
                alpha,
                (a.offset(r0, 0), a.ld, a.trans),
                (b.offset(0, c0), b.ld, b.trans),
                (dst.get().add(r0 * n + c0), n),
                false,
            );
            for r in r0..r1 {
                let seg = std::slice::from_raw_parts_mut(dst.get().add(r * n + c0), c1 - c0);
                epilogue(r, c0, seg);
            }
        }
    };
    match split(m, n, k, rayon::current_num_threads()) {
        Split::Rows(rows) if rows >= m => block(0, m, 0, n),
        Split::Rows(rows) => (0..m.div_ceil(rows))
            .into_par_iter()
            .for_each(|t| block(t * rows, ((t + 1) * rows).min(m), 0, n)),
        Split::Cols(cols) => (0..n.div_ceil(cols))
            .into_par_iter()
            .for_each(|t| block(0, m, t * cols, ((t + 1) * cols).min(n))),
    }
    // SAFETY: the blocks cover every row and column, and each was fully written by its product.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// `op(a) · op(b)` in f32 through [`par_matmul`], from f64 test operands.
    fn par_matmul_f32(
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, ta): (&[f64], usize, bool),
        (b, ldb, tb): (&[f64], usize, bool),
        epilogue: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        let mat = |data, ld, trans| Mat { data, ld, trans };
        par_matmul(
            m,
            n,
            k,
            alpha,
            mat(&a32, lda, ta),
            mat(&b32, ldb, tb),
            epilogue,
        )
    }

    fn naive(m: usize, n: usize, k: usize, a: Mat<'_, f64>, b: Mat<'_, f64>) -> Vec<f64> {
        let at = |x: &Mat<'_, f64>, r: usize, c: usize| {
            if x.trans {
                x.data[c * x.ld + r]
            } else {
                x.data[r * x.ld + c]
            }
        };
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
            }
        }
        c
    }

    /// Every transpose combination, odd sizes, row and column splits, padded strides, in f64 and f32, on
    /// two threads (so blocks run concurrently).
    #[test]
    fn products_match_a_naive_loop() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (300, 40, 33), (9, 700, 65), (0, 4, 4)] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let (lda, ldb) = (if ta { m } else { k } + 3, if tb { k } else { n } + 2);
                    let a = det(lda * if ta { k } else { m }, 1);
                    let b = det(ldb * if tb { n } else { k }, 2);
                    let (am, bm) = (
                        Mat {
                            data: &a,
                            ld: lda,
                            trans: ta,
                        },
                        Mat {
                            data: &b,
                            ld: ldb,
                            trans: tb,
                        },
                    );
                    let want = naive(m, n, k, am, bm);
                    let got = par_matmul(m, n, k, 1.0, am, bm, |_, _, _| {});
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    assert!(err < 1e-12, "f64 {m}x{n}x{k} {ta} {tb}: {err}");
                    let got = par_matmul_f32(
                        (m, n, k),
                        2.0,
                        (&a, lda, ta),
                        (&b, ldb, tb),
                        |_, _, seg| seg.iter_mut().for_each(|v| *v *= 0.5),
                    );
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(x, y)| (*x as f64 - y).abs())
                        .fold(0.0, f64::max);
                    assert!(err < 1e-4, "f32 {m}x{n}x{k} {ta} {tb}: {err}");
                }
            }
        });
    }

    #[test]
    fn strided_destination_and_accumulation() {
        let (m, n, k) = (5, 3, 4);
        let a = det(m * k, 3);
        let b = det(k * n, 4);
        let want = naive(m, n, k, Mat::n(&a, k), Mat::n(&b, n));
        let mut c = vec![1.0; m * 8];
        gemm_into(
            m,
            n,
            k,
            1.0,
            Mat::n(&a, k),
            Mat::n(&b, n),
            &mut c[2..],
            8,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((c[2 + i * 8 + j] - 1.0 - want[i * n + j]).abs() < 1e-12);
            }
            assert_eq!(c[i * 8], 1.0, "columns outside the block are untouched");
        }
    }

    /// The shapes that take BLIS's packing path (see [`prefer_packed`]) give the naive loop's result, with
    /// padded strides, accumulation, a column block of a wider destination, in f64 and f32.
    #[test]
    fn packed_path_matches_a_naive_loop() {
        #[cfg(skillgraft_blis)]
        assert!(blas::Runtime::packed().is_some(), "the linked BLIS is 0.9");
        let cases = [
            (40, 128, 900, false, true),
            (7, 130, 300, false, true),
            (200, 140, 70, true, false),
            (64, 128, 600, false, false),
        ];
        for &(m, n, k, ta, tb) in &cases {
            assert!(
                prefer_packed(n, k, ta, tb),
                "{m}x{n}x{k} takes the packed path"
            );
            let (lda, ldb, ldc) = (
                if ta { m } else { k } + 3,
                if tb { k } else { n } + 1,
                n + 5,
            );
            let a = det(lda * if ta { k } else { m }, 5);
            let b = det(ldb * if tb { n } else { k }, 6);
            let am = Mat {
                data: &a,
                ld: lda,
                trans: ta,
            };
            let bm = Mat {
                data: &b,
                ld: ldb,
                trans: tb,
            };
            let want = naive(m, n, k, am, bm);
            let mut c = vec![0.5; m * ldc];
            gemm_into(m, n, k, 1.0, am, bm, &mut c[2..], ldc, true);
            for i in 0..m {
                for j in 0..n {
                    let got = c[2 + i * ldc + j] - 0.5;
                    assert!((got - want[i * n + j]).abs() < 1e-12, "f64 {m}x{n}x{k}");
                }
                assert_eq!(c[i * ldc], 0.5, "columns outside the block are untouched");
            }
            let got = par_matmul_f32((m, n, k), 1.0, (&a, lda, ta), (&b, ldb, tb), |_, _, _| {});
            let err = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (*x as f64 - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-3, "f32 {m}x{n}x{k}: {err}");
        }
        assert!(!prefer_packed(384, 384, false, true), "x Wᵀ, square weight");
        assert!(
            !prefer_packed(1536, 384, false, true),
            "x Wᵀ, short inner dimension"
        );
        assert!(
            !prefer_packed(64, 512, true, false),
            "attention's per-head products"
        );
        assert!(
            !prefer_packed(1536, 384, false, false),
            "dx, short inner dimension"
        );
    }

    /// A row's result does not depend on how many other rows share the product (a text's output must
    /// not depend on its batch mates), on the packing path and on the small-matrix path.
    #[test]
    fn rows_do_not_depend_on_their_batch_mates() {
        for (n, k) in [(384, 1536), (384, 384), (1536, 384)] {
            let x = det(300 * k, 7);
            let w = det(n * k, 8);
            let (x, w): (Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| v as f32).collect(),
                w.iter().map(|&v| v as f32).collect(),
            );
            let product = |m: usize| {
                let mut c = vec![0.0f32; m * n];
                gemm_into(m, n, k, 1.0, Mat::n(&x, k), Mat::t(&w, k), &mut c, n, false);
                c
            };
            let all = product(300);
            for m in [1, 7, 16, 112] {
                assert_eq!(product(m), all[..m * n], "{m} rows of {n}x{k}");
            }
        }
    }

    #[test]
    fn splits_favour_rows_then_columns() {
        assert_eq!(split(2048, 384, 384, 1), Split::Rows(2048));
        assert_eq!(split(2048, 384, 384, 2), Split::Rows(512));
        assert_eq!(split(16, 384, 384, 2), Split::Cols(192));
        assert_eq!(split(4, 4, 4, 2), Split::Rows(4));
    }
}
