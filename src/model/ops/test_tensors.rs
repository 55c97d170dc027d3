//! Tensors the ops' unit tests share: deterministic inputs and the largest difference between two results.

use candle_core::{DType, Tensor};

/// A deterministic pseudo-random f64 tensor on the CPU, values in [-1, 1): the device self-check's inputs
/// ([`super::check::det`]) at half scale.
pub(super) fn det(shape: &[usize], seed: u64) -> Tensor {
    (super::check::det(shape, seed).expect("tensor") * 0.5).expect("tensor")
}

/// [`det`]'s values for a flat length `n`.
pub(super) fn det_f64(n: usize, seed: u64) -> Vec<f64> {
    det(&[n], seed).to_vec1().expect("values")
}

/// [`det`]'s values for a flat length `n`, as f32.
pub(super) fn det_f32(n: usize, seed: u64) -> Vec<f32> {
    det(&[n], seed)
        .to_dtype(DType::F32)
        .and_then(|t| t.to_vec1())
        .expect("values")
}

/// The largest absolute difference between two tensors of one shape, in f64.
pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
