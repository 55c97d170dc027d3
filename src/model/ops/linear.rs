//! Dense layers `y = x Wᵀ + b` (HF weight layout: W is out × in), differentiable.
//!
//! On the CPU in f32/f64 one custom op runs the product through [`super::gemm`] straight into the output
//! (no zero-fill), the bias added by the product kernel itself (f32 with the unpacked-weights kernel) or to
//! each block while it is in cache; its backward pass computes
//! `dx = dy W`, `dW = dyᵀ x` and `db = Σ_rows dy` with the same products. For inference (no input tracks a
//! gradient) two fused variants finish each block in the same pass: [`linear_gelu`] (exact GELU) and
//! [`linear_residual`] (adds a residual). On other devices and dtypes the same functions compose candle's
//! matmul and broadcast add, as before.

use super::cpu::{contiguous_slice, gelu_in_place, Real};
use super::gemm::{par_matmul, GemmScalar, Mat};
use super::with_host_slice;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

/// What the fused CPU op does to each output block after the bias.
#[derive(Debug, Clone)]
enum Epilogue {
    /// Nothing (differentiable).
    None,
    /// Exact GELU (inference only).
    Gelu,
    /// Adds this (rows × out) tensor (inference only).
    Residual(Tensor),
}

struct LinearOp {
    epilogue: Epilogue,
}

/// Whether the fused CPU op applies to these tensors.
fn fused_cpu(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && w.dtype() == x.dtype()
}

/// `x` flattened to (rows, in), with the output's shape.
fn flat(x: &Tensor, w: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let (out_dim, in_dim) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    if dims.len() < 2 || dims[dims.len() - 1] != in_dim {
        bail!(
            "linear: input {:?} does not end in the weight's {in_dim} inputs",
            x.dims()
        );
    }
    let rows = x.elem_count() / in_dim;
    let last = dims.len() - 1;
    dims[last] = out_dim;
    Ok((x.reshape((rows, in_dim))?, dims))
}

fn apply(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue, grad: bool) -> Result<Tensor> {
    let (x2, dims) = flat(x, w)?;
    let op = LinearOp { epilogue };
    let (x2, w, b) = (x2.contiguous()?, w.contiguous()?, b.contiguous()?);
    let y = if grad {
        x2.apply_op3(&w, &b, op)?
    } else {
        x2.apply_op3_no_bwd(&w, &b, &op)?
    };
    y.reshape(dims)
}

/// `x Wᵀ + b` over the last dimension of `x` (any rank ≥ 2), differentiable w.r.t. all three.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused_cpu(x, w) {
        return apply(x, w, b, Epilogue::None, true);
    }
    let (x2, dims) = flat(x, w)?;
    x2.matmul(&w.t()?)?.broadcast_add(b)?.reshape(dims)
}

fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// `gelu(x Wᵀ + b)`: one fused pass for CPU inference; otherwise [`linear`] then [`super::gelu`].
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused_cpu(x, w) && !tracked(&[x, w, b]) {
        return apply(x, w, b, Epilogue::Gelu, false);
    }
    super::gelu(&linear(x, w, b)?)
}

/// `x Wᵀ + b + residual` (`residual` shaped like the output): one fused pass for CPU inference; otherwise
/// [`linear`] then an add.
pub fn linear_residual(x: &Tensor, w: &Tensor, b: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if fused_cpu(x, w) && residual.dtype() == x.dtype() && !tracked(&[x, w, b, residual]) {
        let r = residual.contiguous()?;
        let out_dim = w.dim(0)?;
        let r = r.reshape((r.elem_count() / out_dim, out_dim))?;
        return apply(x, w, b, Epilogue::Residual(r), false);
    }
    linear(x, w, b)? + residual
}

/// The forward product with the bias and epilogue folded into each block.
fn forward<T: GemmScalar + Real>(
    x: &[T],
    w: &[T],
    b: &[T],
    (rows, in_dim, out_dim): (usize, usize, usize),
    gelu: bool,
    residual: Option<&[T]>,
) -> Vec<T> {
    par_matmul(
        rows,
        out_dim,
        in_dim,
        T::one(),
        Mat::n(x, in_dim),
        Mat::t(w, in_dim),
        Some(b),
        |r, c0, seg| {
            if gelu {
                gelu_in_place(seg);
            }
            if let Some(res) = residual {
                let at = r * out_dim + c0;
                let len = seg.len();
                for (v, &rv) in seg.iter_mut().zip(&res[at..at + len]) {
                    *v += rv;
                }
            }
        },
    )
}

impl LinearOp {
    fn run<T: GemmScalar + Real>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        dims: (usize, usize, usize),
    ) -> Result<Vec<T>> {
        let (rows, in_dim, out_dim) = dims;
        if x.len() != rows * in_dim || w.len() != out_dim * in_dim || b.len() != out_dim {
            bail!("linear: operand sizes do not match ({rows} x {in_dim} -> {out_dim})");
        }
        match &self.epilogue {
            Epilogue::None => Ok(forward(x, w, b, dims, false, None)),
            Epilogue::Gelu => Ok(forward(x, w, b, dims, true, None)),
            Epilogue::Residual(r) => {
                if r.dims() != [rows, out_dim] {
                    bail!(
                        "linear: residual {:?}, output ({rows}, {out_dim})",
                        r.dims()
                    );
                }
                with_host_slice::<T, _>(r, |rs| forward(x, w, b, dims, false, Some(rs)))
            }
        }
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "skillgraft-linear"
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
        let (rows, in_dim) = l1.shape().dims2()?;
        let (out_dim, _) = l2.shape().dims2()?;
        let dims = (rows, in_dim, out_dim);
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.run(
                contiguous_slice::<f32>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                dims,
            )?),
            CpuStorage::F64(_) => CpuStorage::F64(self.run(
                contiguous_slice::<f64>(s1, l1)?,
                contiguous_slice(s2, l2)?,
                contiguous_slice(s3, l3)?,
                dims,
            )?),
            _ => bail!("linear: the fused CPU op takes f32 or f64"),
        };
        Ok((out, Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.epilogue, Epilogue::None) {
            bail!("linear: the fused inference op has no backward pass");
        }
        let grad = grad.contiguous()?;
        match x.dtype() {
            DType::F32 => backward::<f32>(x, w, b, &grad),
            DType::F64 => backward::<f64>(x, w, b, &grad),
            other => bail!("linear backward: unsupported dtype {other:?}"),
        }
    }
}

type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// `dx = dy W`, `dW = dyᵀ x`, `db = Σ_rows dy`, each only when its input tracks a gradient.
fn backward<T: GemmScalar + Real + WithDType>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<Grads> {
    let (rows, in_dim) = x.dims2()?;
    let out_dim = w.dim(0)?;
    let dev = x.device();
    with_host_slice::<T, _>(dy, |dys| -> Result<Grads> {
        let dx = if x.track_op() {
            let v = with_host_slice::<T, _>(w, |ws| {
                par_matmul(
                    rows,
                    in_dim,
                    out_dim,
                    T::one(),
                    Mat::n(dys, out_dim),
                    Mat::n(ws, in_dim),
                    None,
                    |_, _, _| {},
                )
            })?;
            Some(Tensor::from_vec(v, (rows, in_dim), dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let v = with_host_slice::<T, _>(x, |xs| {
                par_matmul(
                    out_dim,
                    in_dim,
                    rows,
                    T::one(),
                    Mat::t(dys, out_dim),
                    Mat::n(xs, in_dim),
                    None,
                    |_, _, _| {},
                )
            })?;
            Some(Tensor::from_vec(v, (out_dim, in_dim), dev)?)
        } else {
            None
        };
        let db = if b.track_op() {
            let mut acc = vec![T::zero(); out_dim];
            for row in dys.chunks_exact(out_dim) {
                for (a, &g) in acc.iter_mut().zip(row) {
                    *a += g;
                }
            }
            Some(Tensor::from_vec(acc, out_dim, dev)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    })?
}

#[cfg(test)]
mod tests {
    use super::super::test_tensors::{det, max_diff};
    use super::*;
    use candle_core::Var;

    /// The composed reference: candle's matmul and broadcast add.
    fn composed(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let (x2, dims) = flat(x, w).unwrap();
        x2.matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b)
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    /// Forward and all three gradients of the fused op equal the composed path's, in f64 and f32.
    #[test]
    fn fused_matches_composed_forward_and_backward() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
            let x = Var::from_tensor(&det(&[3, 5, 40], 1).to_dtype(dtype).unwrap()).unwrap();
            let w = Var::from_tensor(&det(&[24, 40], 2).to_dtype(dtype).unwrap()).unwrap();
            let b = Var::from_tensor(&det(&[24], 3).to_dtype(dtype).unwrap()).unwrap();
            let wt = det(&[3, 5, 24], 4).to_dtype(dtype).unwrap();
            let grads = |y: Tensor| {
                let g = (y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                [&x, &w, &b].map(|v| g.get(v.as_tensor()).expect("gradient").clone())
            };
            let y = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
            let r = composed(x.as_tensor(), w.as_tensor(), b.as_tensor());
            assert!(max_diff(&y, &r) < tol, "{dtype:?} forward");
            for (a, c) in grads(y).iter().zip(grads(r).iter()) {
                assert!(max_diff(a, c) < tol, "{dtype:?} backward");
            }
        }
    }

    #[test]
    fn fused_epilogues_match_composed_inference() {
        let x = det(&[70, 33], 5).to_dtype(DType::F32).unwrap();
        let w = det(&[50, 33], 6).to_dtype(DType::F32).unwrap();
        let b = det(&[50], 7).to_dtype(DType::F32).unwrap();
        let res = det(&[70, 50], 8).to_dtype(DType::F32).unwrap();
        let plain = composed(&x, &w, &b);
        let g = linear_gelu(&x, &w, &b).unwrap();
        assert!(max_diff(&g, &plain.gelu_erf().unwrap()) < 1e-5);
        let r = linear_residual(&x, &w, &b, &res).unwrap();
        assert!(max_diff(&r, &(plain + &res).unwrap()) < 1e-5);
    }
}
