//! A self-check of the kernels on a device against the CPU in f64: the fused ops forward and backward (f32
//! and reduced precision), central finite differences computed on the device in f64, the sparse per-row
//! corrections, and scatter-based apply/revert (bit for bit). `skillgraft selfcheck --device cuda` runs it on
//! a GPU; the unit tests run it on the CPU, so the check itself is checked in CI.

use super::{
    gelu, layer_norm, scatter_set, softmax_last_dim, SiteDelta, SiteKind, SparseBatch, SparsePack,
};
use candle_core::{DType, Device, Result, Tensor, Var};
use serde::Serialize;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The largest error seen (relative to max(|reference|, 1) unless the name says "abs").
    pub error: f64,
    /// The largest error allowed.
    pub tolerance: f64,
    /// error ≤ tolerance.
    pub passed: bool,
}

fn check(name: impl Into<String>, error: f64, tolerance: f64) -> Check {
    Check {
        name: name.into(),
        error,
        tolerance,
        passed: error <= tolerance,
    }
}

/// A deterministic pseudo-random tensor in f64, values in [-2, 2).
pub(super) fn det(shape: &[usize], seed: u64) -> Result<Tensor> {
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
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn max_rel(a: &Tensor, reference: &Tensor) -> Result<f64> {
    let a: Vec<f64> = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let r: Vec<f64> = reference
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    if a.len() != r.len() {
        candle_core::bail!("check: {} values vs {} in the reference", a.len(), r.len());
    }
    Ok(a.iter()
        .zip(&r)
        .map(|(x, y)| {
            if x.is_finite() {
                (x - y).abs() / y.abs().max(1.0)
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max))
}

type Op = fn(&[Tensor]) -> Result<Tensor>;

/// Forward value and gradients of Σ w ⊙ op(inputs) w.r.t. every input, on `device` in `dtype`.
fn value_and_grads(
    op: Op,
    inputs: &[Tensor],
    w: &Tensor,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?))
        .collect::<Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts)?;
    let loss = (y.to_dtype(DType::F64)? * w.to_device(device)?)?.sum_all()?;
    let grads = loss.backward()?;
    let g = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("an input received no gradient".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, g))
}

/// Central finite differences of Σ w ⊙ op on `device` in f64, at `samples` elements of input `which`.
fn finite_difference_error(
    op: Op,
    inputs: &[Tensor],
    w: &Tensor,
    device: &Device,
    which: usize,
    samples: usize,
) -> Result<f64> {
    let (_, grads) = value_and_grads(op, inputs, w, device, DType::F64)?;
    let g: Vec<f64> = grads[which]
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let base: Vec<f64> = inputs[which].flatten_all()?.to_vec1()?;
    let eval = |v: Vec<f64>| -> Result<f64> {
        let mut ins: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_device(device))
            .collect::<Result<_>>()?;
        ins[which] = Tensor::from_vec(v, inputs[which].shape(), device)?;
        (op(&ins)? * w.to_device(device)?)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let h = 1e-6;
    let mut worst = 0f64;
    let step = (base.len() / samples.max(1)).max(1);
    for i in (0..base.len()).step_by(step).take(samples) {
        let mut p = base.clone();
        p[i] += h;
        let mut m = base.clone();
        m[i] -= h;
        let fd = (eval(p)? - eval(m)?) / (2.0 * h);
        worst = worst.max((fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3));
    }
    Ok(worst)
}

/// Runs every kernel check on `device`.
pub fn kernels(device: &Device) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let ln: Op = |t| layer_norm(&t[0], &t[1], &t[2], 1e-12);
    let sm: Op = |t| softmax_last_dim(&t[0]);
    let ge: Op = |t| gelu(&t[0]);
    // Widths that are and are not multiples of a warp.
    for d in [384usize, 77] {
        let rows = 37;
        let ops: [(&str, Op, Vec<Tensor>); 3] = [
            (
                "layer_norm",
                ln,
                vec![det(&[rows, d], 1)?, det(&[d], 2)?, det(&[d], 3)?],
            ),
            ("softmax", sm, vec![det(&[rows, d], 4)?]),
            ("gelu", ge, vec![det(&[rows, d], 5)?]),
        ];
        let w = det(&[rows, d], 6)?;
        for (name, op, inputs) in ops {
            let (y_ref, g_ref) = value_and_grads(op, &inputs, &w, &Device::Cpu, DType::F64)?;
            for (dtype, fwd_tol, bwd_tol) in [
                (DType::F64, 1e-12, 1e-10),
                (DType::F32, 2e-6, 2e-5),
                (DType::BF16, 3e-2, f64::NAN),
                (DType::F16, 5e-3, f64::NAN),
            ] {
                let tag = format!("{name} d={d} {dtype:?}").to_lowercase();
                if bwd_tol.is_nan() {
                    // Reduced precision: inference only.
                    let ins: Vec<Tensor> = inputs
                        .iter()
                        .map(|t| t.to_device(device)?.to_dtype(dtype))
                        .collect::<Result<_>>()?;
                    out.push(check(
                        format!("{tag} forward"),
                        max_rel(&op(&ins)?, &y_ref)?,
                        fwd_tol,
                    ));
                    continue;
                }
                let (y, g) = value_and_grads(op, &inputs, &w, device, dtype)?;
                out.push(check(
                    format!("{tag} forward"),
                    max_rel(&y, &y_ref)?,
                    fwd_tol,
                ));
                let worst = g
                    .iter()
                    .zip(&g_ref)
                    .map(|(a, b)| max_rel(a, b))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .fold(0.0, f64::max);
                out.push(check(format!("{tag} backward vs cpu f64"), worst, bwd_tol));
            }
            let fd = (0..inputs.len())
                .map(|i| finite_difference_error(op, &inputs, &w, device, i, 12))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .fold(0.0, f64::max);
            out.push(check(
                format!("{name} d={d} f64 backward vs finite differences"),
                fd,
                1e-6,
            ));
        }
    }
    out.push(sparse_check(device)?);
    out.push(scatter_check(device)?);
    Ok(out)
}

/// Sparse corrections of two tasks on `device` vs the same on the CPU.
fn sparse_check(device: &Device) -> Result<Check> {
    let (rows, ind, outd) = (40, 96, 64);
    let sites = [
        SiteKind::Dense {
            in_dim: ind,
            out_dim: outd,
        },
        SiteKind::Norm { dim: outd },
    ];
    let deltas = |seed: u64| -> Vec<(usize, SiteDelta)> {
        let mut s = seed;
        let mut next = move |m: usize| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize % m
        };
        let mut w: Vec<(u32, f32)> = (0..50).map(|_| (next(ind * outd) as u32, 0.1)).collect();
        w.sort_by_key(|p| p.0);
        w.dedup_by_key(|p| p.0);
        let mut b: Vec<(u32, f32)> = (0..5).map(|_| (next(outd) as u32, -0.2)).collect();
        b.sort_by_key(|p| p.0);
        b.dedup_by_key(|p| p.0);
        let mut g: Vec<(u32, f32)> = (0..7).map(|_| (next(outd) as u32, 0.3)).collect();
        g.sort_by_key(|p| p.0);
        g.dedup_by_key(|p| p.0);
        vec![
            (
                0,
                SiteDelta {
                    weight: w,
                    bias: b.clone(),
                },
            ),
            (1, SiteDelta { weight: g, bias: b }),
        ]
    };
    let run = |dev: &Device| -> Result<(Tensor, Tensor)> {
        let a = SparsePack::new(&sites, &deltas(1), dev)?;
        let b = SparsePack::new(&sites, &deltas(2), dev)?;
        let x = det(&[rows, ind], 7)?.to_dtype(DType::F32)?.to_device(dev)?;
        let w = det(&[outd, ind], 8)?.to_dtype(DType::F32)?.to_device(dev)?;
        let y = x.matmul(&w.t()?)?;
        let batch = SparseBatch::new(vec![(0, 17, &a), (17, 23, &b)], dev)?;
        batch.dense(0, &x, &y)?;
        let ones = Tensor::ones(outd, DType::F32, dev)?;
        let zeros = Tensor::zeros(outd, DType::F32, dev)?;
        let z = layer_norm(&y, &ones, &zeros, 1e-5)?;
        batch.norm(1, 1e-5, &y, &z)?;
        Ok((y, z))
    };
    let (y_cpu, z_cpu) = run(&Device::Cpu)?;
    let (y_dev, z_dev) = run(device)?;
    Ok(check(
        "sparse per-row corrections (dense + layer norm), 2 tasks, f32 vs cpu",
        max_rel(&y_dev, &y_cpu)?.max(max_rel(&z_dev, &z_cpu)?),
        1e-5,
    ))
}

/// Scatter a graft's values into a tensor and back: the original, bit for bit.
fn scatter_check(device: &Device) -> Result<Check> {
    let t = det(&[64, 48], 9)?.to_dtype(DType::F32)?.to_device(device)?;
    let before: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let idx: Vec<u32> = (0..300u32).map(|i| i * 10 + 3).collect();
    let idx = Tensor::from_vec(idx, 300, device)?;
    let vals = Tensor::ones(300, DType::F32, device)?;
    let old = t.flatten_all()?.index_select(&idx, 0)?;
    scatter_set(&t, &idx, &vals)?;
    let mid: Vec<f32> = t.flatten_all()?.to_vec1()?;
    scatter_set(&t, &idx, &old)?;
    let after: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let written = mid[3] == 1.0 && mid[2993] == 1.0 && mid[4] == before[4];
    let exact = before
        .iter()
        .zip(&after)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    Ok(check(
        "scatter apply + revert is the identity, bit for bit (abs)",
        if written && exact { 0.0 } else { 1.0 },
        0.0,
    ))
}

#[cfg(test)]
mod tests {
    /// The self-check passes on the CPU (so a failure on a GPU is the GPU path's).
    #[test]
    fn kernel_self_check_passes_on_the_cpu() {
        let checks = super::kernels(&candle_core::Device::Cpu).unwrap();
        assert!(checks.len() > 20);
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
