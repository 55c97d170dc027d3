//! The CUDA side of the ops: launches of the kernels in `kernels.cu`, compiled to PTX by `build.rs` for
//! `CUDA_COMPUTE_CAP` and loaded once per device.
//!
//! Tensors reach the kernels as raw device pointers taken through cudarc's `device_ptr`/`device_ptr_mut` on
//! the launching stream, so its cross-stream event tracking still orders every read and write. Task packs
//! referenced from a batch plan are read indirectly by the kernels: they are created and used on the engine
//! thread's stream, which orders them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchArgs, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "skillgraft-kernels";
/// Threads per block of the row kernels (one warp per row).
const ROW_BLOCK: u32 = 128;
/// Threads per block of the sparse-correction kernels.
const SPARSE_BLOCK: u32 = 128;

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => bail!("skillgraft CUDA kernels: unsupported dtype {other:?}"),
    })
}

fn func(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(&format!("sg_{name}_{}", suffix(dtype)?), MODULE, PTX)?
        .into_cuda_function())
}

/// A scalar kernel argument.
#[derive(Clone, Copy)]
enum Scalar {
    U32(u32),
    U64(u64),
    F64(f64),
}

fn push_scalars<'a>(b: &mut LaunchArgs<'a>, scalars: &'a [Scalar]) {
    for s in scalars {
        match s {
            Scalar::U32(v) => b.arg(v),
            Scalar::U64(v) => b.arg(v),
            Scalar::F64(v) => b.arg(v),
        };
    }
}

fn offsets(l: &Layout) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => bail!("skillgraft CUDA kernels: expected a contiguous tensor"),
    }
}

/// A read pointer (with its event guard) to the contiguous data of `s` under `l`.
fn ptr<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let (a, _) = offsets(l)?;
    macro_rules! at {
        ($v:expr, $t:ty) => {{
            let (p, g) = $v.device_ptr(stream);
            Ok((p + (a * std::mem::size_of::<$t>()) as u64, g))
        }};
    }
    match &s.slice {
        CudaStorageSlice::F32(v) => at!(v, f32),
        CudaStorageSlice::F64(v) => at!(v, f64),
        CudaStorageSlice::BF16(v) => at!(v, half::bf16),
        CudaStorageSlice::F16(v) => at!(v, half::f16),
        CudaStorageSlice::U32(v) => at!(v, u32),
        _ => bail!(
            "skillgraft CUDA kernels: unsupported storage dtype {:?}",
            s.dtype()
        ),
    }
}

/// A write pointer (with its event guard) to the contiguous data of `s` under `l`.
fn ptr_mut<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let (a, _) = offsets(l)?;
    macro_rules! at {
        ($v:expr, $t:ty) => {{
            let (p, g) = $v.device_ptr_mut(stream);
            Ok((p + (a * std::mem::size_of::<$t>()) as u64, g))
        }};
    }
    match &mut s.slice {
        CudaStorageSlice::F32(v) => at!(v, f32),
        CudaStorageSlice::F64(v) => at!(v, f64),
        CudaStorageSlice::BF16(v) => at!(v, half::bf16),
        CudaStorageSlice::F16(v) => at!(v, half::f16),
        other => bail!(
            "skillgraft CUDA kernels: unsupported output dtype {:?}",
            std::mem::discriminant(other)
        ),
    }
}

/// A fresh, uninitialized output of `n` elements of `dtype` (every kernel writes all of it).
fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<CudaStorage> {
    // SAFETY: the kernels below write every element before anything reads it.
    unsafe {
        Ok(match dtype {
            DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(n)?, dev.clone()),
            DType::F64 => CudaStorage::wrap_cuda_slice(dev.alloc::<f64>(n)?, dev.clone()),
            DType::BF16 => CudaStorage::wrap_cuda_slice(dev.alloc::<half::bf16>(n)?, dev.clone()),
            DType::F16 => CudaStorage::wrap_cuda_slice(dev.alloc::<half::f16>(n)?, dev.clone()),
            other => bail!("skillgraft CUDA kernels: unsupported dtype {other:?}"),
        })
    }
}

fn same_dtype(s: &[&CudaStorage]) -> Result<DType> {
    let d = s[0].dtype();
    if s.iter().any(|x| x.dtype() != d) {
        bail!("skillgraft CUDA kernels: operands have different dtypes");
    }
    Ok(d)
}

fn rows_of(l: &Layout) -> Result<(u32, u32)> {
    let d = match l.dims().last() {
        Some(&d) if d > 0 => d,
        _ => bail!("skillgraft CUDA kernels: empty last dimension"),
    };
    Ok(((l.shape().elem_count() / d) as u32, d as u32))
}

fn row_config(rows: u32) -> LaunchConfig {
    let per_block = ROW_BLOCK / 32;
    LaunchConfig {
        grid_dim: (rows.div_ceil(per_block).max(1), 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn flat_config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n.div_ceil(256)).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs kernel `name` on inputs `ins` into a fresh output shaped like `ins[0]`; `scalars(rows, d, n)` gives
/// the trailing scalar arguments and `config(rows, n)` the launch shape.
fn row_op(
    name: &str,
    ins: &[(&CudaStorage, &Layout)],
    scalars: impl FnOnce(u32, u32, u64) -> Vec<Scalar>,
    config: impl FnOnce(u32, usize) -> LaunchConfig,
) -> Result<(CudaStorage, Shape)> {
    let dev = ins[0].0.device.clone();
    let dtype = same_dtype(&ins.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
    let (rows, d) = rows_of(ins[0].1)?;
    let n = ins[0].1.shape().elem_count();
    let mut out = alloc(&dev, dtype, n)?;
    let stream = dev.cuda_stream();
    let f = func(&dev, name, dtype)?;
    let scalars = scalars(rows, d, n as u64);
    {
        let mut guards = Vec::new();
        let mut ptrs = Vec::new();
        for (s, l) in ins {
            let (p, g) = ptr(s, l, &stream)?;
            ptrs.push(p);
            guards.push(g);
        }
        let out_layout = Layout::contiguous(ins[0].1.shape());
        let (po, go) = ptr_mut(&mut out, &out_layout, &stream)?;
        let mut b = stream.launch_builder(&f);
        for p in &ptrs {
            b.arg(p);
        }
        b.arg(&po);
        push_scalars(&mut b, &scalars);
        // SAFETY: pointers and sizes describe live, contiguous buffers of the kernel's element type.
        unsafe { b.launch(config(rows, n)) }.w()?;
        drop(go);
        drop(guards);
    }
    Ok((out, ins[0].1.shape().clone()))
}

pub(super) fn layer_norm(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    let (_, d) = rows_of(l1)?;
    if l2.shape().elem_count() != d as usize || l3.shape().elem_count() != d as usize {
        bail!("layer norm: gamma/beta do not match the last dimension {d}");
    }
    row_op(
        "layer_norm_fwd",
        &[(s1, l1), (s2, l2), (s3, l3)],
        |rows, d, _| vec![Scalar::U32(rows), Scalar::U32(d), Scalar::F64(eps)],
        |rows, _| row_config(rows),
    )
}

pub(super) fn layer_norm_dx(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    eps: f64,
) -> Result<(CudaStorage, Shape)> {
    row_op(
        "layer_norm_bwd_dx",
        &[(s1, l1), (s2, l2), (s3, l3)],
        |rows, d, _| vec![Scalar::U32(rows), Scalar::U32(d), Scalar::F64(eps)],
        |rows, _| row_config(rows),
    )
}

pub(super) fn softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    row_op(
        "softmax_fwd",
        &[(s, l)],
        |rows, d, _| vec![Scalar::U32(rows), Scalar::U32(d)],
        |rows, _| row_config(rows),
    )
}

pub(super) fn softmax_backward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    row_op(
        "softmax_bwd",
        &[(s1, l1), (s2, l2)],
        |rows, d, _| vec![Scalar::U32(rows), Scalar::U32(d)],
        |rows, _| row_config(rows),
    )
}

pub(super) fn gelu(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    row_op(
        "gelu_fwd",
        &[(s, l)],
        |_, _, n| vec![Scalar::U64(n)],
        |_, n| flat_config(n),
    )
}

pub(super) fn gelu_backward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    row_op(
        "gelu_bwd",
        &[(s1, l1), (s2, l2)],
        |_, _, n| vec![Scalar::U64(n)],
        |_, n| flat_config(n),
    )
}

/// Copies the f32 values under `l` to the host, lets `f` change them, and copies them back in place.
pub(super) fn host_write(
    s: &mut CudaStorage,
    l: &Layout,
    f: &mut dyn FnMut(&mut [f32]),
) -> Result<()> {
    let (a, b) = offsets(l)?;
    let dev = s.device.clone();
    let CudaStorageSlice::F32(slice) = &mut s.slice else {
        bail!("in-place write: tensor is not f32");
    };
    let mut host = dev.clone_dtoh(&slice.slice(a..b))?;
    f(&mut host);
    dev.memcpy_htod(&host, &mut slice.slice_mut(a..b))?;
    Ok(())
}

pub(super) fn scatter_set(
    dst: &mut CudaStorage,
    dl: &Layout,
    idx: &CudaStorage,
    il: &Layout,
    src: &CudaStorage,
    sl: &Layout,
) -> Result<()> {
    let dev = dst.device.clone();
    let dtype = dst.dtype();
    if src.dtype() != dtype || idx.dtype() != DType::U32 {
        bail!("scatter: indices must be u32 and values of the destination's dtype");
    }
    let n = il.shape().elem_count();
    let stream = dev.cuda_stream();
    let f = func(&dev, "scatter_set", dtype)?;
    let (pi, gi) = ptr(idx, il, &stream)?;
    let (ps, gs) = ptr(src, sl, &stream)?;
    let (pd, gd) = ptr_mut(dst, dl, &stream)?;
    let n32 = n as u32;
    let mut b = stream.launch_builder(&f);
    b.arg(&pd);
    b.arg(&pi);
    b.arg(&ps);
    b.arg(&n32);
    // SAFETY: indices were checked against the destination's size by the caller (graft validation).
    unsafe { b.launch(flat_config(n)) }.w()?;
    drop((gd, gi, gs));
    Ok(())
}

/// One segment of a batch plan: first row, rows, and the task pack's two device buffers.
pub(super) type PlanSegment<'a> = (usize, usize, &'a CudaSlice<u32>, &'a CudaSlice<f32>);

/// Uploads a batch plan: per segment {keys pointer, values pointer, row0 << 32 | rows}, then one u64 per tile
/// of at most `tile_rows` rows. Returns the buffer, the number of segments and the number of tiles.
pub(super) fn upload_plan(
    dev: &CudaDevice,
    segments: &[PlanSegment<'_>],
    tile_rows: usize,
) -> Result<(CudaSlice<u64>, u32, u32)> {
    let stream = dev.cuda_stream();
    let mut plan = Vec::with_capacity(segments.len() * 4);
    let mut tiles = Vec::new();
    for (seg, &(r0, n, keys, vals)) in segments.iter().enumerate() {
        let (pk, _gk) = keys.device_ptr(&stream);
        let (pv, _gv) = vals.device_ptr(&stream);
        plan.extend_from_slice(&[pk, pv, ((r0 as u64) << 32) | n as u64]);
        for t in 0..n.div_ceil(tile_rows) {
            tiles.push(((seg as u64) << 32) | t as u64);
        }
    }
    let (n_segs, n_tiles) = (segments.len() as u32, tiles.len() as u32);
    plan.extend_from_slice(&tiles);
    if plan.is_empty() {
        plan.push(0);
    }
    Ok((dev.clone_htod(&plan)?, n_segs, n_tiles))
}

/// One sparse-correction pass over a layer's output.
pub(super) struct SparseLaunch<'a> {
    pub(super) plan: &'a CudaSlice<u64>,
    pub(super) n_segs: u32,
    pub(super) n_tiles: u32,
    pub(super) site: u32,
    pub(super) tile_rows: u32,
    pub(super) norm_eps: Option<f64>,
}

pub(super) fn sparse_rows(
    ys: &mut CudaStorage,
    yl: &Layout,
    xs: &CudaStorage,
    xl: &Layout,
    launch: SparseLaunch<'_>,
) -> Result<()> {
    if launch.n_tiles == 0 {
        return Ok(());
    }
    let dev = ys.device.clone();
    let dtype = ys.dtype();
    if xs.dtype() != dtype {
        bail!("sparse corrections: input and output dtypes differ");
    }
    let (_, in_dim) = rows_of(xl)?;
    let (_, out_dim) = rows_of(yl)?;
    let stream = dev.cuda_stream();
    let (px, gx) = ptr(xs, xl, &stream)?;
    let (py, gy) = ptr_mut(ys, yl, &stream)?;
    let (pp, gp) = launch.plan.device_ptr(&stream);
    let rt = launch.tile_rows;
    let acc_bytes = if dtype == DType::F64 { 8 } else { 4 };
    let config = LaunchConfig {
        grid_dim: (launch.n_tiles, 1, 1),
        block_dim: (SPARSE_BLOCK, 1, 1),
        shared_mem_bytes: if launch.norm_eps.is_some() {
            2 * acc_bytes * rt
        } else {
            0
        },
    };
    match launch.norm_eps {
        None => {
            let f = func(&dev, "sparse_dense", dtype)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&px);
            b.arg(&py);
            b.arg(&in_dim);
            b.arg(&out_dim);
            b.arg(&launch.site);
            b.arg(&pp);
            b.arg(&launch.n_segs);
            b.arg(&rt);
            // SAFETY: the plan's segments lie within the batch's rows (checked when it was built).
            unsafe { b.launch(config) }.w()?;
        }
        Some(eps) => {
            let f = func(&dev, "sparse_norm", dtype)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&px);
            b.arg(&py);
            b.arg(&in_dim);
            b.arg(&eps);
            b.arg(&launch.site);
            b.arg(&pp);
            b.arg(&launch.n_segs);
            b.arg(&rt);
            // SAFETY: as above.
            unsafe { b.launch(config) }.w()?;
        }
    }
    drop((gx, gy, gp));
    Ok(())
}
