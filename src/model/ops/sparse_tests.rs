//! Tests of the sparse per-row corrections: against per-row dense weights, the CPU's two paths against each
//! other and against an f64 reference, and a row's result against its batch mates and tile position.

use super::super::test_tensors::det_f32 as det;
use super::super::xwt::kernels;
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

/// A dense site's deltas at about `density` of its weight (deterministic), plus a few bias deltas.
fn delta(ind: usize, outd: usize, density: f64, seed: u64) -> SiteDelta {
    let vals = det(ind * outd, seed);
    let pick = det(ind * outd, seed + 100);
    let weight = (0..ind * outd)
        .filter(|&f| (pick[f] as f64 + 0.5) < density)
        .map(|f| (f as u32, vals[f]))
        .collect();
    let bias = (0..outd)
        .step_by(3)
        .map(|i| (i as u32, 0.25 * vals[i]))
        .collect();
    SiteDelta { weight, bias }
}

/// y (rows × outd) = x Wᵀ, then each segment's corrections of site 0 added.
fn corrected(
    x: &[f32],
    w: &[f32],
    (rows, ind, outd): (usize, usize, usize),
    segments: Vec<(usize, usize, &SparsePack)>,
) -> Vec<f32> {
    // The base product row by row (a BLAS's result for a row may depend on the other rows).
    let base: Vec<f32> = (0..rows * outd)
        .map(|k| {
            let (r, i) = (k / outd, k % outd);
            (0..ind).map(|j| x[r * ind + j] * w[i * ind + j]).sum()
        })
        .collect();
    let xt = Tensor::from_vec(x.to_vec(), (rows, ind), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(base, (rows, outd), &Device::Cpu).unwrap();
    let batch = SparseBatch::new(segments, &Device::Cpu).unwrap();
    batch.dense(0, &xt, &y).unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

/// The dense-delta path, the sparse path and a mix of both give the same corrections (bit for bit where
/// the `x·Wᵀ` kernel runs, else within rounding), and all match an f64 reference with each row's weights.
#[test]
fn dense_delta_and_sparse_paths_agree_with_each_other_and_the_reference() {
    // Not multiples of the tiles (32 rows; 12 or 6 outputs; 16 rows of the x·Wᵀ kernel).
    let (ind, outd) = (70, 37);
    let sites = [SiteKind::Dense {
        in_dim: ind,
        out_dim: outd,
    }];
    let seg = [(0usize, 5usize), (5, 45), (50, 1)];
    let rows = 51;
    let x = det(rows * ind, 3);
    let w = det(outd * ind, 4);
    let deltas: Vec<SiteDelta> = (0..3).map(|t| delta(ind, outd, 0.6, 10 + t)).collect();
    let make = |threshold: f64| -> Vec<SparsePack> {
        deltas
            .iter()
            .map(|d| {
                SparsePack::with_dense_threshold(&sites, &[(0, d.clone())], &Device::Cpu, threshold)
                    .unwrap()
            })
            .collect()
    };
    let (dense, sparse) = (make(0.0), make(2.0));
    assert!(dense.iter().all(|p| p.dense_on_cpu(0)));
    assert!(sparse.iter().all(|p| !p.dense_on_cpu(0)));
    let run = |packs: [&SparsePack; 3]| {
        let segments = seg
            .iter()
            .zip(packs)
            .map(|(&(r0, n), p)| (r0, n, p))
            .collect();
        corrected(&x, &w, (rows, ind, outd), segments)
    };
    let all_dense = run([&dense[0], &dense[1], &dense[2]]);
    let all_sparse = run([&sparse[0], &sparse[1], &sparse[2]]);
    let mixed = run([&dense[0], &sparse[1], &dense[2]]);
    let exact = !kernels().is_empty();
    for (i, ((&d, &s), &m)) in all_dense.iter().zip(&all_sparse).zip(&mixed).enumerate() {
        if exact {
            assert!(
                d == s && s == m,
                "element {i}: dense {d}, sparse {s}, mixed {m}"
            );
        } else {
            assert!((d - s).abs() < 1e-5 && (m - s).abs() < 1e-5, "element {i}");
        }
    }
    // f64 reference: each row with its task's weights W + ΔW and bias Δb.
    for (t, &(r0, n)) in seg.iter().enumerate() {
        let mut wt: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let mut bt = vec![0f64; outd];
        for &(f, v) in &deltas[t].weight {
            wt[f as usize] += v as f64;
        }
        for &(i, v) in &deltas[t].bias {
            bt[i as usize] += v as f64;
        }
        for r in r0..r0 + n {
            for i in 0..outd {
                let want: f64 = (0..ind)
                    .map(|j| x[r * ind + j] as f64 * wt[i * ind + j])
                    .sum::<f64>()
                    + bt[i];
                let got = all_dense[r * outd + i] as f64;
                assert!(
                    (got - want).abs() < 1e-4,
                    "task {t} row {r} out {i}: {got} vs {want}"
                );
            }
        }
    }
}

/// A row's correction is the same alone, among other tasks' rows, and at any position in its tiles, on both
/// paths (bit for bit).
#[test]
fn rows_do_not_depend_on_their_batch_mates_on_either_path() {
    let (ind, outd) = (48, 29);
    let sites = [SiteKind::Dense {
        in_dim: ind,
        out_dim: outd,
    }];
    let w = det(outd * ind, 5);
    for threshold in [0.0, 2.0] {
        let a = SparsePack::with_dense_threshold(
            &sites,
            &[(0, delta(ind, outd, 0.3, 20))],
            &Device::Cpu,
            threshold,
        )
        .unwrap();
        let b = SparsePack::with_dense_threshold(
            &sites,
            &[(0, delta(ind, outd, 0.7, 21))],
            &Device::Cpu,
            threshold,
        )
        .unwrap();
        // Task a's 3 rows alone, then after 40 rows of task b (another tile offset), then among 70 rows of
        // its own (the same 3 rows at positions 33..36 of its segment).
        let mine = det(3 * ind, 6);
        let alone = corrected(&mine, &w, (3, ind, outd), vec![(0, 3, &a)]);
        let mut x = det(40 * ind, 7);
        x.extend_from_slice(&mine);
        let after_b = corrected(&x, &w, (43, ind, outd), vec![(0, 40, &b), (40, 3, &a)]);
        assert_eq!(
            &after_b[40 * outd..],
            &alone[..],
            "threshold {threshold}: after b"
        );
        let mut x = det(33 * ind, 8);
        x.extend_from_slice(&mine);
        x.extend_from_slice(&det(34 * ind, 9));
        let inside = corrected(&x, &w, (70, ind, outd), vec![(0, 70, &a)]);
        assert_eq!(
            &inside[33 * outd..36 * outd],
            &alone[..],
            "threshold {threshold}: inside its own rows"
        );
    }
}

/// The default threshold puts a site on the dense-delta path by its density alone.
#[test]
fn the_path_is_chosen_per_site_by_density() {
    let sites = [
        SiteKind::Dense {
            in_dim: 20,
            out_dim: 10,
        },
        SiteKind::Dense {
            in_dim: 20,
            out_dim: 10,
        },
        SiteKind::Norm { dim: 10 },
    ];
    let full = SiteDelta {
        weight: (0..200).map(|f| (f, 0.1)).collect(),
        bias: vec![],
    };
    let thin = SiteDelta {
        weight: vec![(3, 0.1)],
        bias: vec![(1, 0.2)],
    };
    let norm = SiteDelta {
        weight: (0..10).map(|f| (f, 0.1)).collect(),
        bias: vec![],
    };
    let p = SparsePack::new(&sites, &[(0, full), (1, thin), (2, norm)], &Device::Cpu).unwrap();
    assert!(p.dense_on_cpu(0), "a full site takes the dense delta");
    assert!(!p.dense_on_cpu(1), "one entry in 200 stays sparse");
    assert!(!p.dense_on_cpu(2), "LayerNorms are always sparse");
    assert!(p.touches(0) && p.touches(1) && p.touches(2));
}
