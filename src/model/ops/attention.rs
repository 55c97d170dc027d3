//! Multi-head self-attention `softmax(q kᵀ / √d + bias) v` over (batch, seq, hidden) projections,
//! differentiable w.r.t. `q`, `k` and `v`.
//!
//! On the CPU in f32/f64 one custom op does a whole layer's attention: one task per (sequence, head) reads
//! its head's columns of `q`, `k`, `v` in place (no head split, transpose or copy), runs the two small
//! products through [`super::gemm`], the biased softmax in between, and writes its head's columns of the
//! output. Keys past a sequence's last unmasked one (right padding) are skipped: their bias zeroes their
//! weight exactly, so skipping them changes no value. The backward pass recomputes the probabilities per
//! task (nothing of size seq² is kept between the passes). Other devices and dtypes compose candle's ops as
//! before.

use super::cpu::{contiguous_slice, softmax_backward_row, softmax_biased_rows, Real};
use super::gemm::{GemmScalar, Mat, SendPtr};
use super::{softmax_last_dim, with_host_slice};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Keys whose additive bias is at most this get exactly zero weight (exp underflows in f32 and f64), so
/// they are skipped when they trail a sequence.
const MASKED: f64 = -1e4;

/// Attention over `q`, `k`, `v` (batch, seq, hidden) with `heads` heads and an additive key bias
/// (batch, 1, 1, seq); returns (batch, seq, hidden).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, s, h) = q.dims3()?;
    if heads == 0 || h % heads != 0 {
        bail!("attention: {h} features do not split into {heads} heads");
    }
    if k.dims() != q.dims() || v.dims() != q.dims() || bias.elem_count() != b * s {
        bail!(
            "attention: q {:?}, k {:?}, v {:?}, bias {:?}",
            q.dims(),
            k.dims(),
            v.dims(),
            bias.dims()
        );
    }
    let dh = h / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let fused = q.device().is_cpu()
        && matches!(q.dtype(), DType::F32 | DType::F64)
        && [k, v, bias].iter().all(|t| t.dtype() == q.dtype());
    if fused {
        let op = AttentionOp {
            heads,
            scale,
            bias: bias.reshape((b, s))?.contiguous()?,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    composed(q, k, v, bias, heads)
}

/// The same attention from candle's ops (head split, batched matmuls, softmax, merge).
pub(super) fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, s, h) = q.dims3()?;
    let dh = h / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape((b, s, heads, dh))?.transpose(1, 2)?.contiguous()
    };
    let q = split(&(q * (1.0 / (dh as f64).sqrt()))?)?;
    let scores = q
        .matmul(&split(k)?.t()?)?
        .broadcast_add(&bias.reshape((b, 1, 1, s))?)?;
    softmax_last_dim(&scores)?
        .matmul(&split(v)?)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, s, h))
}

struct AttentionOp {
    heads: usize,
    scale: f64,
    /// (batch, seq), contiguous, in the inputs' dtype.
    bias: Tensor,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    h: usize,
    heads: usize,
}

impl Dims {
    fn dh(&self) -> usize {
        self.h / self.heads
    }

    /// Offset of (sequence, head) column block in a (b, s, h) buffer.
    fn at(&self, bi: usize, hd: usize) -> usize {
        bi * self.s * self.h + hd * self.dh()
    }
}

/// Keys of each sequence up to its last one that is not masked (all of them if every key is masked).
fn valid_keys<T: Real>(bias: &[T], s: usize) -> Vec<usize> {
    let masked = T::from(MASKED).unwrap_or_else(T::min_value);
    bias.chunks_exact(s)
        .map(|row| match row.iter().rposition(|&x| x > masked) {
            Some(last) => last + 1,
            None => s,
        })
        .collect()
}

/// `scores[s × n] = scale · q_bh k_bhᵀ`, then the biased softmax of every row, in place.
fn probabilities<T: GemmScalar + Real>(
    d: Dims,
    scale: T,
    (q, k): (&[T], &[T]),
    bias: &[T],
    (bi, hd, n): (usize, usize, usize),
    scores: &mut [T],
) {
    let at = d.at(bi, hd);
    super::gemm::gemm_into(
        d.s,
        n,
        d.dh(),
        scale,
        Mat::n(&q[at..], d.h),
        Mat::t(&k[at..], d.h),
        scores,
        n,
        false,
    );
    softmax_biased_rows(scores, &bias[bi * d.s..bi * d.s + n]);
}

fn forward<T: GemmScalar + Real>(
    d: Dims,
    scale: T,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: &[T],
) -> Vec<T> {
    let len = d.b * d.s * d.h;
    let valid = valid_keys(bias, d.s);
    let mut out: Vec<T> = Vec::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    (0..d.b * d.heads).into_par_iter().for_each(|task| {
        let (bi, hd) = (task / d.heads, task % d.heads);
        let n = valid[bi];
        let mut p = vec![T::zero(); d.s * n];
        probabilities(d, scale, (q, k), bias, (bi, hd, n), &mut p);
        let at = d.at(bi, hd);
        // SAFETY: the block (rows of sequence `bi`, columns of head `hd`) lies inside the (b, s, h)
        // allocation and no other task writes it; `p` and `v` cover their extents (checked by the caller's
        // shapes: v is (b, s, h), p is s × n).
        unsafe {
            T::gemm_raw(
                d.s,
                d.dh(),
                n,
                T::one(),
                (p.as_ptr(), n, false),
                (v[at..].as_ptr(), d.h, false),
                (dst.get().add(at), d.h),
                false,
            );
        }
    });
    // SAFETY: the (sequence, head) blocks tile the output, and each was fully written by its product.
    unsafe { out.set_len(len) };
    out
}

/// (dq, dk, dv) from the output gradient `dy`, recomputing each task's probabilities.
fn backward<T: GemmScalar + Real>(
    d: Dims,
    scale: T,
    (q, k, v): (&[T], &[T], &[T]),
    bias: &[T],
    dy: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let len = d.b * d.s * d.h;
    let valid = valid_keys(bias, d.s);
    let (mut dq, mut dk, mut dv) = (
        vec![T::zero(); len],
        vec![T::zero(); len],
        vec![T::zero(); len],
    );
    let ptrs = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    (0..d.b * d.heads).into_par_iter().for_each(|task| {
        let (bi, hd) = (task / d.heads, task % d.heads);
        let n = valid[bi];
        let (s, dh, h) = (d.s, d.dh(), d.h);
        let at = d.at(bi, hd);
        let mut p = vec![T::zero(); s * n];
        probabilities(d, scale, (q, k), bias, (bi, hd, n), &mut p);
        // dP = dO vᵀ (s × n), then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, in place.
        let mut ds = vec![T::zero(); s * n];
        super::gemm::gemm_into(
            s,
            n,
            dh,
            T::one(),
            Mat::n(&dy[at..], h),
            Mat::t(&v[at..], h),
            &mut ds,
            n,
            false,
        );
        for (dsr, pr) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
            softmax_backward_row(pr, dsr, scale);
        }
        // SAFETY: each task writes only the (sequence bi, head hd) block of dq (s rows) and the first n
        // rows of that block in dk and dv, disjoint from every other task's blocks and inside the (b, s, h)
        // allocations; the operands cover their extents by the shapes checked before the call.
        unsafe {
            // dv = Pᵀ dO (n × dh)
            T::gemm_raw(
                n,
                dh,
                s,
                T::one(),
                (p.as_ptr(), n, true),
                (dy[at..].as_ptr(), h, false),
                (ptrs.2.get().add(at), h),
                false,
            );
            // dq = dS k (s × dh)
            T::gemm_raw(
                s,
                dh,
                n,
                T::one(),
                (ds.as_ptr(), n, false),
                (k[at..].as_ptr(), h, false),
                (ptrs.0.get().add(at), h),
                false,
            );
            // dk = dSᵀ q (n × dh)
            T::gemm_raw(
                n,
                dh,
                s,
                T::one(),
                (ds.as_ptr(), n, true),
                (q[at..].as_ptr(), h, false),
                (ptrs.1.get().add(at), h),
                false,
            );
        }
    });
    (dq, dk, dv)
}

impl AttentionOp {
    fn dims(&self, l: &Layout) -> Result<Dims> {
        let (b, s, h) = l.shape().dims3()?;
        Ok(Dims {
            b,
            s,
            h,
            heads: self.heads,
        })
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "skillgraft-attention"
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
        let d = self.dims(l1)?;
        fn run<T: GemmScalar + Real + WithDType>(
            op: &AttentionOp,
            d: Dims,
            ins: [(&CpuStorage, &Layout); 3],
        ) -> Result<Vec<T>> {
            let [q, k, v] = ins.map(|(s, l)| contiguous_slice::<T>(s, l));
            let (q, k, v) = (q?, k?, v?);
            let scale = T::from(op.scale).unwrap_or_else(T::one);
            with_host_slice::<T, _>(&op.bias, |bias| forward(d, scale, q, k, v, bias))
        }
        let ins = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(run::<f32>(self, d, ins)?),
            CpuStorage::F64(_) => CpuStorage::F64(run::<f64>(self, d, ins)?),
            _ => bail!("attention: the fused CPU op takes f32 or f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(q.layout())?;
        let grad = grad.contiguous()?;
        fn run<T: GemmScalar + Real + WithDType>(
            op: &AttentionOp,
            d: Dims,
            [q, k, v, dy]: [&Tensor; 4],
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let scale = T::from(op.scale).unwrap_or_else(T::one);
            let (dq, dk, dv) = with_host_slice::<T, _>(q, |qs| {
                with_host_slice::<T, _>(k, |ks| {
                    with_host_slice::<T, _>(v, |vs| {
                        with_host_slice::<T, _>(dy, |dys| {
                            with_host_slice::<T, _>(&op.bias, |bias| {
                                backward(d, scale, (qs, ks, vs), bias, dys)
                            })
                        })
                    })
                })
            })?????;
            let (shape, dev) = (q.shape(), q.device());
            Ok((
                Tensor::from_vec(dq, shape, dev)?,
                Tensor::from_vec(dk, shape, dev)?,
                Tensor::from_vec(dv, shape, dev)?,
            ))
        }
        let ins = [q, k, v, &grad];
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => run::<f32>(self, d, ins)?,
            DType::F64 => run::<f64>(self, d, ins)?,
            other => bail!("attention backward: unsupported dtype {other:?}"),
        };
        Ok((
            q.track_op().then_some(dq),
            k.track_op().then_some(dk),
            v.track_op().then_some(dv),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_tensors::{det, max_diff};
    use super::*;
    use candle_core::{Device, Var};

    /// Padding bias: sequence 0 has 5 real tokens of 7, sequence 1 all 7, sequence 2 a masked key in the
    /// middle (not skipped, still zero weight).
    fn padding_bias(dtype: DType) -> Tensor {
        let m = f32::MIN as f64 / 2.0;
        let v = vec![
            0.0, 0.0, 0.0, 0.0, 0.0, m, m, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, m, 0.0, 0.0, 0.0, m,
        ];
        Tensor::from_vec(v, (3, 1, 1, 7), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_matches_composed_forward_and_backward() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            let mk =
                |seed| Var::from_tensor(&det(&[3, 7, 12], seed).to_dtype(dtype).unwrap()).unwrap();
            let (q, k, v) = (mk(1), mk(2), mk(3));
            let bias = padding_bias(dtype);
            let w = det(&[3, 7, 12], 4).to_dtype(dtype).unwrap();
            let grads = |y: &Tensor| {
                let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                [&q, &k, &v].map(|t| g.get(t.as_tensor()).expect("gradient").clone())
            };
            let y = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &bias, 3).unwrap();
            let r = composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), &bias, 3).unwrap();
            assert!(
                max_diff(&y, &r) < tol,
                "{dtype:?} forward {}",
                max_diff(&y, &r)
            );
            for (a, c) in grads(&y).iter().zip(grads(&r).iter()) {
                assert!(
                    max_diff(a, c) < tol,
                    "{dtype:?} backward {}",
                    max_diff(a, c)
                );
            }
        }
    }
}
