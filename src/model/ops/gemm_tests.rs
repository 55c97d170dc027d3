//! Tests of the CPU matrix products ([`super`]): against naive loops, in both paths, with strided
//! destinations, and for rows that must not depend on their batch mates.

use super::super::test_tensors::det_f64 as det;
use super::*;

/// `op(a) · op(b)` in f32 through [`par_matmul`], from f64 test operands.
fn par_matmul_f32(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda, ta): (&[f64], usize, bool),
    (b, ldb, tb): (&[f64], usize, bool),
    bias: Option<&[f32]>,
    epilogue: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let mat = |data, ld, trans| Mat { data, ld, trans };
    par_matmul(
        m,
        n,
        k,
        alpha,
        mat(&a32, lda, ta),
        mat(&b32, ldb, tb),
        bias,
        epilogue,
    )
}

fn naive(m: usize, n: usize, k: usize, a: Mat<'_, f64>, b: Mat<'_, f64>) -> Vec<f64> {
    let at = |x: &Mat<'_, f64>, r: usize, c: usize| {
        if x.trans {
            x.data[c * x.ld + r]
        } else {
            x.data[r * x.ld + c]
        }
    };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
        }
    }
    c
}

/// Every transpose combination, odd sizes, row and column splits, padded strides, in f64 and f32, on
/// two threads (so blocks run concurrently).
#[test]
fn products_match_a_naive_loop() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (300, 40, 33), (9, 700, 65), (0, 4, 4)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (lda, ldb) = (if ta { m } else { k } + 3, if tb { k } else { n } + 2);
                let a = det(lda * if ta { k } else { m }, 1);
                let b = det(ldb * if tb { n } else { k }, 2);
                let (am, bm) = (
                    Mat {
                        data: &a,
                        ld: lda,
                        trans: ta,
                    },
                    Mat {
                        data: &b,
                        ld: ldb,
                        trans: tb,
                    },
                );
                let want = naive(m, n, k, am, bm);
                let got = par_matmul(m, n, k, 1.0, am, bm, None, |_, _, _| {});
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-12, "f64 {m}x{n}x{k} {ta} {tb}: {err}");
                // alpha 1 takes the unpacked-weights kernel for `x Wᵀ` where the CPU has it; the bias is
                // added before the epilogue (which divides by alpha here).
                let bias: Vec<f32> = det(n, 3).iter().map(|&v| v as f32).collect();
                for alpha in [1.0f32, 2.0] {
                    let got = par_matmul_f32(
                        (m, n, k),
                        alpha,
                        (&a, lda, ta),
                        (&b, ldb, tb),
                        Some(&bias),
                        |_, _, seg| seg.iter_mut().for_each(|v| *v /= alpha),
                    );
                    let err = got
                        .iter()
                        .zip(&want)
                        .enumerate()
                        .map(|(i, (x, y))| {
                            (*x as f64 - y - bias[i % n.max(1)] as f64 / alpha as f64).abs()
                        })
                        .fold(0.0, f64::max);
                    assert!(err < 1e-4, "f32 {m}x{n}x{k} {ta} {tb} alpha {alpha}: {err}");
                }
            }
        }
    });
}

#[test]
fn strided_destination_and_accumulation() {
    let (m, n, k) = (5, 3, 4);
    let a = det(m * k, 3);
    let b = det(k * n, 4);
    let want = naive(m, n, k, Mat::n(&a, k), Mat::n(&b, n));
    let mut c = vec![1.0; m * 8];
    gemm_into(
        m,
        n,
        k,
        1.0,
        Mat::n(&a, k),
        Mat::n(&b, n),
        &mut c[2..],
        8,
        true,
    );
    for i in 0..m {
        for j in 0..n {
            assert!((c[2 + i * 8 + j] - 1.0 - want[i * n + j]).abs() < 1e-12);
        }
        assert_eq!(c[i * 8], 1.0, "columns outside the block are untouched");
    }
}

/// The shapes that take BLIS's packing path (see [`prefer_packed`]) give the naive loop's result, with
/// padded strides, accumulation, a column block of a wider destination, in f64 and f32.
#[test]
fn packed_path_matches_a_naive_loop() {
    #[cfg(skillgraft_blis)]
    assert!(blas::Runtime::packed().is_some(), "the linked BLIS is 0.9");
    let cases = [
        (40, 128, 900, false, true),
        (7, 130, 300, false, true),
        (200, 140, 70, true, false),
        (64, 128, 600, false, false),
    ];
    for &(m, n, k, ta, tb) in &cases {
        assert!(
            prefer_packed(n, k, ta, tb),
            "{m}x{n}x{k} takes the packed path"
        );
        let (lda, ldb, ldc) = (
            if ta { m } else { k } + 3,
            if tb { k } else { n } + 1,
            n + 5,
        );
        let a = det(lda * if ta { k } else { m }, 5);
        let b = det(ldb * if tb { n } else { k }, 6);
        let am = Mat {
            data: &a,
            ld: lda,
            trans: ta,
        };
        let bm = Mat {
            data: &b,
            ld: ldb,
            trans: tb,
        };
        let want = naive(m, n, k, am, bm);
        let mut c = vec![0.5; m * ldc];
        gemm_into(m, n, k, 1.0, am, bm, &mut c[2..], ldc, true);
        for i in 0..m {
            for j in 0..n {
                let got = c[2 + i * ldc + j] - 0.5;
                assert!((got - want[i * n + j]).abs() < 1e-12, "f64 {m}x{n}x{k}");
            }
            assert_eq!(c[i * ldc], 0.5, "columns outside the block are untouched");
        }
        let got = par_matmul_f32(
            (m, n, k),
            1.0,
            (&a, lda, ta),
            (&b, ldb, tb),
            None,
            |_, _, _| {},
        );
        let err = got
            .iter()
            .zip(&want)
            .map(|(x, y)| (*x as f64 - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-3, "f32 {m}x{n}x{k}: {err}");
    }
    assert!(!prefer_packed(384, 384, false, true), "x Wᵀ, square weight");
    assert!(
        !prefer_packed(1536, 384, false, true),
        "x Wᵀ, short inner dimension"
    );
    assert!(
        !prefer_packed(64, 512, true, false),
        "attention's per-head products"
    );
    assert!(
        !prefer_packed(1536, 384, false, false),
        "dx, short inner dimension"
    );
}

/// A row's result does not depend on how many other rows share the product (a text's output must
/// not depend on its batch mates): on the model's path for every dense layer, and on BLIS's packing path.
/// BLIS's own small-matrix ("sup") path is used only while one dimension is below BLIS's thresholds, and those
/// depend on the CPU: on Intel's AVX-512 configuration a 384×384 `x Wᵀ` runs "sup" at 1 row and the packing
/// path at 300 (different rounding), while on Zen both stay "sup". So BLIS's small-matrix path is checked on
/// shapes where a dimension is below every configuration's thresholds (attention's per-head products), and
/// dense `x Wᵀ` products, which the model never sends to BLIS on x86-64 (see [`super::xwt`]), on the model's
/// path only.
#[test]
fn rows_do_not_depend_on_their_batch_mates() {
    let operands = |n: usize, k: usize| {
        let x: Vec<f32> = det(300 * k, 7).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = det(n * k, 8).iter().map(|&v| v as f32).collect();
        (x, w)
    };
    for (n, k) in [(384, 1536), (384, 384), (1536, 384)] {
        let (x, w) = operands(n, k);
        let product = |m: usize| {
            let mut c = vec![0.0f32; m * n];
            gemm_into(m, n, k, 1.0, Mat::n(&x, k), Mat::t(&w, k), &mut c, n, false);
            c
        };
        // The model's path: blocks over the pool, `x Wᵀ` through the unpacked-weights kernel.
        let model_product = |m: usize| {
            par_matmul(
                m,
                n,
                k,
                1.0,
                Mat::n(&x, k),
                Mat::t(&w, k),
                None,
                |_, _, _| {},
            )
        };
        let (all, model_all) = (product(300), model_product(300));
        let packed = prefer_packed(n, k, false, true);
        for m in [1, 7, 16, 112] {
            if packed {
                assert_eq!(product(m), all[..m * n], "{m} rows of {n}x{k}");
            }
            assert_eq!(
                model_product(m),
                model_all[..m * n],
                "{m} rows of {n}x{k}, par_matmul"
            );
        }
    }
    // Attention's shapes: scores q kᵀ (k = head dim 32) and context p v (n = head dim 32).
    for (n, k, b_trans) in [(128, 32, true), (32, 128, false)] {
        let (x, w) = operands(n, k);
        let b = if b_trans {
            Mat::t(&w[..n * k], k)
        } else {
            Mat::n(&w[..n * k], n)
        };
        let product = |m: usize| {
            let mut c = vec![0.0f32; m * n];
            gemm_into(m, n, k, 1.0, Mat::n(&x, k), b, &mut c, n, false);
            c
        };
        let all = product(300);
        for m in [1, 7, 16, 112] {
            assert_eq!(product(m), all[..m * n], "{m} rows of {n}x{k} (attention)");
        }
    }
}

#[test]
fn splits_favour_rows_then_columns() {
    assert_eq!(split(2048, 384, 384, 1), Split::Rows(2048));
    assert_eq!(split(2048, 384, 384, 2), Split::Rows(512));
    assert_eq!(split(16, 384, 384, 2), Split::Cols(192));
    assert_eq!(split(4, 4, 4, 2), Split::Rows(4));
}
