//! The CPU passes of the sparse per-row corrections (see the parent module for what they compute): vector
//! tiles over rows for the sparse path, and the dense-delta path for dense sites of f32 models.
//!
//! Sparse path. A tile is up to [`CPU_TILE_ROWS`] rows of one task. Its inputs are transposed into a
//! (columns + 1) × 32 panel whose last row is all ones (the bias "column"), so each of the site's entries
//! (column c, value v) is one vector step `acc = fma(panel[c], v, acc)` over the tile's rows, and each
//! touched output's correction is that chain over its entries in column order, then added to the output.
//! Lanes are rows, so a row's chain never sees its tile mates: the result of a row is the same in any tile,
//! in any batch, on any of the vector kernels (fused multiply-add is exactly rounded everywhere).
//!
//! Dense-delta path. The task's entries at the site are scattered into a scratch ΔW (out × in) and Δb that
//! are zero everywhere else; its rows get `x ΔWᵀ + Δb` from [`par_matmul`] (the unpacked-weights `x·Wᵀ`
//! kernel where the CPU has AVX2 + FMA: per output one fused multiply-add chain over every column in
//! order, which equals the sparse chain because the added terms are exact zeros), added at the touched
//! outputs; then the scratch is zeroed again at the same places.

use super::{PackData, SparseBatch, SparsePack};
use crate::model::ops::gemm::{par_matmul, Mat};
use candle_core::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// Rows per CPU tile: the lanes of one entry's vector step (2 AVX-512 or 4 AVX2 registers).
const CPU_TILE_ROWS: usize = 32;

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
    let outs = keys.get(slots_at..slots_at + n)?;
    let ptr = keys.get(slots_at + n..slots_at + 2 * n + 1)?;
    let entries = ptr[n] as usize;
    Some(HostSite {
        outs,
        ptr,
        cols: keys.get(cols_at..cols_at + entries)?,
        vals: vals.get(vals_at..vals_at + entries)?,
    })
}

fn host_buffers(pack: &SparsePack) -> Result<(&[u32], &[f32])> {
    match &pack.data {
        PackData::Cpu { keys, vals } => Ok((keys, vals)),
        #[cfg(feature = "cuda")]
        PackData::Cuda { .. } => bail!("sparse corrections: a task pack is not on the CPU"),
    }
}

/// A task's slots at one site, and the input columns its entries read (sorted, without the bias column).
struct SegmentSite<'p> {
    site: HostSite<'p>,
    used: Vec<u32>,
}

/// A tile of rows of one task: its first row, the site's slots, and its output rows.
struct Tile<'p, 'y, T> {
    r0: usize,
    seg: Arc<SegmentSite<'p>>,
    ys: &'y mut [T],
}

/// A thread's buffers for the sparse path: the transposed input panel and the slots' sums.
#[derive(Default)]
struct TileScratch {
    panel: Vec<f32>,
    sums: Vec<f32>,
}

thread_local! {
    static TILE_SCRATCH: RefCell<TileScratch> = RefCell::new(TileScratch::default());
    /// The dense-delta path's ΔW and Δb, zero outside a call.
    static DELTA_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The f32 pass: segments whose pack takes the dense-delta path at this site go through it, the others
/// through the sparse tiles.
pub(super) fn rows_f32(
    batch: &SparseBatch<'_>,
    site: usize,
    eps: Option<f64>,
    x: &[f32],
    y: &mut [f32],
    (in_dim, out_dim): (usize, usize),
) -> Result<()> {
    let dense = eps.is_none();
    rows(
        batch,
        site,
        eps,
        dense,
        (x, &mut *y),
        (in_dim, out_dim),
        |v| v,
        |v| v,
    )?;
    if !dense {
        return Ok(());
    }
    for &(r0, n, pack) in &batch.segments {
        if !pack.dense_on_cpu(site) {
            continue;
        }
        let (keys, vals) = host_buffers(pack)?;
        let Some(hs) = host_site(keys, vals, site) else {
            continue;
        };
        // `rows` checked that every segment lies inside the batch.
        dense_delta(
            &hs,
            &x[r0 * in_dim..(r0 + n) * in_dim],
            &mut y[r0 * out_dim..(r0 + n) * out_dim],
            (in_dim, out_dim),
        )?;
    }
    Ok(())
}

/// The sparse pass for every segment (but those on the dense-delta path when `skip_dense`): tiles of rows
/// in parallel, each adding its task's slots.
#[allow(clippy::too_many_arguments)]
pub(super) fn rows<T: Copy + Send + Sync>(
    batch: &SparseBatch<'_>,
    site: usize,
    eps: Option<f64>,
    skip_dense: bool,
    (x, y): (&[T], &mut [T]),
    (in_dim, out_dim): (usize, usize),
    to: impl Fn(T) -> f32 + Sync,
    from: impl Fn(f32) -> T + Sync,
) -> Result<()> {
    let rows = x.len() / in_dim;
    if y.len() != rows * out_dim {
        bail!("sparse corrections: input and output rows differ");
    }
    // Tiles of at most CPU_TILE_ROWS rows of one task; segments are sorted and disjoint, so are the tiles,
    // and each takes its own output rows.
    let mut tiles: Vec<Tile<'_, '_, T>> = Vec::new();
    let mut rest: &mut [T] = y;
    let mut at = 0;
    for &(r0, n, pack) in &batch.segments {
        let (keys, vals) = host_buffers(pack)?;
        if r0 + n > rows {
            bail!("sparse corrections: segment rows {r0}+{n} beyond the batch's {rows}");
        }
        if skip_dense && pack.dense_on_cpu(site) {
            continue;
        }
        let Some(hs) = host_site(keys, vals, site) else {
            continue;
        };
        if hs.outs.iter().any(|&o| o as usize >= out_dim)
            || hs.cols.iter().any(|&c| c as usize > in_dim)
        {
            bail!("sparse corrections: a pack does not fit this layer's {in_dim} → {out_dim}");
        }
        // Only the columns some entry reads are transposed into a tile's panel.
        let used = if eps.is_none() {
            let mut seen = vec![false; in_dim];
            for &c in hs.cols {
                if let Some(f) = seen.get_mut(c as usize) {
                    *f = true;
                }
            }
            (0..in_dim as u32).filter(|&c| seen[c as usize]).collect()
        } else {
            Vec::new()
        };
        let seg = Arc::new(SegmentSite { site: hs, used });
        let mut r = r0;
        while r < r0 + n {
            let len = CPU_TILE_ROWS.min(r0 + n - r);
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((r - at) * out_dim);
            let (ys, tail) = tail.split_at_mut(len * out_dim);
            rest = tail;
            at = r + len;
            tiles.push(Tile {
                r0: r,
                seg: seg.clone(),
                ys,
            });
            r += len;
        }
    }
    tiles.into_par_iter().for_each(|tile| match eps {
        None => dense_tile(tile, x, (in_dim, out_dim), &to, &from),
        Some(eps) => norm_tile(tile, x, (in_dim, out_dim), eps, &to, &from),
    });
    Ok(())
}

/// One tile of a dense layer's sparse correction.
fn dense_tile<T: Copy>(
    tile: Tile<'_, '_, T>,
    x: &[T],
    (in_dim, out_dim): (usize, usize),
    to: &impl Fn(T) -> f32,
    from: &impl Fn(f32) -> T,
) {
    const L: usize = CPU_TILE_ROWS;
    let len = tile.ys.len() / out_dim;
    let site = &tile.seg.site;
    let mut fresh = TileScratch::default();
    TILE_SCRATCH.with(|cell| {
        let mut held = cell.try_borrow_mut();
        let scratch = match held.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut fresh,
        };
        grow(&mut scratch.panel, (in_dim + 1) * L);
        grow(&mut scratch.sums, site.outs.len() * L);
        let panel = &mut scratch.panel[..(in_dim + 1) * L];
        // Column by column (contiguous writes; the tile's rows stay in the L1 cache). Columns no entry
        // reads are left as they are: nothing reads them.
        let rows = &x[tile.r0 * in_dim..(tile.r0 + len) * in_dim];
        for &c in &tile.seg.used {
            let c = c as usize;
            let dst = &mut panel[c * L..c * L + L];
            for (l, d) in dst.iter_mut().enumerate() {
                *d = if l < len {
                    to(rows[l * in_dim + c])
                } else {
                    0.0
                };
            }
        }
        panel[in_dim * L..].fill(1.0);
        let sums = &mut scratch.sums[..site.outs.len() * L];
        slot_sums(panel, site, sums);
        for (s, &o) in site.outs.iter().enumerate() {
            let o = o as usize;
            for (l, &acc) in sums[s * L..s * L + len].iter().enumerate() {
                let v = &mut tile.ys[l * out_dim + o];
                *v = from(to(*v) + acc);
            }
        }
    });
}

/// Per slot of `site`, the 32 lanes' chains `fma(panel[c], v, …)` over its entries, into `sums`.
fn slot_sums(panel: &[f32], site: &HostSite<'_>, sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::super::xwt::{kernels, Kernel};
        match kernels().last() {
            // SAFETY: the CPU has the features these builds enable.
            Some(Kernel::Avx512) => return unsafe { slot_sums_avx512(panel, site, sums) },
            // SAFETY: as above.
            Some(Kernel::Avx2) => return unsafe { slot_sums_avx2(panel, site, sums) },
            None => {}
        }
    }
    slot_sums_body(panel, site, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn slot_sums_avx512(panel: &[f32], site: &HostSite<'_>, sums: &mut [f32]) {
    slot_sums_body(panel, site, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn slot_sums_avx2(panel: &[f32], site: &HostSite<'_>, sums: &mut [f32]) {
    slot_sums_body(panel, site, sums)
}

/// Slots whose chains run side by side: each chain waits on its previous fused multiply-add (4 cycles), so
/// 4 slots × 2 AVX-512 registers (or 4 AVX2 ones) keep both FMA units busy. Each slot's own chain keeps its
/// entries' order.
const SLOTS_AT_ONCE: usize = 4;

#[inline(always)]
fn slot_sums_body(panel: &[f32], site: &HostSite<'_>, sums: &mut [f32]) {
    const L: usize = CPU_TILE_ROWS;
    const G: usize = SLOTS_AT_ONCE;
    // One entry's step: `acc = fma(panel[c], v, acc)` over the lanes. Columns were checked against the
    // panel's rows when the tiles were cut.
    #[inline(always)]
    fn step(acc: &mut [f32; L], panel: &[f32], c: u32, v: f32) {
        let c = c as usize;
        if let Some(row) = panel.get(c * L..c * L + L) {
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = p.mul_add(v, *a);
            }
        }
    }
    let n = site.outs.len().min(sums.len() / L);
    let (cols, vals) = (site.cols, site.vals);
    let mut s = 0;
    while s + G <= n {
        let mut acc = [[0f32; L]; G];
        let start: [usize; G] = std::array::from_fn(|g| site.ptr[s + g] as usize);
        let end: [usize; G] = std::array::from_fn(|g| site.ptr[s + g + 1] as usize);
        let common = (0..G).map(|g| end[g] - start[g]).min().unwrap_or(0);
        for k in 0..common {
            for g in 0..G {
                let e = start[g] + k;
                step(&mut acc[g], panel, cols[e], vals[e]);
            }
        }
        for g in 0..G {
            for e in start[g] + common..end[g] {
                step(&mut acc[g], panel, cols[e], vals[e]);
            }
            sums[(s + g) * L..(s + g + 1) * L].copy_from_slice(&acc[g]);
        }
        s += G;
    }
    for s in s..n {
        let mut acc = [0f32; L];
        for e in site.ptr[s] as usize..site.ptr[s + 1] as usize {
            step(&mut acc, panel, cols[e], vals[e]);
        }
        sums[s * L..(s + 1) * L].copy_from_slice(&acc);
    }
}

/// One tile of a LayerNorm's correction: `y[r, j] += x̂[r, j] Δγ[j] + Δβ[j]`, row by row.
fn norm_tile<T: Copy>(
    tile: Tile<'_, '_, T>,
    x: &[T],
    (in_dim, out_dim): (usize, usize),
    eps: f64,
    to: &impl Fn(T) -> f32,
    from: &impl Fn(f32) -> T,
) {
    let site = &tile.seg.site;
    for (k, yr) in tile.ys.chunks_exact_mut(out_dim).enumerate() {
        let xr = &x[(tile.r0 + k) * in_dim..(tile.r0 + k + 1) * in_dim];
        let n = in_dim as f32;
        let mean = lane_sum(xr, to) / n;
        let var = lane_sum(xr, |v| {
            let d = to(v) - mean;
            d * d
        }) / n;
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

/// `Σ f(v)` over a row in 16 interleaved partial sums, added up in a fixed order at the end: one
/// dependent add per 16 values instead of per value, and the same result for a row wherever it is.
#[inline(always)]
fn lane_sum<T: Copy>(xr: &[T], f: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xr.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    acc.iter().sum()
}

/// The dense-delta path for one task's rows `x` (n × in) and outputs `y` (n × out) at one site.
fn dense_delta(
    site: &HostSite<'_>,
    x: &[f32],
    y: &mut [f32],
    (in_dim, out_dim): (usize, usize),
) -> Result<()> {
    let n = x.len() / in_dim;
    if n == 0 {
        return Ok(());
    }
    if site.outs.iter().any(|&o| o as usize >= out_dim) {
        bail!("sparse corrections: a pack does not fit this layer's {in_dim} → {out_dim}");
    }
    let mut fresh = (Vec::new(), Vec::new());
    DELTA_SCRATCH.with(|cell| {
        let mut held = cell.try_borrow_mut();
        let (dw, db) = match held.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut fresh,
        };
        grow(dw, in_dim * out_dim);
        grow(db, out_dim);
        let (dw, db) = (&mut dw[..in_dim * out_dim], &mut db[..out_dim]);
        if let Err(e) = scatter(site, dw, db, in_dim, true) {
            // Whatever was written must not reach another task.
            dw.fill(0.0);
            db.fill(0.0);
            return Err(e);
        }
        let prod = par_matmul(
            n,
            out_dim,
            in_dim,
            1.0f32,
            Mat::n(x, in_dim),
            Mat::t(dw, in_dim),
            Some(db),
            |_, _, _| {},
        );
        scatter(site, dw, db, in_dim, false)?;
        for &o in site.outs {
            let o = o as usize;
            for r in 0..n {
                y[r * out_dim + o] += prod[r * out_dim + o];
            }
        }
        Ok(())
    })
}

/// Writes the site's entries into the zero scratch (`set`), or zeroes them again.
fn scatter(
    site: &HostSite<'_>,
    dw: &mut [f32],
    db: &mut [f32],
    in_dim: usize,
    set: bool,
) -> Result<()> {
    for (s, &o) in site.outs.iter().enumerate() {
        let o = o as usize;
        for e in site.ptr[s] as usize..site.ptr[s + 1] as usize {
            let c = site.cols[e] as usize;
            let v = if set { site.vals[e] } else { 0.0 };
            let slot = if c < in_dim {
                dw.get_mut(o * in_dim + c)
            } else {
                db.get_mut(o)
            };
            match slot {
                Some(d) => *d = v,
                None => bail!("sparse corrections: a pack entry outside the layer"),
            }
        }
    }
    Ok(())
}
