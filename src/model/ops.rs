//! Differentiable fused ops with hand-written backward passes.
//!
//! candle's fused `LayerNorm` has no backward pass (it silently cuts the autograd graph) and its composed
//! softmax/GELU are slow. On the CPU these ops run as custom ops whose forward and backward are plain loops
//! over contiguous rows (f32 and f64; the f64 path exists for finite-difference checks). On other devices they
//! fall back to composed candle ops, which are differentiable too.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp1, Layout, Result, Shape, Storage,
    Tensor, WithDType, D,
};
use num_traits::Float;
use rayon::prelude::*;

/// Rows per parallel task are chosen so that each task touches at least this many elements.
const PAR_GRAIN: usize = 32 * 1024;

/// Floating-point element types the CPU kernels support.
pub trait Real:
    WithDType + Float + Send + Sync + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign
{
    /// The error function.
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn erf(self) -> Self {
        erf_f32_fast(self)
    }
}

impl Real for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// Rational approximation of erf in f32 (max abs error ≈ 1e-7 on [-4, 4]; saturates outside).
#[inline]
fn erf_f32_fast(x: f32) -> f32 {
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
fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused op: expected a contiguous tensor"),
    }
}

/// Runs `f` on the contiguous CPU data of `t` (made contiguous first if needed).
pub fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(contiguous_slice::<T>(cpu, layout)?)),
        _ => bail!("with_cpu_slice: tensor is not on the CPU"),
    }
}

/// Copies a tensor's values into a `Vec<f32>` (any float dtype, any device).
pub fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// An in-place write into a contiguous f32 CPU tensor, through a closure.
struct InplaceF32<F: Fn(&mut [f32])>(F);

impl<F: Fn(&mut [f32])> InplaceOp1 for InplaceF32<F> {
    fn name(&self) -> &'static str {
        "inplace-f32"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (a, b) = match layout.contiguous_offsets() {
            Some(o) => o,
            None => bail!("in-place write: tensor is not contiguous"),
        };
        match storage {
            CpuStorage::F32(v) => {
                (self.0)(&mut v[a..b]);
                Ok(())
            }
            _ => bail!("in-place write: tensor is not f32"),
        }
    }
}

/// Mutates the f32 values of a contiguous CPU tensor in place; every tensor sharing its storage sees the change.
pub fn write_cpu_f32(t: &Tensor, f: impl Fn(&mut [f32])) -> Result<()> {
    if !t.device().is_cpu() {
        bail!("in-place write: tensor is not on the CPU");
    }
    t.inplace_op1(&InplaceF32(f))
}

/// Runs `f(rows_in, rows_out)` over row blocks of width `d`, in parallel when the tensor is large.
fn par_rows<T: Send + Sync, U: Send>(
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

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused op: tensor has no (or an empty) last dimension"),
    }
}

// ---------------------------------------------------------------------------------------------- LayerNorm

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
struct LayerNormOp {
    eps: f64,
}

fn layer_norm_rows<T: Real>(x: &[T], g: &[T], b: &[T], y: &mut [T], d: usize, eps: T) {
    let n = T::from(d).unwrap_or_else(T::one);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mean = xr.iter().copied().sum::<T>() / n;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
        let rstd = T::one() / (var + eps).sqrt();
        for j in 0..d {
            yr[j] = (xr[j] - mean) * rstd * g[j] + b[j];
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "skillgraft-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        type Operand<'a> = (&'a CpuStorage, &'a Layout);
        fn run<T: Real>(ops: [Operand<'_>; 3], d: usize, eps: f64) -> Result<Vec<T>> {
            let x = contiguous_slice::<T>(ops[0].0, ops[0].1)?;
            let g = contiguous_slice::<T>(ops[1].0, ops[1].1)?;
            let b = contiguous_slice::<T>(ops[2].0, ops[2].1)?;
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
        let ops = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(run::<f32>(ops, d, self.eps)?),
            CpuStorage::F64(_) => CpuStorage::F64(run::<f64>(ops, d, self.eps)?),
            _ => bail!("layer norm: only f32 and f64 are supported"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        fn run<T: Real>(
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
            // Each task returns partial dgamma/dbeta sums; they are reduced in task order (deterministic).
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
                        let mean = xr.iter().copied().sum::<T>() / n;
                        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
                        let rstd = T::one() / (var + eps).sqrt();
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
        let d = gamma.elem_count();
        let dev = x.device();
        let (dx, dg, db) = match x.dtype() {
            DType::F32 => {
                let (dx, dg, db) = with_cpu_slice::<f32, _>(x, |xs| {
                    with_cpu_slice::<f32, _>(gamma, |gs| {
                        with_cpu_slice::<f32, _>(grad, |dys| run(xs, gs, dys, d, self.eps))
                    })
                })???;
                (
                    Tensor::from_vec(dx, x.shape(), dev)?,
                    Tensor::from_vec(dg, gamma.shape(), dev)?,
                    Tensor::from_vec(db, beta.shape(), dev)?,
                )
            }
            DType::F64 => {
                let (dx, dg, db) = with_cpu_slice::<f64, _>(x, |xs| {
                    with_cpu_slice::<f64, _>(gamma, |gs| {
                        with_cpu_slice::<f64, _>(grad, |dys| run(xs, gs, dys, d, self.eps))
                    })
                })???;
                (
                    Tensor::from_vec(dx, x.shape(), dev)?,
                    Tensor::from_vec(dg, gamma.shape(), dev)?,
                    Tensor::from_vec(db, beta.shape(), dev)?,
                )
            }
            dt => bail!("layer norm backward: unsupported dtype {dt:?}"),
        };
        let dx = x.track_op().then_some(dx);
        let dg = gamma.track_op().then_some(dg);
        let db = beta.track_op().then_some(db);
        Ok((dx, dg, db))
    }
}

/// LayerNorm over the last dimension, differentiable w.r.t. `x`, `gamma` and `beta`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            LayerNormOp { eps },
        )
    } else {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        xhat.broadcast_mul(gamma)?.broadcast_add(beta)
    }
}

// ------------------------------------------------------------------------------------------------ Softmax

/// Softmax over the last dimension.
struct SoftmaxOp;

fn softmax_rows<T: Real>(x: &[T], y: &mut [T], d: usize) {
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let max = xr
            .iter()
            .copied()
            .fold(T::neg_infinity(), <T as Float>::max);
        let mut sum = T::zero();
        for j in 0..d {
            let e = (xr[j] - max).exp();
            yr[j] = e;
            sum += e;
        }
        let inv = T::one() / sum;
        for v in yr.iter_mut() {
            *v *= inv;
        }
    }
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "skillgraft-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l)?;
        fn run<T: Real>(s: &CpuStorage, l: &Layout, d: usize) -> Result<Vec<T>> {
            let x = contiguous_slice::<T>(s, l)?;
            let mut y = vec![T::zero(); x.len()];
            par_rows(x, &mut y, d, |xi, yo| softmax_rows(xi, yo, d));
            Ok(y)
        }
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run::<f32>(s, l, d)?),
            CpuStorage::F64(_) => CpuStorage::F64(run::<f64>(s, l, d)?),
            _ => bail!("softmax: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Real>(y: &[T], dy: &[T], d: usize) -> Vec<T> {
            let mut dx = vec![T::zero(); y.len()];
            let rows_per_task = (PAR_GRAIN / d).max(1);
            dx.par_chunks_mut(rows_per_task * d)
                .enumerate()
                .for_each(|(task, dxo)| {
                    let base = task * rows_per_task * d;
                    for (r, dxr) in dxo.chunks_exact_mut(d).enumerate() {
                        let off = base + r * d;
                        let yr = &y[off..off + d];
                        let dyr = &dy[off..off + d];
                        let dot = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum::<T>();
                        for j in 0..d {
                            dxr[j] = yr[j] * (dyr[j] - dot);
                        }
                    }
                });
            dx
        }
        let d = res.dims().last().copied().unwrap_or(1);
        let dx = match res.dtype() {
            DType::F32 => {
                let v = with_cpu_slice::<f32, _>(res, |y| {
                    with_cpu_slice::<f32, _>(grad, |dy| run(y, dy, d))
                })??;
                Tensor::from_vec(v, res.shape(), res.device())?
            }
            DType::F64 => {
                let v = with_cpu_slice::<f64, _>(res, |y| {
                    with_cpu_slice::<f64, _>(grad, |dy| run(y, dy, d))
                })??;
                Tensor::from_vec(v, res.shape(), res.device())?
            }
            dt => bail!("softmax backward: unsupported dtype {dt:?}"),
        };
        Ok(Some(dx))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(SoftmaxOp)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

// --------------------------------------------------------------------------------------------------- GELU

/// Exact (erf) GELU: `0.5 x (1 + erf(x / sqrt 2))`.
struct GeluOp;

fn gelu_slice<T: Real>(x: &[T], y: &mut [T]) {
    let half = T::from(0.5).unwrap_or_else(T::one);
    let inv_sqrt2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::one);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = half * v * (T::one() + (v * inv_sqrt2).erf());
    }
}

fn gelu_grad_slice<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    let half = T::from(0.5).unwrap_or_else(T::one);
    let inv_sqrt2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::one);
    let inv_sqrt_2pi = T::from(0.398_942_280_401_432_7).unwrap_or_else(T::one);
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let cdf = half * (T::one() + (v * inv_sqrt2).erf());
        let pdf = inv_sqrt_2pi * (-half * v * v).exp();
        *o = g * (cdf + v * pdf);
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "skillgraft-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
            let x = contiguous_slice::<T>(s, l)?;
            let mut y = vec![T::zero(); x.len()];
            par_rows(x, &mut y, 1, gelu_slice);
            Ok(y)
        }
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run::<f32>(s, l)?),
            CpuStorage::F64(_) => CpuStorage::F64(run::<f64>(s, l)?),
            _ => bail!("gelu: only f32 and f64 are supported"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
            let mut dx = vec![T::zero(); x.len()];
            let chunk = PAR_GRAIN;
            dx.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
                let a = i * chunk;
                gelu_grad_slice(&x[a..a + o.len()], &dy[a..a + o.len()], o)
            });
            dx
        }
        let dx = match arg.dtype() {
            DType::F32 => {
                let v = with_cpu_slice::<f32, _>(arg, |x| {
                    with_cpu_slice::<f32, _>(grad, |dy| run(x, dy))
                })??;
                Tensor::from_vec(v, arg.shape(), arg.device())?
            }
            DType::F64 => {
                let v = with_cpu_slice::<f64, _>(arg, |x| {
                    with_cpu_slice::<f64, _>(grad, |dy| run(x, dy))
                })??;
                Tensor::from_vec(v, arg.shape(), arg.device())?
            }
            dt => bail!("gelu backward: unsupported dtype {dt:?}"),
        };
        Ok(Some(dx))
    }
}

/// Exact GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A deterministic pseudo-random tensor in f64.
    fn det(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    /// Checks d(sum(w * f(x)))/dx from autograd against central finite differences, in f64.
    fn check_grad(f: impl Fn(&Tensor) -> Result<Tensor>, x0: &Tensor, w: &Tensor) {
        let x = Var::from_tensor(x0).expect("var");
        let loss = (f(x.as_tensor()).expect("f") * w)
            .expect("mul")
            .sum_all()
            .expect("sum");
        let grads = loss.backward().expect("backward");
        let g = grads.get(x.as_tensor()).expect("x received no gradient");
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += h;
            let mut m = base.clone();
            m[i] -= h;
            let eval = |v: Vec<f64>| -> f64 {
                let t = Tensor::from_vec(v, x0.shape(), &Device::Cpu).unwrap();
                (f(&t).unwrap() * w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(p) - eval(m)) / (2.0 * h);
            let err = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-3));
            assert!(
                err < 1e-6,
                "element {i}: finite difference {fd} vs autograd {}",
                g[i]
            );
        }
    }

    #[test]
    fn gelu_matches_finite_differences() {
        check_grad(gelu, &det(&[3, 7], 1), &det(&[3, 7], 2));
    }

    #[test]
    fn softmax_matches_finite_differences() {
        check_grad(softmax_last_dim, &det(&[2, 3, 5], 3), &det(&[2, 3, 5], 4));
    }

    #[test]
    fn layer_norm_matches_finite_differences_for_all_inputs() {
        let w = det(&[4, 6], 5);
        let g0 = det(&[6], 6);
        let b0 = det(&[6], 7);
        let x0 = det(&[4, 6], 8);
        check_grad(|x| layer_norm(x, &g0, &b0, 1e-5), &x0, &w);
        check_grad(|g| layer_norm(&x0, g, &b0, 1e-5), &g0, &w);
        check_grad(|b| layer_norm(&x0, &g0, b, 1e-5), &b0, &w);
    }

    #[test]
    fn fused_forward_matches_composed_ops_in_f32() {
        let x = det(&[5, 40], 9).to_dtype(DType::F32).unwrap();
        let g = det(&[40], 10).to_dtype(DType::F32).unwrap();
        let b = det(&[40], 11).to_dtype(DType::F32).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "max difference {d}");
        };
        close(&gelu(&x).unwrap(), &x.gelu_erf().unwrap());
        close(
            &softmax_last_dim(&x).unwrap(),
            &candle_nn::ops::softmax(&x, D::Minus1).unwrap(),
        );
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let reference = xc
            .broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&g)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        close(&layer_norm(&x, &g, &b, 1e-12).unwrap(), &reference);
    }

    #[test]
    fn fast_erf_is_accurate() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let e = (erf_f32_fast(x as f32) as f64 - candle_core::cpu::erf::erf_f64(x)).abs();
            worst = worst.max(e);
        }
        assert!(worst < 5e-7, "worst erf error {worst}");
    }

    #[test]
    fn in_place_write_is_seen_by_clones() {
        let t = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let alias = t.clone();
        write_cpu_f32(&t, |v| v[2] = 7.0).unwrap();
        assert_eq!(alias.to_vec1::<f32>().unwrap(), vec![0.0, 0.0, 7.0, 0.0]);
    }
}
