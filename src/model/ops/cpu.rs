//! The CPU side of the fused ops: loops over contiguous rows, parallel over row blocks (rayon).
//!
//! The row loops are written so that they vectorize (reductions over 16 independent lanes, a polynomial
//! `exp` in f32) and are compiled twice (`multiversion`): for AVX2 when the CPU has it, and for the baseline
//! x86-64 otherwise. f32 and f64 run natively (f64 exists for finite-difference checks); bf16 and f16 are
//! widened to f32 row by row and narrowed back, so reduced-precision inference runs on the CPU too.

use candle_core::{bail, CpuStorage, Layout, Result, Shape, WithDType};
use half::{bf16, f16};
use multiversion::multiversion;
use num_traits::Float;
use rayon::prelude::*;

/// Rows per parallel task are chosen so that each task touches at least this many elements.
pub(super) const PAR_GRAIN: usize = 32 * 1024;

/// Floating-point element types the CPU kernels compute in.
pub trait Real:
    WithDType + Float + Send + Sync + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign
{
    /// The error function.
    fn erf(self) -> Self;
    /// `e^x`: a polynomial that vectorizes in f32 (≈1 ulp, 0 below −87.3), libm's in f64.
    fn exp_fast(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn erf(self) -> Self {
        erf_f32_fast(self)
    }

    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32_fast(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }

    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 without branches (Cephes' `expf`): `x = n ln 2 + r`, a degree-7 polynomial for `e^r`, and
/// `2^n` built in the exponent bits. Saturates at `e^88`; exactly 0 below −87.3.
#[inline(always)]
pub(super) fn exp_f32_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * two_n
    }
}

/// Lanes of the vectorized reductions.
const LANES: usize = 16;

/// Σ v, over [`LANES`] independent partial sums (so the loop vectorizes).
#[inline(always)]
pub(super) fn sum<T: Real>(v: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = v.chunks_exact(LANES);
    let mut tail = T::zero();
    for &x in chunks.remainder() {
        tail += x;
    }
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// Σ a ⊙ b, over [`LANES`] partial sums.
#[inline(always)]
pub(super) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = T::zero();
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// Σ (v − m)², over [`LANES`] partial sums.
#[inline(always)]
fn sum_sq_dev<T: Real>(v: &[T], m: T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = v.chunks_exact(LANES);
    let mut tail = T::zero();
    for &x in chunks.remainder() {
        tail += (x - m) * (x - m);
    }
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// max v (−∞ for an empty slice), over [`LANES`] partial maxima.
#[inline(always)]
fn max<T: Real>(v: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = v.chunks_exact(LANES);
    let mut tail = T::neg_infinity();
    for &x in chunks.remainder() {
        tail = if x > tail { x } else { tail };
    }
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |s, &a| if a > s { a } else { s })
}

/// Rational approximation of erf in f32 (max abs error ≈ 1e-7 on [-4, 4]; saturates outside).
#[inline(always)]
pub(super) fn erf_f32_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329_2e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

/// The contiguous slice of a CPU storage described by `layout`.
pub(super) fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused op: expected a contiguous tensor"),
    }
}

/// The size of the last dimension (rows are contiguous runs of it).
pub(super) fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused op: tensor has no (or an empty) last dimension"),
    }
}

/// Runs `f(rows_in, rows_out)` over row blocks of width `d`, in parallel when the tensor is large.
pub(super) fn par_rows<T: Send + Sync, U: Send>(
    input: &[T],
    output: &mut [U],
    d: usize,
    f: impl Fn(&[T], &mut [U]) + Sync + Send,
) {
    let rows_per_task = (PAR_GRAIN / d.max(1)).max(1);
    let chunk = rows_per_task * d;
    if input.len() <= chunk {
        f(input, output);
    } else {
        input
            .par_chunks(chunk)
            .zip(output.par_chunks_mut(chunk))
            .for_each(|(i, o)| f(i, o));
    }
}

/// Operands of a row-wise op: up to three contiguous inputs of one dtype.
pub(super) type Operand<'a> = (&'a CpuStorage, &'a Layout);

/// Runs a row-wise op over `ops` in their dtype: `run` computes in f32 or f64 from slices; bf16/f16 inputs are
/// widened to f32 first and the result narrowed back. The output has the first operand's shape.
pub(super) fn dispatch<const N: usize>(
    name: &str,
    ops: [Operand<'_>; N],
    run32: impl Fn([&[f32]; N]) -> Result<Vec<f32>>,
    run64: impl Fn([&[f64]; N]) -> Result<Vec<f64>>,
) -> Result<(CpuStorage, Shape)> {
    let shape = ops[0].1.shape().clone();
    fn slices<'a, T: WithDType, const N: usize>(ops: &[Operand<'a>; N]) -> Result<[&'a [T]; N]> {
        let mut out: [&[T]; N] = [&[]; N];
        for (o, (s, l)) in out.iter_mut().zip(ops.iter()) {
            *o = contiguous_slice::<T>(s, l)?;
        }
        Ok(out)
    }
    fn widened<T: WithDType, const N: usize>(
        ops: &[Operand<'_>; N],
        widen: impl Fn(T) -> f32,
    ) -> Result<[Vec<f32>; N]> {
        let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        for (o, (s, l)) in out.iter_mut().zip(ops.iter()) {
            *o = contiguous_slice::<T>(s, l)?
                .iter()
                .map(|&v| widen(v))
                .collect();
        }
        Ok(out)
    }
    let out = match ops[0].0 {
        CpuStorage::F32(_) => CpuStorage::F32(run32(slices::<f32, N>(&ops)?)?),
        CpuStorage::F64(_) => CpuStorage::F64(run64(slices::<f64, N>(&ops)?)?),
        CpuStorage::BF16(_) => {
            let w = widened::<bf16, N>(&ops, bf16::to_f32)?;
            let y = run32(std::array::from_fn(|i| w[i].as_slice()))?;
            CpuStorage::BF16(y.into_iter().map(bf16::from_f32).collect())
        }
        CpuStorage::F16(_) => {
            let w = widened::<f16, N>(&ops, f16::to_f32)?;
            let y = run32(std::array::from_fn(|i| w[i].as_slice()))?;
            CpuStorage::F16(y.into_iter().map(f16::from_f32).collect())
        }
        other => bail!(
            "{name}: unsupported dtype {:?}",
            candle_core::backend::BackendStorage::dtype(other)
        ),
    };
    Ok((out, shape))
}

// ---------------------------------------------------------------------------------------------- LayerNorm

/// Mean and 1/std of a row.
#[inline(always)]
fn moments<T: Real>(xr: &[T], n: T, eps: T) -> (T, T) {
    let mean = sum(xr) / n;
    let var = sum_sq_dev(xr, mean) / n;
    (mean, T::one() / (var + eps).sqrt())
}

/// `(x - mean) / sqrt(var + eps) * g + b` for each row of width `d`.
#[multiversion(targets("x86_64+avx2"))]
fn layer_norm_rows<T: Real>(x: &[T], g: &[T], b: &[T], y: &mut [T], d: usize, eps: T) {
    let n = T::from(d).unwrap_or_else(T::one);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let (mean, rstd) = moments(xr, n, eps);
        for (((o, &v), &gj), &bj) in yr.iter_mut().zip(xr).zip(g).zip(b) {
            *o = (v - mean) * rstd * gj + bj;
        }
    }
}

/// LayerNorm forward over rows of width `d`.
pub(super) fn layer_norm<T: Real>(x: &[T], g: &[T], b: &[T], d: usize, eps: f64) -> Result<Vec<T>> {
    if g.len() != d || b.len() != d {
        bail!(
            "layer norm: gamma/beta have {} / {} values, expected {d}",
            g.len(),
            b.len()
        );
    }
    let eps = T::from(eps).unwrap_or_else(T::epsilon);
    let mut y = vec![T::zero(); x.len()];
    par_rows(x, &mut y, d, |xi, yo| layer_norm_rows(xi, g, b, yo, d, eps));
    Ok(y)
}

/// One row of the LayerNorm backward: writes `dxr`, accumulates dγ and dβ.
#[multiversion(targets("x86_64+avx2"))]
fn layer_norm_backward_row<T: Real>(
    xr: &[T],
    g: &[T],
    dyr: &[T],
    dxr: &mut [T],
    (dg, db): (&mut [T], &mut [T]),
    (n, eps): (T, T),
) {
    let (mean, rstd) = moments(xr, n, eps);
    let d = xr.len();
    let mut sum_gdy = T::zero();
    let mut sum_gdy_xhat = T::zero();
    for j in 0..d {
        let xhat = (xr[j] - mean) * rstd;
        let gdy = g[j] * dyr[j];
        sum_gdy += gdy;
        sum_gdy_xhat += gdy * xhat;
        dg[j] += dyr[j] * xhat;
        db[j] += dyr[j];
    }
    let m1 = sum_gdy / n;
    let m2 = sum_gdy_xhat / n;
    for j in 0..d {
        let xhat = (xr[j] - mean) * rstd;
        dxr[j] = rstd * (g[j] * dyr[j] - m1 - xhat * m2);
    }
}

/// LayerNorm backward: (dx, dgamma, dbeta). Partial dgamma/dbeta sums per task are reduced in task order,
/// so the result is deterministic.
pub(super) fn layer_norm_backward<T: Real>(
    x: &[T],
    g: &[T],
    dy: &[T],
    d: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = T::from(d).unwrap_or_else(T::one);
    let eps = T::from(eps).unwrap_or_else(T::epsilon);
    let mut dx = vec![T::zero(); x.len()];
    let rows = x.len() / d;
    let rows_per_task = (PAR_GRAIN / d).max(1);
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(rows_per_task * d)
        .enumerate()
        .map(|(task, dxo)| {
            let mut dg = vec![T::zero(); d];
            let mut db = vec![T::zero(); d];
            let r0 = task * rows_per_task;
            for (r, dxr) in dxo.chunks_exact_mut(d).enumerate() {
                let row = r0 + r;
                if row >= rows {
                    break;
                }
                let xr = &x[row * d..(row + 1) * d];
                let dyr = &dy[row * d..(row + 1) * d];
                layer_norm_backward_row(xr, g, dyr, dxr, (&mut dg, &mut db), (n, eps));
            }
            (dg, db)
        })
        .collect();
    let mut dgamma = vec![T::zero(); d];
    let mut dbeta = vec![T::zero(); d];
    for (dg, db) in partials {
        for j in 0..d {
            dgamma[j] += dg[j];
            dbeta[j] += db[j];
        }
    }
    (dx, dgamma, dbeta)
}

// ------------------------------------------------------------------------------------------------ Softmax

/// Softmax of one row in place.
#[inline(always)]
fn softmax_in_place<T: Real>(row: &mut [T]) {
    let m = max(row);
    for v in row.iter_mut() {
        *v = (*v - m).exp_fast();
    }
    let inv = T::one() / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[multiversion(targets("x86_64+avx2"))]
fn softmax_rows<T: Real>(x: &[T], y: &mut [T], d: usize) {
    y.copy_from_slice(x);
    for yr in y.chunks_exact_mut(d) {
        softmax_in_place(yr);
    }
}

/// `softmax(row + bias)` in place for each row of width `bias.len()` (attention scores).
#[multiversion(targets("x86_64+avx2"))]
pub(super) fn softmax_biased_rows<T: Real>(scores: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        return;
    }
    for row in scores.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
        softmax_in_place(row);
    }
}

/// Softmax backward of one row from its output `p`, in place on `dp`, times `scale`:
/// `dp ← scale · p ⊙ (dp − Σ p ⊙ dp)`.
#[multiversion(targets("x86_64+avx2"))]
pub(super) fn softmax_backward_row<T: Real>(p: &[T], dp: &mut [T], scale: T) {
    let s = dot(p, dp);
    for (g, &y) in dp.iter_mut().zip(p) {
        *g = scale * y * (*g - s);
    }
}

/// Softmax over rows of width `d`.
pub(super) fn softmax<T: Real>(x: &[T], d: usize) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    par_rows(x, &mut y, d, |xi, yo| softmax_rows(xi, yo, d));
    y
}

/// Softmax backward from its output `y`: `dx = y (dy - Σ y dy)` per row.
pub(super) fn softmax_backward<T: Real>(y: &[T], dy: &[T], d: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let rows_per_task = (PAR_GRAIN / d).max(1);
    dx.par_chunks_mut(rows_per_task * d)
        .enumerate()
        .for_each(|(task, dxo)| {
            let base = task * rows_per_task * d;
            for (r, dxr) in dxo.chunks_exact_mut(d).enumerate() {
                let off = base + r * d;
                dxr.copy_from_slice(&dy[off..off + d]);
                softmax_backward_row(&y[off..off + d], dxr, T::one());
            }
        });
    dx
}

// --------------------------------------------------------------------------------------------------- GELU

fn gelu_slice<T: Real>(x: &[T], y: &mut [T]) {
    y.copy_from_slice(x);
    gelu_in_place(y);
}

/// Exact GELU in place.
#[multiversion(targets("x86_64+avx2"))]
pub(super) fn gelu_in_place<T: Real>(v: &mut [T]) {
    let half = T::from(0.5).unwrap_or_else(T::one);
    let inv_sqrt2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::one);
    for o in v.iter_mut() {
        let x = *o;
        *o = half * x * (T::one() + (x * inv_sqrt2).erf());
    }
}

#[multiversion(targets("x86_64+avx2"))]
fn gelu_grad_slice<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    let half = T::from(0.5).unwrap_or_else(T::one);
    let inv_sqrt2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::one);
    let inv_sqrt_2pi = T::from(0.398_942_280_401_432_7).unwrap_or_else(T::one);
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let cdf = half * (T::one() + (v * inv_sqrt2).erf());
        let pdf = inv_sqrt_2pi * (-half * v * v).exp_fast();
        *o = g * (cdf + v * pdf);
    }
}

/// Exact (erf) GELU, elementwise.
pub(super) fn gelu<T: Real>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    par_rows(x, &mut y, 1, gelu_slice);
    y
}

/// GELU backward: `dy · (Φ(x) + x φ(x))`.
pub(super) fn gelu_backward<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let chunk = PAR_GRAIN;
    dx.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
        let a = i * chunk;
        gelu_grad_slice(&x[a..a + o.len()], &dy[a..a + o.len()], o)
    });
    dx
}
