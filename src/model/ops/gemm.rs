//! Matrix products on the CPU, in f32 and f64: BLIS (Debian's single-threaded static library, found by
//! `build.rs`) when the build found it, otherwise the `gemm` crate that candle itself uses; the dense
//! layers' forward product `x Wᵀ` in f32 goes to [`super::xwt`] instead where the CPU has AVX2 and FMA
//! (it reads the weights without packing them). Each call runs on one thread, and [`par_matmul`] splits a
//! product into row or column blocks over the rayon pool, so the model has one thread pool and every block's
//! epilogue (bias, activation, residual) runs on its block while it is still in cache.
//!
//! Why BLIS: both libraries run the encoder's large products at similar speed, but BLIS's small-matrix path is
//! faster on the few-row products of short requests (16 × 384 × 384); the end-to-end numbers are in the
//! README's "CPU speed" section (`benches/compare.sh`).

use rayon::prelude::*;

/// The libraries and kernels doing the products, for reports (`bench-worker`'s `info`).
pub fn backend() -> String {
    let library = if cfg!(skillgraft_blis) {
        "blis (static, single-threaded per block)"
    } else {
        "gemm crate"
    };
    match super::xwt::kernels().last() {
        Some(kernel) => format!("{library}; x·Wᵀ: unpacked-weights kernel ({kernel:?})"),
        None => library.to_string(),
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

    /// `c[m×n, ldc] = x[m×k, ldx] · w[n×k, ldw]ᵀ (+ bias)` through [`super::xwt`] (weights read unpacked)
    /// when this type and CPU have that kernel; false, with nothing written, when not.
    ///
    /// # Safety
    /// As [`super::xwt::xwt`].
    unsafe fn xwt_raw(
        _m: usize,
        _n: usize,
        _k: usize,
        _x: (*const Self, usize),
        _w: (*const Self, usize),
        _bias: Option<*const Self>,
        _c: (*mut Self, usize),
    ) -> bool {
        false
    }
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
///   up (52 → 48 at 16 rows, the one shape where it loses); only where [`super::xwt`] does not run (f64, or
///   a CPU without AVX2/FMA);
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
    ($t:ty, $blas:ident, $blis_ex:ident $(, $xwt:path)?) => {
        impl GemmScalar for $t {
            $(
                unsafe fn xwt_raw(
                    m: usize,
                    n: usize,
                    k: usize,
                    x: (*const Self, usize),
                    w: (*const Self, usize),
                    bias: Option<*const Self>,
                    c: (*mut Self, usize),
                ) -> bool {
                    $xwt(m, n, k, x.0, x.1, w.0, w.1, bias, c.0, c.1)
                }
            )?

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

gemm_scalar!(f32, cblas_sgemm, bli_sgemm_ex, super::xwt::xwt);
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
/// `bias` (n values, when given) is added to every row, then `epilogue(row, first_col, values)` runs on every
/// finished block row segment (in any order, each segment once) before the call returns. The output is never
/// zero-filled: every element is written by the product.
#[allow(clippy::too_many_arguments)]
pub fn par_matmul<T: GemmScalar>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    bias: Option<&[T]>,
    epilogue: impl Fn(usize, usize, &mut [T]) + Sync,
) -> Vec<T> {
    assert!(a.covers(m, k) && b.covers(k, n), "gemm: operand too small");
    assert!(bias.is_none_or(|b| b.len() == n), "gemm: bias length");
    let len = m * n;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let dst = SendPtr(out.as_mut_ptr());
    // `x Wᵀ` (a dense layer's forward product): the kernel that reads the weights unpacked, where there is
    // one. The choice depends on the operands' layout only, never on the number of rows.
    let unpacked_weights = !a.trans && b.trans && alpha == T::one();
    let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
        // SAFETY: blocks are disjoint and inside the m × n allocation; operands were checked to cover
        // the full extents, so every sub-block is covered too.
        unsafe {
            let c = dst.get().add(r0 * n + c0);
            let unpacked = unpacked_weights
                && T::xwt_raw(
                    r1 - r0,
                    c1 - c0,
                    k,
                    (a.offset(r0, 0), a.ld),
                    (b.offset(0, c0), b.ld),
                    bias.map(|b| b[c0..].as_ptr()),
                    (c, n),
                );
            if !unpacked {
                T::gemm_raw(
                    r1 - r0,
                    c1 - c0,
                    k,
                    alpha,
                    (a.offset(r0, 0), a.ld, a.trans),
                    (b.offset(0, c0), b.ld, b.trans),
                    (c, n),
                    false,
                );
            }
            for r in r0..r1 {
                let seg = std::slice::from_raw_parts_mut(dst.get().add(r * n + c0), c1 - c0);
                if let (false, Some(b)) = (unpacked, bias) {
                    for (v, &bv) in seg.iter_mut().zip(&b[c0..]) {
                        *v = *v + bv;
                    }
                }
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
#[path = "gemm_tests.rs"]
mod tests;
