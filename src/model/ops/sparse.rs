//! Sparse per-row corrections: rows of different tasks in one forward pass, each task a sparse delta on the
//! shared weights.
//!
//! A [`SparsePack`] holds one task's deltas for every *site* (a dense or LayerNorm layer of the encoder) it
//! touches, packed into two flat buffers that live on the model's device (format in `kernels.cu`): per site,
//! its touched outputs ("slots"), and per slot the entries that feed it, each a column of the layer input
//! (or the constant 1 for a bias/shift delta) times a value. A [`SparseBatch`] lists which rows of a batch
//! belong to which pack; [`SparseBatch::dense`] and [`SparseBatch::norm`] add, in place, every row's task
//! correction to a layer's fresh output:
//!
//! - dense `y = x Wᵀ + b`: `y[r, i] += Σ_j x[r, j] ΔW[i, j] + Δb[i]`;
//! - LayerNorm `y = x̂ γ + β`: `y[r, j] += x̂[r, j] Δγ[j] + Δβ[j]`.
//!
//! One pass per touched layer covers every task of the batch, whatever their number: on the CPU as loops over
//! row tiles, on CUDA as one kernel launch whose blocks each take one tile of one task's rows.

use candle_core::{bail, CpuStorage, Device, InplaceOp2, Layout, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Rows per tile (one CUDA block, one CPU task).
const TILE_ROWS: usize = 16;

/// What a site is, for packing its deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// A dense layer with HF weight layout (out, in).
    Dense {
        /// Input features.
        in_dim: usize,
        /// Output features.
        out_dim: usize,
    },
    /// A LayerNorm over `dim` features.
    Norm {
        /// Features.
        dim: usize,
    },
}

/// One task's deltas on one site: (flat index, delta) pairs of the weight and of the bias, sorted by index.
#[derive(Debug, Clone, Default)]
pub struct SiteDelta {
    /// Weight deltas (flat row-major index into the weight).
    pub weight: Vec<(u32, f32)>,
    /// Bias (or LayerNorm shift) deltas.
    pub bias: Vec<(u32, f32)>,
}

enum PackData {
    Cpu {
        keys: Vec<u32>,
        vals: Vec<f32>,
    },
    #[cfg(feature = "cuda")]
    Cuda {
        keys: candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>,
        vals: candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
    },
}

/// One task's packed deltas, resident on the model's device.
pub struct SparsePack {
    data: PackData,
    touched: Vec<bool>,
    bytes: usize,
}

impl std::fmt::Debug for SparsePack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparsePack")
            .field("sites", &self.touched.iter().filter(|&&t| t).count())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl SparsePack {
    /// Packs a task's deltas; `sites[s]` is site `s`'s kind, `deltas` the touched sites. The pack lives on
    /// `device`.
    pub fn new(sites: &[SiteKind], deltas: &[(usize, SiteDelta)], device: &Device) -> Result<Self> {
        let (keys, vals, touched) = pack(sites, deltas)?;
        let bytes = keys.len() * 4 + vals.len() * 4;
        let data = match device {
            Device::Cpu => PackData::Cpu { keys, vals },
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => PackData::Cuda {
                keys: dev.clone_htod(&keys)?,
                vals: dev.clone_htod(&vals)?,
            },
            #[allow(unreachable_patterns)]
            other => bail!("sparse corrections: unsupported device {other:?}"),
        };
        Ok(Self {
            data,
            touched,
            bytes,
        })
    }

    /// Bytes the pack occupies on its device.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The device buffers (keys, values) of a pack on a GPU.
    #[cfg(feature = "cuda")]
    pub(super) fn cuda_buffers(
        &self,
    ) -> Option<(
        &candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>,
        &candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
    )> {
        match &self.data {
            PackData::Cuda { keys, vals } => Some((keys, vals)),
            PackData::Cpu { .. } => None,
        }
    }

    /// Whether the pack changes site `s`.
    pub fn touches(&self, s: usize) -> bool {
        self.touched.get(s).copied().unwrap_or(false)
    }
}

/// Builds the two flat buffers (see `kernels.cu` for the format) and the touched-site map.
fn pack(
    sites: &[SiteKind],
    deltas: &[(usize, SiteDelta)],
) -> Result<(Vec<u32>, Vec<f32>, Vec<bool>)> {
    let n = sites.len();
    let mut keys = vec![0u32; 4 * n];
    let mut vals = Vec::new();
    let mut touched = vec![false; n];
    for (s, d) in deltas {
        let Some(kind) = sites.get(*s) else {
            bail!("sparse pack: site {s} does not exist");
        };
        // (output, column, value): column `in_dim` (dense) / `dim` (norm) stands for the constant 1.
        let mut entries: Vec<(u32, u32, f32)> = Vec::new();
        match *kind {
            SiteKind::Dense { in_dim, out_dim } => {
                for &(f, v) in &d.weight {
                    let (i, j) = (f as usize / in_dim, f as usize % in_dim);
                    if i >= out_dim {
                        bail!("sparse pack: weight index {f} out of range for site {s}");
                    }
                    entries.push((i as u32, j as u32, v));
                }
                for &(i, v) in &d.bias {
                    if i as usize >= out_dim {
                        bail!("sparse pack: bias index {i} out of range for site {s}");
                    }
                    entries.push((i, in_dim as u32, v));
                }
            }
            SiteKind::Norm { dim } => {
                for &(j, _) in d.weight.iter().chain(&d.bias) {
                    if j as usize >= dim {
                        bail!("sparse pack: index {j} out of range for site {s}");
                    }
                }
                entries.extend(d.weight.iter().map(|&(j, v)| (j, j, v)));
                entries.extend(d.bias.iter().map(|&(j, v)| (j, dim as u32, v)));
            }
        }
        if entries.is_empty() {
            continue;
        }
        entries.sort_by_key(|&(o, c, _)| (o, c));
        let mut outs: Vec<u32> = Vec::new();
        let mut ptr: Vec<u32> = Vec::new();
        for (e, &(o, _, _)) in entries.iter().enumerate() {
            if outs.last() != Some(&o) {
                outs.push(o);
                ptr.push(e as u32);
            }
        }
        ptr.push(entries.len() as u32);
        let slots_at = keys.len() as u32;
        let n_slots = outs.len() as u32;
        keys.extend_from_slice(&outs);
        keys.extend_from_slice(&ptr);
        let cols_at = keys.len() as u32;
        keys.extend(entries.iter().map(|&(_, c, _)| c));
        let vals_at = vals.len() as u32;
        vals.extend(entries.iter().map(|&(_, _, v)| v));
        keys[4 * s..4 * s + 4].copy_from_slice(&[slots_at, n_slots, cols_at, vals_at]);
        touched[*s] = true;
    }
    if vals.is_empty() {
        // CUDA refuses empty allocations; one unused value keeps every pack allocatable.
        vals.push(0.0);
    }
    Ok((keys, vals, touched))
}

/// Which rows of a batch belong to which task: `(first row, rows, pack)` segments, rows being token rows of
/// the flattened (tokens, features) activations.
pub struct SparseBatch<'a> {
    segments: Vec<(usize, usize, &'a SparsePack)>,
    /// One past the last row any segment covers.
    end: usize,
    #[cfg(feature = "cuda")]
    plan: Option<(
        candle_core::cuda_backend::cudarc::driver::CudaSlice<u64>,
        u32,
        u32,
    )>,
}

impl<'a> SparseBatch<'a> {
    /// A batch plan on `device` (uploaded once; every layer's pass reads it).
    pub fn new(segments: Vec<(usize, usize, &'a SparsePack)>, device: &Device) -> Result<Self> {
        let mut end = 0;
        for &(r0, n, _) in &segments {
            if r0 < end {
                bail!("sparse corrections: segments overlap or are out of order");
            }
            end = r0 + n;
        }
        #[cfg(feature = "cuda")]
        let plan = match device {
            Device::Cuda(dev) => {
                let mut on_device = Vec::with_capacity(segments.len());
                for &(r0, n, pack) in &segments {
                    let Some((keys, vals)) = pack.cuda_buffers() else {
                        bail!("sparse corrections: a task pack is not on the GPU");
                    };
                    on_device.push((r0, n, keys, vals));
                }
                Some(super::cuda::upload_plan(dev, &on_device, TILE_ROWS)?)
            }
            _ => None,
        };
        #[cfg(not(feature = "cuda"))]
        let _ = device;
        Ok(Self {
            segments,
            end,
            #[cfg(feature = "cuda")]
            plan,
        })
    }

    /// Whether any task of the batch changes site `s`.
    pub fn touches(&self, s: usize) -> bool {
        self.segments.iter().any(|(_, _, p)| p.touches(s))
    }

    /// Adds the dense-layer corrections of site `s` to `y` (tokens × out) in place; `x` is the layer input.
    pub fn dense(&self, s: usize, x: &Tensor, y: &Tensor) -> Result<()> {
        if !self.touches(s) {
            return Ok(());
        }
        self.check_rows(x, y)?;
        y.inplace_op2(
            x,
            &SparseOp {
                batch: self,
                site: s,
                norm_eps: None,
            },
        )
    }

    /// Adds the LayerNorm corrections of site `s` to `y` in place; `x` is the norm's input.
    pub fn norm(&self, s: usize, eps: f64, x: &Tensor, y: &Tensor) -> Result<()> {
        if !self.touches(s) {
            return Ok(());
        }
        self.check_rows(x, y)?;
        y.inplace_op2(
            x,
            &SparseOp {
                batch: self,
                site: s,
                norm_eps: Some(eps),
            },
        )
    }

    /// Both tensors are (rows, features) with every segment inside the rows.
    fn check_rows(&self, x: &Tensor, y: &Tensor) -> Result<()> {
        let (rx, _) = x.dims2()?;
        let (ry, _) = y.dims2()?;
        if rx != ry || self.end > ry {
            bail!(
                "sparse corrections: {rx} input rows, {ry} output rows, segments up to row {}",
                self.end
            );
        }
        Ok(())
    }
}

struct SparseOp<'b, 'a> {
    batch: &'b SparseBatch<'a>,
    site: usize,
    norm_eps: Option<f64>,
}

impl InplaceOp2 for SparseOp<'_, '_> {
    fn name(&self) -> &'static str {
        "skillgraft-sparse-rows"
    }

    fn cpu_fwd(
        &self,
        ys: &mut CpuStorage,
        yl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<()> {
        let ((ya, yb), (xa, xb)) = match (yl.contiguous_offsets(), xl.contiguous_offsets()) {
            (Some(y), Some(x)) => (y, x),
            _ => bail!("sparse corrections: tensors must be contiguous"),
        };
        let (in_dim, out_dim) = (last(xl)?, last(yl)?);
        match (ys, xs) {
            (CpuStorage::F32(y), CpuStorage::F32(x)) => {
                self.cpu_rows(&x[xa..xb], &mut y[ya..yb], in_dim, out_dim, |v| v, |v| v)
            }
            (CpuStorage::F64(y), CpuStorage::F64(x)) => self.cpu_rows(
                &x[xa..xb],
                &mut y[ya..yb],
                in_dim,
                out_dim,
                |v| v as f32,
                |v| v as f64,
            ),
            (CpuStorage::BF16(y), CpuStorage::BF16(x)) => self.cpu_rows(
                &x[xa..xb],
                &mut y[ya..yb],
                in_dim,
                out_dim,
                bf16::to_f32,
                bf16::from_f32,
            ),
            (CpuStorage::F16(y), CpuStorage::F16(x)) => self.cpu_rows(
                &x[xa..xb],
                &mut y[ya..yb],
                in_dim,
                out_dim,
                f16::to_f32,
                f16::from_f32,
            ),
            _ => bail!("sparse corrections: unsupported dtypes"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &mut candle_core::CudaStorage,
        yl: &Layout,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<()> {
        let Some((plan, n_segs, n_tiles)) = &self.batch.plan else {
            bail!("sparse corrections: the batch plan is not on the GPU");
        };
        super::cuda::sparse_rows(
            ys,
            yl,
            xs,
            xl,
            super::cuda::SparseLaunch {
                plan,
                n_segs: *n_segs,
                n_tiles: *n_tiles,
                site: self.site as u32,
                tile_rows: TILE_ROWS as u32,
                norm_eps: self.norm_eps,
            },
        )
    }
}

fn last(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("sparse corrections: empty last dimension"),
    }
}

/// Slots of site `s` in a host pack: (output, entries as (column, value)) views.
struct HostSite<'p> {
    outs: &'p [u32],
    ptr: &'p [u32],
    cols: &'p [u32],
    vals: &'p [f32],
}

fn host_site<'p>(keys: &'p [u32], vals: &'p [f32], s: usize) -> Option<HostSite<'p>> {
    let dir = keys.get(4 * s..4 * s + 4)?;
    let (slots_at, n, cols_at, vals_at) = (
        dir[0] as usize,
        dir[1] as usize,
        dir[2] as usize,
        dir[3] as usize,
    );
    if n == 0 {
        return None;
    }
    let outs = &keys[slots_at..slots_at + n];
    let ptr = &keys[slots_at + n..slots_at + 2 * n + 1];
    let entries = ptr[n] as usize;
    Some(HostSite {
        outs,
        ptr,
        cols: &keys[cols_at..cols_at + entries],
        vals: &vals[vals_at..vals_at + entries],
    })
}

/// A tile of rows of one task on the CPU: its first row, the site's slots, and its output rows.
struct Tile<'p, 'y, T> {
    r0: usize,
    site: std::sync::Arc<HostSite<'p>>,
    ys: &'y mut [T],
}

impl SparseOp<'_, '_> {
    /// The CPU pass: tiles of rows in parallel, each adding its task's slots.
    fn cpu_rows<T: Copy + Send + Sync>(
        &self,
        x: &[T],
        y: &mut [T],
        in_dim: usize,
        out_dim: usize,
        to: impl Fn(T) -> f32 + Sync,
        from: impl Fn(f32) -> T + Sync,
    ) -> Result<()> {
        let rows = x.len() / in_dim;
        if y.len() != rows * out_dim {
            bail!("sparse corrections: input and output rows differ");
        }
        // Tiles of at most TILE_ROWS rows of one task; segments are sorted and disjoint, so are the tiles,
        // and each takes its own output rows.
        let mut tiles: Vec<Tile<'_, '_, T>> = Vec::new();
        let mut rest: &mut [T] = y;
        let mut at = 0;
        for &(r0, n, pack) in &self.batch.segments {
            let (keys, vals) = match &pack.data {
                PackData::Cpu { keys, vals } => (keys, vals),
                #[cfg(feature = "cuda")]
                PackData::Cuda { .. } => bail!("sparse corrections: a task pack is not on the CPU"),
            };
            if r0 + n > rows {
                bail!("sparse corrections: segment rows {r0}+{n} beyond the batch's {rows}");
            }
            let Some(site) = host_site(keys, vals, self.site) else {
                continue;
            };
            let site = std::sync::Arc::new(site);
            let mut r = r0;
            while r < r0 + n {
                let len = TILE_ROWS.min(r0 + n - r);
                let (_, tail) = std::mem::take(&mut rest).split_at_mut((r - at) * out_dim);
                let (ys, tail) = tail.split_at_mut(len * out_dim);
                rest = tail;
                at = r + len;
                tiles.push(Tile {
                    r0: r,
                    site: site.clone(),
                    ys,
                });
                r += len;
            }
        }
        let eps = self.norm_eps;
        tiles.into_par_iter().for_each(|tile| {
            let site = &tile.site;
            for (k, yr) in tile.ys.chunks_exact_mut(out_dim).enumerate() {
                let xr = &x[(tile.r0 + k) * in_dim..(tile.r0 + k + 1) * in_dim];
                match eps {
                    None => {
                        for (s, &o) in site.outs.iter().enumerate() {
                            let mut acc = 0f32;
                            for e in site.ptr[s] as usize..site.ptr[s + 1] as usize {
                                let c = site.cols[e] as usize;
                                let xv = if c < in_dim { to(xr[c]) } else { 1.0 };
                                acc += xv * site.vals[e];
                            }
                            let o = o as usize;
                            yr[o] = from(to(yr[o]) + acc);
                        }
                    }
                    Some(eps) => {
                        let n = in_dim as f32;
                        let mean = xr.iter().map(|&v| to(v)).sum::<f32>() / n;
                        let var = xr
                            .iter()
                            .map(|&v| (to(v) - mean) * (to(v) - mean))
                            .sum::<f32>()
                            / n;
                        let rstd = 1.0 / (var + eps as f32).sqrt();
                        for (s, &j) in site.outs.iter().enumerate() {
                            let j = j as usize;
                            let xhat = (to(xr[j]) - mean) * rstd;
                            let mut acc = 0f32;
                            for e in site.ptr[s] as usize..site.ptr[s + 1] as usize {
                                let v = if (site.cols[e] as usize) < in_dim {
                                    xhat
                                } else {
                                    1.0
                                };
                                acc += v * site.vals[e];
                            }
                            yr[j] = from(to(yr[j]) + acc);
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_tensors::det_f32 as det;
    use super::*;
    use candle_core::DType;

    /// Corrections equal a dense computation with each row's own weights.
    #[test]
    fn dense_and_norm_corrections_match_per_row_weights() {
        let (rows, ind, outd) = (5, 6, 4);
        let sites = [
            SiteKind::Dense {
                in_dim: ind,
                out_dim: outd,
            },
            SiteKind::Norm { dim: outd },
        ];
        let x = det(rows * ind, 1);
        let w = det(outd * ind, 2);
        let a = SparsePack::new(
            &sites,
            &[(
                0,
                SiteDelta {
                    weight: vec![(1, 0.5), (7, -0.25), (23, 2.0)],
                    bias: vec![(3, 1.5)],
                },
            )],
            &Device::Cpu,
        )
        .unwrap();
        let b = SparsePack::new(
            &sites,
            &[(
                1,
                SiteDelta {
                    weight: vec![(2, 0.75)],
                    bias: vec![(0, -1.0)],
                },
            )],
            &Device::Cpu,
        )
        .unwrap();
        let xt = Tensor::from_vec(x.clone(), (rows, ind), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w.clone(), (outd, ind), &Device::Cpu).unwrap();
        let y = xt.matmul(&wt.t().unwrap()).unwrap();
        let batch = SparseBatch::new(vec![(0, 2, &a), (2, 3, &b)], &Device::Cpu).unwrap();
        assert!(batch.touches(0) && batch.touches(1));
        batch.dense(0, &xt, &y).unwrap();
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for r in 0..rows {
            for i in 0..outd {
                let mut want = 0f32;
                for j in 0..ind {
                    let mut wij = w[i * ind + j];
                    if r < 2 {
                        wij += match i * ind + j {
                            1 => 0.5,
                            7 => -0.25,
                            23 => 2.0,
                            _ => 0.0,
                        };
                    }
                    want += x[r * ind + j] * wij;
                }
                if r < 2 && i == 3 {
                    want += 1.5;
                }
                assert!((got[r * outd + i] - want).abs() < 1e-5, "row {r} out {i}");
            }
        }
        // Norm: rows 2.. get γ[2] += 0.75, β[0] -= 1.
        let g = Tensor::ones(outd, DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros(outd, DType::F32, &Device::Cpu).unwrap();
        let yn = super::super::layer_norm(&y, &g, &z, 1e-5).unwrap();
        let before: Vec<f32> = yn.flatten_all().unwrap().to_vec1().unwrap();
        batch.norm(1, 1e-5, &y, &yn).unwrap();
        let after: Vec<f32> = yn.flatten_all().unwrap().to_vec1().unwrap();
        for r in 0..rows {
            for j in 0..outd {
                let (b0, a0) = (before[r * outd + j], after[r * outd + j]);
                let want = match (r >= 2, j) {
                    (true, 2) => b0 * 1.75,
                    (true, 0) => b0 - 1.0,
                    _ => b0,
                };
                assert!(
                    (a0 - want).abs() < 1e-5,
                    "row {r} feature {j}: {a0} vs {want}"
                );
            }
        }
    }
}
