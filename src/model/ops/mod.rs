//! The numerical kernels behind the model, behind one small interface that is the same on every device.
//!
//! - Fused, differentiable ops with hand-written backward passes: [`layer_norm`] (candle's fused LayerNorm
//!   has no backward pass and silently cuts the autograd graph), [`softmax_last_dim`] and exact [`gelu`].
//!   Each is a custom op with a CPU implementation ([`cpu`]: loops over contiguous rows) and, with the `cuda`
//!   feature, a CUDA one (`cuda.rs` + `kernels.cu`: one warp per row), forward and backward.
//! - Dense layers ([`linear`], with fused inference variants [`linear_gelu`] and [`linear_residual`]) and
//!   multi-head [`attention`]: on the CPU in f32 and f64, custom ops over BLIS or the `gemm` crate ([`gemm`])
//!   and, for the dense forward product in f32, our own kernel that reads the weights unpacked (`xwt.rs`:
//!   AVX-512 where the CPU has it, else AVX2 with FMA), with hand-written backward passes; elsewhere (a GPU,
//!   bf16, f16) candle's matmul and broadcast ops.
//! - Sparse per-row corrections for batches that mix tasks ([`sparse`]).
//! - The heap policy for activation buffers ([`heap`]).
//! - A self-check of all of these on a device against the CPU in f64 ([`check`], `skillgraft selfcheck`).
//! - In-place access to weights: [`scatter_set`] (device-side, for grafts written into the weights),
//!   [`write_f32`] / [`with_f32_slice`] (host-side views, copied through the host on a GPU).
//!
//! Every op accepts f32, f64 (for finite-difference checks), bf16 and f16 (inference).

mod attention;
pub mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod gemm;
pub mod heap;
mod linear;
pub mod sparse;
#[cfg(test)]
mod test_tensors;
mod xwt;

pub use attention::attention;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, InplaceOp3, Layout,
    Result, Shape, Storage, Tensor, WithDType,
};
use cpu::{contiguous_slice, last_dim, Operand};
pub use linear::{linear, linear_gelu, linear_residual};
pub use sparse::{SiteDelta, SiteKind, SparseBatch, SparsePack, DENSE_SITE_DENSITY};

/// The CPU's vector kernels for the forward product and the sparse corrections (empty: none, BLIS only).
pub fn cpu_kernels() -> Vec<String> {
    xwt::kernels().iter().map(|k| format!("{k:?}")).collect()
}

/// Runs `f` on the contiguous values of `t` as a host slice of `T` (zero-copy on the CPU; copied to the host
/// from other devices).
pub fn with_host_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    if t.dtype() != T::DTYPE {
        bail!(
            "host view: tensor is {:?}, expected {:?}",
            t.dtype(),
            T::DTYPE
        );
    }
    let t = t.contiguous()?;
    if !t.device().is_cpu() {
        let v: Vec<T> = t.flatten_all()?.to_vec1()?;
        return Ok(f(&v));
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(contiguous_slice::<T>(cpu, layout)?)),
        _ => bail!("host view: tensor is not on the CPU"),
    }
}

/// Runs `f` on the f32 values of `t` (see [`with_host_slice`]).
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_host_slice::<f32, R>(t, f)
}

/// Copies a tensor's values into a `Vec<f32>` (any float dtype, any device).
pub fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// An in-place write into a contiguous f32 tensor through a closure over its values.
struct HostWrite<F: FnMut(&mut [f32])>(std::cell::RefCell<F>);

impl<F: FnMut(&mut [f32])> InplaceOp1 for HostWrite<F> {
    fn name(&self) -> &'static str {
        "skillgraft-host-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            bail!("in-place write: tensor is not contiguous");
        };
        match storage {
            CpuStorage::F32(v) => {
                (self.0.borrow_mut())(&mut v[a..b]);
                Ok(())
            }
            _ => bail!("in-place write: tensor is not f32"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        cuda::host_write(storage, layout, &mut *self.0.borrow_mut())
    }
}

/// Mutates the f32 values of a contiguous tensor in place through the host; every tensor sharing its storage
/// sees the change. On the CPU this is a direct write; on a GPU the values travel to the host and back.
pub fn write_f32(t: &Tensor, f: impl FnMut(&mut [f32])) -> Result<()> {
    t.inplace_op1(&HostWrite(std::cell::RefCell::new(f)))
}

/// `dst.flatten()[idx[i]] = src[i]`, in place on `dst`'s device (indices unique, u32; `src` has `dst`'s
/// dtype). Grafts written into the weights use it; reading the old values first is an `index_select`.
pub fn scatter_set(dst: &Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    if idx.dtype() != DType::U32 || src.dtype() != dst.dtype() {
        bail!("scatter: indices must be u32 and values of the destination's dtype");
    }
    if idx.elem_count() != src.elem_count() {
        bail!(
            "scatter: {} indices for {} values",
            idx.elem_count(),
            src.elem_count()
        );
    }
    if idx.elem_count() == 0 {
        return Ok(());
    }
    dst.inplace_op3(&idx.contiguous()?, &src.contiguous()?, &ScatterSet)
}

struct ScatterSet;

impl InplaceOp3 for ScatterSet {
    fn name(&self) -> &'static str {
        "skillgraft-scatter-set"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        idx: &CpuStorage,
        il: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let Some((a, b)) = dl.contiguous_offsets() else {
            bail!("scatter: destination is not contiguous");
        };
        let idx = contiguous_slice::<u32>(idx, il)?;
        fn set<T: WithDType>(d: &mut [T], idx: &[u32], src: &[T]) -> Result<()> {
            for (&i, &v) in idx.iter().zip(src) {
                match d.get_mut(i as usize) {
                    Some(slot) => *slot = v,
                    None => bail!("scatter: index {i} out of range for {} values", d.len()),
                }
            }
            Ok(())
        }
        match dst {
            CpuStorage::F32(d) => set(&mut d[a..b], idx, contiguous_slice(src, sl)?),
            CpuStorage::F64(d) => set(&mut d[a..b], idx, contiguous_slice(src, sl)?),
            CpuStorage::BF16(d) => set(&mut d[a..b], idx, contiguous_slice(src, sl)?),
            CpuStorage::F16(d) => set(&mut d[a..b], idx, contiguous_slice(src, sl)?),
            other => bail!(
                "scatter: unsupported dtype {:?}",
                candle_core::backend::BackendStorage::dtype(&*other)
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        idx: &candle_core::CudaStorage,
        il: &Layout,
        src: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        cuda::scatter_set(dst, dl, idx, il, src, sl)
    }
}

// ---------------------------------------------------------------------------------------------- LayerNorm

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
struct LayerNormOp {
    eps: f64,
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
        let eps = self.eps;
        let ops: [Operand<'_>; 3] = [(s1, l1), (s2, l2), (s3, l3)];
        cpu::dispatch(
            "layer norm",
            ops,
            |[x, g, b]| cpu::layer_norm(x, g, b, d, eps),
            |[x, g, b]| cpu::layer_norm(x, g, b, d, eps),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm(s1, l1, s2, l2, s3, l3, self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let (dx, dg, db) = match (x.device().is_cpu(), x.dtype()) {
            (true, DType::F32) => {
                let (dx, dg, db) = with_host_slice::<f32, _>(x, |xs| {
                    with_host_slice::<f32, _>(gamma, |gs| {
                        with_host_slice::<f32, _>(grad, |dys| {
                            cpu::layer_norm_backward(xs, gs, dys, d, self.eps)
                        })
                    })
                })???;
                let dev = x.device();
                (
                    Tensor::from_vec(dx, x.shape(), dev)?,
                    Tensor::from_vec(dg, gamma.shape(), dev)?,
                    Tensor::from_vec(db, beta.shape(), dev)?,
                )
            }
            (true, DType::F64) => {
                let (dx, dg, db) = with_host_slice::<f64, _>(x, |xs| {
                    with_host_slice::<f64, _>(gamma, |gs| {
                        with_host_slice::<f64, _>(grad, |dys| {
                            cpu::layer_norm_backward(xs, gs, dys, d, self.eps)
                        })
                    })
                })???;
                let dev = x.device();
                (
                    Tensor::from_vec(dx, x.shape(), dev)?,
                    Tensor::from_vec(dg, gamma.shape(), dev)?,
                    Tensor::from_vec(db, beta.shape(), dev)?,
                )
            }
            _ => {
                // Other devices and dtypes: dx from the fused kernel; dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy
                // from candle's reductions.
                let rows = x.elem_count() / d;
                let grad = grad.contiguous()?;
                let dx = x.contiguous()?.apply_op3_no_bwd(
                    &gamma.contiguous()?,
                    &grad,
                    &LayerNormDx { eps: self.eps },
                )?;
                let ones = Tensor::ones(d, x.dtype(), x.device())?;
                let zeros = Tensor::zeros(d, x.dtype(), x.device())?;
                let xhat = x.contiguous()?.apply_op3_no_bwd(
                    &ones,
                    &zeros,
                    &LayerNormOp { eps: self.eps },
                )?;
                let dg = (&grad * &xhat)?.reshape((rows, d))?.sum(0)?;
                let db = grad.reshape((rows, d))?.sum(0)?;
                (dx, dg.reshape(gamma.shape())?, db.reshape(beta.shape())?)
            }
        };
        Ok((
            x.track_op().then_some(dx),
            gamma.track_op().then_some(dg),
            beta.track_op().then_some(db),
        ))
    }
}

/// dx of LayerNorm from (x, gamma, dy).
struct LayerNormDx {
    eps: f64,
}

impl CustomOp3 for LayerNormDx {
    fn name(&self) -> &'static str {
        "skillgraft-layer-norm-dx"
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
        let eps = self.eps;
        cpu::dispatch(
            "layer norm backward",
            [(s1, l1), (s2, l2), (s3, l3)],
            |[x, g, dy]| Ok(cpu::layer_norm_backward(x, g, dy, d, eps).0),
            |[x, g, dy]| Ok(cpu::layer_norm_backward(x, g, dy, d, eps).0),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm_dx(s1, l1, s2, l2, s3, l3, self.eps)
    }
}

/// LayerNorm over the last dimension, differentiable w.r.t. `x`, `gamma` and `beta`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNormOp { eps },
    )
}

// ------------------------------------------------------------------------------------------------ Softmax

/// Softmax over the last dimension.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "skillgraft-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l)?;
        cpu::dispatch(
            "softmax",
            [(s, l)],
            |[x]| Ok(cpu::softmax(x, d)),
            |[x]| Ok(cpu::softmax(x, d)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax(s, l)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// Softmax backward from (y, dy).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "skillgraft-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        cpu::dispatch(
            "softmax backward",
            [(s1, l1), (s2, l2)],
            |[y, dy]| Ok(cpu::softmax_backward(y, dy, d)),
            |[y, dy]| Ok(cpu::softmax_backward(y, dy, d)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax_backward(s1, l1, s2, l2)
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

// --------------------------------------------------------------------------------------------------- GELU

/// Exact (erf) GELU: `0.5 x (1 + erf(x / sqrt 2))`.
struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "skillgraft-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu::dispatch(
            "gelu",
            [(s, l)],
            |[x]| Ok(cpu::gelu(x)),
            |[x]| Ok(cpu::gelu(x)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gelu(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?,
        ))
    }
}

/// GELU backward from (x, dy).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "skillgraft-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::dispatch(
            "gelu backward",
            [(s1, l1), (s2, l2)],
            |[x, dy]| Ok(cpu::gelu_backward(x, dy)),
            |[x, dy]| Ok(cpu::gelu_backward(x, dy)),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gelu_backward(s1, l1, s2, l2)
    }
}

/// Exact GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn det(shape: &[usize], seed: u64) -> Tensor {
        check::det(shape, seed).expect("tensor")
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
            let e = (cpu::erf_f32_fast(x as f32) as f64 - candle_core::cpu::erf::erf_f64(x)).abs();
            worst = worst.max(e);
        }
        assert!(worst < 5e-7, "worst erf error {worst}");
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f64 / 1000.0;
            let e = cpu::exp_f32_fast(x as f32) as f64;
            let want = (x as f32 as f64).exp();
            worst = worst.max((e - want).abs() / want);
        }
        assert!(worst < 3e-7, "worst relative exp error {worst}");
        assert_eq!(cpu::exp_f32_fast(-1e30), 0.0);
        assert_eq!(cpu::exp_f32_fast(f32::MIN), 0.0);
    }

    #[test]
    fn in_place_write_is_seen_by_clones() {
        let t = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let alias = t.clone();
        write_f32(&t, |v| v[2] = 7.0).unwrap();
        assert_eq!(alias.to_vec1::<f32>().unwrap(), vec![0.0, 0.0, 7.0, 0.0]);
    }
}
