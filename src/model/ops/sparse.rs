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
//! One pass per touched layer covers every task of the batch, whatever their number: on CUDA as one kernel
//! launch whose blocks each take one tile of one task's rows; on the CPU (`sparse_cpu.rs`) in one of two ways
//! per (task, site), chosen when the task is packed from the site's density alone:
//!
//! - *sparse*: tiles of up to 32 rows of one task, the tile's inputs transposed so that each entry is one
//!   vector fused multiply-add over the tile's rows (the cost grows with the entries; per row and touched
//!   site there is also a fixed cost of transposing its used input columns and adding back its touched
//!   outputs);
//! - *dense delta*: a dense layer whose weight delta covers at least [`DENSE_SITE_DENSITY`] of the weight is
//!   scattered into a scratch ΔW shared by all tasks (zeroed again after), and that task's rows get
//!   `x ΔWᵀ + Δb` through the same unpacked-weights `x·Wᵀ` kernel as the base product (`xwt.rs`).
//!
//! Both compute each correction as one fused multiply-add chain over the layer's inputs in order (the dense
//! path's extra terms are exact zeros), then add it to the output: a row's result never depends on its batch
//! mates, its tile or the thread split, and the two CPU paths agree bit for bit wherever the `x·Wᵀ` kernel
//! runs (AVX2 + FMA or AVX-512; elsewhere the dense path's product goes through BLIS and agrees within
//! rounding). Memory per task is the pack alone (≈ 8 bytes per entry, as in the graft file); the dense path's
//! scratch (the largest layer's ΔW, 2.25 MiB on MiniLM) is one per engine thread, not per task.

use candle_core::{bail, CpuStorage, Device, InplaceOp2, Layout, Result, Tensor};
use half::{bf16, f16};

#[path = "sparse_cpu.rs"]
mod host;

/// Rows per tile of one CUDA block.
#[cfg(feature = "cuda")]
const TILE_ROWS: usize = 16;

/// A dense layer whose weight delta covers at least this share of its weight is corrected on the CPU by the
/// dense-delta path (f32 models only; see the module doc). The choice depends on the task's density at the
/// site alone, never on the rows of a batch.
///
/// Measured with `skillgraft bench --threads 2 --correction-crossover` (`src/cli/bench/engine.rs`): one
/// layer's correction of 32 and of 512 rows of one task by each path, for the encoder's three dense shapes
/// (384 → 384, 384 → 1536, 1536 → 384), at densities from 5% to 100% of the weight (random entries; the
/// two paths interleaved, the fastest of 15 runs each). On the 2-core Intel Xeon with AVX-512 of
/// `docs/large-grafts.md` (shared with other work), at 512 rows the two paths cost the same at 67%, 62% and
/// 32% of the weight (an earlier sitting on the code before its last sparse-path change: 50%, 59%, 34%);
/// at 32 rows the sparse path is faster at every density (the dense delta's product then reads the whole
/// ΔW for few rows: 1.24–1.42× the sparse path's time at 100%). 0.5 is the middle of the large-batch
/// crossovers; at 512 rows a site between 32% and 67% pays at most about 1.3× the cheaper path's
/// correction (at 32 rows a site at or above 0.5 pays up to 1.8× on the dense delta).
pub const DENSE_SITE_DENSITY: f64 = 0.5;

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
    /// Per site: corrected by the dense-delta path on the CPU (f32 only).
    dense: Vec<bool>,
    bytes: usize,
}

impl std::fmt::Debug for SparsePack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparsePack")
            .field("sites", &self.touched.iter().filter(|&&t| t).count())
            .field("dense_sites", &self.dense.iter().filter(|&&t| t).count())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl SparsePack {
    /// Packs a task's deltas; `sites[s]` is site `s`'s kind, `deltas` the touched sites. The pack lives on
    /// `device`; dense sites whose delta covers [`DENSE_SITE_DENSITY`] of the weight take the dense-delta
    /// path on the CPU.
    pub fn new(sites: &[SiteKind], deltas: &[(usize, SiteDelta)], device: &Device) -> Result<Self> {
        Self::with_dense_threshold(sites, deltas, device, DENSE_SITE_DENSITY)
    }

    /// [`SparsePack::new`] with another density threshold for the dense-delta path (0 = every touched dense
    /// site, above 1 = none), for tests and benchmarks.
    pub fn with_dense_threshold(
        sites: &[SiteKind],
        deltas: &[(usize, SiteDelta)],
        device: &Device,
        threshold: f64,
    ) -> Result<Self> {
        let (keys, vals, touched) = pack(sites, deltas)?;
        let mut dense = vec![false; sites.len()];
        for (s, d) in deltas {
            if let (Some(SiteKind::Dense { in_dim, out_dim }), true) =
                (sites.get(*s), touched.get(*s).copied().unwrap_or(false))
            {
                dense[*s] = d.weight.len() as f64 >= threshold * (in_dim * out_dim) as f64;
            }
        }
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
            dense,
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

    /// Whether site `s` is corrected by the dense-delta path on the CPU (for f32 models).
    pub fn dense_on_cpu(&self, s: usize) -> bool {
        self.dense.get(s).copied().unwrap_or(false)
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
        let (batch, site, eps) = (self.batch, self.site, self.norm_eps);
        let dims = (in_dim, out_dim);
        match (ys, xs) {
            (CpuStorage::F32(y), CpuStorage::F32(x)) => {
                host::rows_f32(batch, site, eps, &x[xa..xb], &mut y[ya..yb], dims)
            }
            (CpuStorage::F64(y), CpuStorage::F64(x)) => host::rows(
                batch,
                site,
                eps,
                false,
                (&x[xa..xb], &mut y[ya..yb]),
                dims,
                |v| v as f32,
                |v| v as f64,
            ),
            (CpuStorage::BF16(y), CpuStorage::BF16(x)) => host::rows(
                batch,
                site,
                eps,
                false,
                (&x[xa..xb], &mut y[ya..yb]),
                dims,
                bf16::to_f32,
                bf16::from_f32,
            ),
            (CpuStorage::F16(y), CpuStorage::F16(x)) => host::rows(
                batch,
                site,
                eps,
                false,
                (&x[xa..xb], &mut y[ya..yb]),
                dims,
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

#[cfg(test)]
#[path = "sparse_tests.rs"]
mod tests;
