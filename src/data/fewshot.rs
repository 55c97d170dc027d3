//! Deterministic few-shot splits.
//!
//! [`few_shot`] follows LM-BFF: K examples per class for training and another, disjoint, K per
//! class for development, drawn from the training split with a seed, plus a test set. The
//! algorithm is fixed here so that the same seed gives the same split on every machine and with
//! every dependency version. [`SplitRule::Given`] instead uses a data set's own train/dev/test
//! splits as they are.
//!
//! **Random numbers.** SplitMix64 (Steele, Lea & Flood 2014), implemented in this module: the
//! state starts at the seed; each draw adds `0x9E3779B97F4A7C15` to the state (wrapping) and
//! returns `z ^ (z >> 31)` where `z = state`, `z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9`,
//! `z = (z ^ (z >> 27)) * 0x94D049BB133111EB` (wrapping multiplications). A uniform integer in
//! `0..b` is drawn with Lemire's multiply-shift method with rejection: draw `x`, let
//! `m = x * b` as a 128-bit product; reject while the low 64 bits of `m` are below
//! `(2^64 - b) mod b`; return the high 64 bits of `m`.
//!
//! **Shuffle.** Fisher–Yates from the back: for `i` from `len - 1` down to `1`, draw `j` uniform
//! in `0..=i` and swap elements `i` and `j`.
//!
//! **Steps.**
//!
//! 1. Test set. If the data has an official test split, it is the test set. Otherwise
//!    (single-file sets) the test set is a fixed held-out sample independent of the seed: the
//!    indices `0..n` of all examples are shuffled with SplitMix64 seeded `0x5EED_7E57`, the first
//!    `min(test_size, n / 2)` form the test set (kept in file order) and the rest form the pool
//!    (in file order).
//! 2. Pool = the training split (or the remainder of step 1). One SplitMix64 generator is seeded
//!    with `seed`. For each class `c` in `0..num_labels`, in order, the pool indices of the
//!    examples with label `c` (in file order) are shuffled with that one generator (shared across
//!    classes); the first K go to train, the next K to dev. A class with fewer than 2K examples
//!    is an error that says what would work, unless `cap_k` is set: then that class gets
//!    `K_c = ⌊n_c / 2⌋` for train and again for dev (at least 1). The official dev split, if any,
//!    is not used.
//! 3. Train and dev are each ordered class by class as drawn: class 0's K examples in drawn
//!    order, then class 1's, and so on.
//! 4. If `max_test` is `Some(m)` and the test set has more than `m` examples, the test indices
//!    are shuffled with SplitMix64 seeded `0x7E57`, the first `m` are kept and file order is
//!    restored.
//!
//! Train, dev and test are disjoint by index; duplicate sentences are not removed.

use super::{load_examples, Example, TaskData, TaskSpec};
use anyhow::{bail, Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Seed of the fixed held-out test sample of single-file data sets.
const TEST_SAMPLE_SEED: u64 = 0x5EED_7E57;

/// Seed of the `max_test` subsample.
const MAX_TEST_SEED: u64 = 0x7E57;

/// A deterministic split: train and dev (K per class for few-shot splits), plus the test set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewShotSplit {
    /// Training examples, class by class.
    pub train: Vec<Example>,
    /// Development examples, disjoint from train, class by class.
    pub dev: Vec<Example>,
    /// The test set, in file order.
    pub test: Vec<Example>,
    /// Examples per class asked for (0 for given splits).
    pub k: usize,
    /// Seed of the sampler.
    pub seed: u64,
}

impl FewShotSplit {
    /// Training examples per class.
    pub fn train_counts(&self, num_labels: usize) -> Vec<usize> {
        let mut counts = vec![0; num_labels];
        for e in &self.train {
            if let Some(c) = counts.get_mut(e.label) {
                *c += 1;
            }
        }
        counts
    }
}

/// Options of the sampler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotOptions {
    /// Examples per class in train (and again in dev).
    pub k: usize,
    /// Seed of the train/dev draw.
    pub seed: u64,
    /// Size of the held-out test sample of single-file sets (at most half the examples).
    pub test_size: usize,
    /// Cap on the test set size for quick runs.
    pub max_test: Option<usize>,
    /// Take at most half of a class that has fewer than 2K examples, instead of refusing.
    pub cap_k: bool,
}

impl Default for FewShotOptions {
    fn default() -> Self {
        Self {
            k: 16,
            seed: 42,
            test_size: 2000,
            max_test: None,
            cap_k: false,
        }
    }
}

impl FewShotOptions {
    /// Options with the given K and seed, test size 2000 and no test cap.
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k,
            seed,
            ..Self::default()
        }
    }
}

/// How train, dev and test are made from a task's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitRule {
    /// K per class for train and again for dev, drawn with a seed (see the module documentation).
    FewShot {
        /// Examples per class.
        k: usize,
        /// Seed of the draw.
        seed: u64,
        /// Cap K at half of each class that has fewer than 2K examples instead of refusing.
        #[serde(default)]
        cap_k: bool,
    },
    /// The data's own train, dev and test splits, as they are.
    Given,
}

/// Loads a task's examples from `data_dir` and draws its few-shot split (test size 2000, optional cap).
pub fn task_split(
    spec: &TaskSpec,
    data_dir: &Path,
    k: usize,
    seed: u64,
    max_test: Option<usize>,
) -> Result<FewShotSplit> {
    split_task(
        spec,
        data_dir,
        &SplitRule::FewShot {
            k,
            seed,
            cap_k: false,
        },
        max_test,
    )
}

/// Loads a task's examples and splits them by `rule`.
pub fn split_task(
    spec: &TaskSpec,
    data_dir: &Path,
    rule: &SplitRule,
    max_test: Option<usize>,
) -> Result<FewShotSplit> {
    let all = load_examples(spec, data_dir)?;
    split_data(&all, spec, rule, max_test)
}

/// Splits loaded data by `rule`.
pub fn split_data(
    all: &TaskData,
    spec: &TaskSpec,
    rule: &SplitRule,
    max_test: Option<usize>,
) -> Result<FewShotSplit> {
    match rule {
        SplitRule::FewShot { k, seed, cap_k } => {
            let opts = FewShotOptions {
                max_test,
                cap_k: *cap_k,
                ..FewShotOptions::new(*k, *seed)
            };
            few_shot(all, spec.labels.len(), &opts)
                .with_context(|| format!("task {:?} (classes {:?})", spec.name, spec.labels))
        }
        SplitRule::Given => given_split(all, spec, max_test),
    }
}

/// The data's own splits; a missing dev split says how to get one.
fn given_split(all: &TaskData, spec: &TaskSpec, max_test: Option<usize>) -> Result<FewShotSplit> {
    if all.dev.is_empty() {
        bail!("task {:?}: the split rule `given` needs a dev split, and the data has none: give one (a `split` file's `dev`, a table's `dev_file`, or rows whose `split_column` value is `dev`), or draw train and dev with the few-shot rule (--split few-shot --k K)", spec.name);
    }
    let mut test = all.test.clone();
    if let Some(max) = max_test {
        if test.len() > max {
            let mut idx: Vec<usize> = (0..test.len()).collect();
            shuffle(&mut idx, &mut SplitMix64::new(MAX_TEST_SEED));
            idx.truncate(max);
            idx.sort_unstable();
            test = idx.into_iter().map(|i| all.test[i].clone()).collect();
        }
    }
    Ok(FewShotSplit {
        train: all.train.clone(),
        dev: all.dev.clone(),
        test,
        k: 0,
        seed: 0,
    })
}

/// The fixed held-out test sample of data without a test split (step 1 of the module documentation): the
/// test set a few-shot split of `examples` gets, whatever its K and seed.
pub fn held_out_test(examples: &[Example], test_size: usize) -> Vec<Example> {
    let n = examples.len();
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut SplitMix64::new(TEST_SAMPLE_SEED));
    let mut test = order[..test_size.min(n / 2)].to_vec();
    test.sort_unstable();
    test.into_iter().map(|i| examples[i].clone()).collect()
}

/// SplitMix64 pseudo-random generator (fixed here so splits never change with a dependency).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Generator whose state starts at `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next 64-bit output.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..bound` (Lemire's method with rejection); `bound` must be positive.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Fisher–Yates shuffle from the back.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Indices chosen by the sampler: train/dev index `data.train`; test indexes `data.test`, or
/// `data.train` when `test_from_train`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FewShotPlan {
    pub(crate) train: Vec<usize>,
    pub(crate) dev: Vec<usize>,
    pub(crate) test: Vec<usize>,
    pub(crate) test_from_train: bool,
}

/// Runs the documented few-shot algorithm on indices.
pub(crate) fn plan_few_shot(
    data: &TaskData,
    num_labels: usize,
    opts: &FewShotOptions,
) -> Result<FewShotPlan> {
    let k = opts.k;
    if k == 0 {
        bail!("few-shot K must be at least 1");
    }
    if num_labels == 0 {
        bail!("few-shot sampling needs at least one class");
    }
    for (split, examples) in [("train", &data.train), ("test", &data.test)] {
        if let Some((i, ex)) = examples
            .iter()
            .enumerate()
            .find(|(_, ex)| ex.label >= num_labels)
        {
            bail!(
                "{split} example {i} has label {} but there are {num_labels} classes",
                ex.label
            );
        }
    }

    let (mut test, pool, test_from_train) = if !data.test.is_empty() {
        (
            (0..data.test.len()).collect::<Vec<_>>(),
            (0..data.train.len()).collect::<Vec<_>>(),
            false,
        )
    } else {
        let n = data.train.len();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut SplitMix64::new(TEST_SAMPLE_SEED));
        let held_out = opts.test_size.min(n / 2);
        let mut test = order[..held_out].to_vec();
        let mut pool = order[held_out..].to_vec();
        test.sort_unstable();
        pool.sort_unstable();
        (test, pool, true)
    };

    let members_of = |class: usize| -> Vec<usize> {
        pool.iter()
            .copied()
            .filter(|&i| data.train[i].label == class)
            .collect()
    };
    if !opts.cap_k {
        let sizes: Vec<usize> = (0..num_labels).map(|c| members_of(c).len()).collect();
        if let Some(class) = sizes.iter().position(|&n| n < 2 * k) {
            let most = sizes.iter().copied().min().unwrap_or(0) / 2;
            let smaller = if most >= 1 {
                format!("a smaller K (at most {most} fits every class)")
            } else {
                "more examples of that class".to_string()
            };
            bail!(
                "class {class} has {} examples in the training pool, but K = {k} needs {} (K for train and K for dev). What works: {smaller}; or cap K per class at half of what a class has (--cap-k, or \"cap_k\": true in a job); or your own dev split (--split given, or \"split\": {{\"rule\": \"given\"}})",
                sizes[class],
                2 * k
            );
        }
    }

    let mut rng = SplitMix64::new(opts.seed);
    let mut train = Vec::with_capacity(k * num_labels);
    let mut dev = Vec::with_capacity(k * num_labels);
    for class in 0..num_labels {
        let mut members = members_of(class);
        let kc = k.min(members.len() / 2);
        if kc == 0 {
            bail!(
                "class {class} has {} example(s) in the training pool; a few-shot split needs at least 2 per class (one for train, one for dev)",
                members.len()
            );
        }
        shuffle(&mut members, &mut rng);
        train.extend_from_slice(&members[..kc]);
        dev.extend_from_slice(&members[kc..2 * kc]);
    }

    if let Some(max) = opts.max_test {
        if test.len() > max {
            shuffle(&mut test, &mut SplitMix64::new(MAX_TEST_SEED));
            test.truncate(max);
            test.sort_unstable();
        }
    }

    Ok(FewShotPlan {
        train,
        dev,
        test,
        test_from_train,
    })
}

/// Draws a deterministic few-shot split (see the module documentation for the algorithm).
pub fn few_shot(data: &TaskData, num_labels: usize, opts: &FewShotOptions) -> Result<FewShotSplit> {
    let plan = plan_few_shot(data, num_labels, opts)?;
    let pick = |examples: &[Example], indices: &[usize]| -> Vec<Example> {
        indices.iter().map(|&i| examples[i].clone()).collect()
    };
    let test_source = if plan.test_from_train {
        &data.train
    } else {
        &data.test
    };
    Ok(FewShotSplit {
        train: pick(&data.train, &plan.train),
        dev: pick(&data.train, &plan.dev),
        test: pick(test_source, &plan.test),
        k: opts.k,
        seed: opts.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{ex, synthetic, texts};

    #[test]
    fn splitmix64_matches_reference_outputs() {
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
        let mut rng = SplitMix64::new(7);
        for bound in [1u64, 2, 3, 10, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(bound) < bound);
            }
        }
    }

    #[test]
    fn shuffle_is_a_pinned_permutation() {
        let mut items: Vec<usize> = (0..10).collect();
        shuffle(&mut items, &mut SplitMix64::new(42));
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(items, GOLDEN_SHUFFLE_SEED_42);
    }

    /// Shuffle of 0..10 with seed 42 (cross-checked with an independent Python implementation of
    /// the documented algorithm); a change here changes every published split.
    const GOLDEN_SHUFFLE_SEED_42: [usize; 10] = [8, 3, 6, 5, 4, 0, 9, 2, 1, 7];

    #[test]
    fn few_shot_is_deterministic_balanced_and_disjoint() {
        let data = TaskData {
            train: synthetic(3, 50),
            dev: Vec::new(),
            test: synthetic(3, 5)
                .into_iter()
                .map(|e| ex(&format!("test {}", e.text), e.label))
                .collect(),
        };
        let opts = FewShotOptions::new(8, 13);
        let a = few_shot(&data, 3, &opts).unwrap();
        let b = few_shot(&data, 3, &opts).unwrap();
        assert_eq!(a, b);
        let c = few_shot(&data, 3, &FewShotOptions::new(8, 87)).unwrap();
        assert_ne!(a.train, c.train);
        assert_eq!((a.k, a.seed), (8, 13));

        for split in [&a, &c] {
            assert_eq!(split.train.len(), 24);
            assert_eq!(split.dev.len(), 24);
            for class in 0..3 {
                let block = &split.train[class * 8..(class + 1) * 8];
                assert!(block.iter().all(|e| e.label == class));
                let block = &split.dev[class * 8..(class + 1) * 8];
                assert!(block.iter().all(|e| e.label == class));
            }
            let (train, dev, test) = (texts(&split.train), texts(&split.dev), texts(&split.test));
            assert_eq!(train.len(), 24);
            assert_eq!(dev.len(), 24);
            assert!(train.is_disjoint(&dev));
            assert!(train.is_disjoint(&test));
            assert!(dev.is_disjoint(&test));
            assert_eq!(split.test, data.test);
        }
    }

    #[test]
    fn single_file_test_sample_ignores_the_seed() {
        let data = TaskData {
            train: synthetic(2, 100),
            ..TaskData::default()
        };
        let mut opts = FewShotOptions::new(4, 1);
        opts.test_size = 30;
        let a = few_shot(&data, 2, &opts).unwrap();
        opts.seed = 2;
        let b = few_shot(&data, 2, &opts).unwrap();
        assert_eq!(a.test.len(), 30);
        assert_eq!(a.test, b.test);
        assert_eq!(a.test, held_out_test(&data.train, 30));
        assert_ne!(a.train, b.train);
        let position = |e: &Example| data.train.iter().position(|d| d == e).unwrap();
        let positions: Vec<usize> = a.test.iter().map(position).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "file order");
        let test = texts(&a.test);
        assert!(test.is_disjoint(&texts(&a.train)));
        assert!(test.is_disjoint(&texts(&a.dev)));

        opts.test_size = 2000;
        let all = plan_few_shot(&data, 2, &opts).unwrap();
        assert_eq!(all.test.len(), 100, "at most half the examples");
    }

    #[test]
    fn max_test_keeps_a_fixed_subsample_in_file_order() {
        let data = TaskData {
            train: synthetic(2, 40),
            dev: Vec::new(),
            test: synthetic(2, 60),
        };
        let mut opts = FewShotOptions::new(4, 5);
        opts.max_test = Some(25);
        let a = plan_few_shot(&data, 2, &opts).unwrap();
        opts.seed = 6;
        let b = plan_few_shot(&data, 2, &opts).unwrap();
        assert_eq!(a.test.len(), 25);
        assert_eq!(a.test, b.test);
        assert!(a.test.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(a.test, (0..25).collect::<Vec<_>>());
        opts.max_test = Some(1000);
        assert_eq!(plan_few_shot(&data, 2, &opts).unwrap().test.len(), 120);
    }

    #[test]
    fn too_few_examples_name_the_class() {
        let mut train = synthetic(2, 20);
        train.retain(|e| e.label == 0 || e.text.ends_with('1'));
        let data = TaskData {
            train,
            ..TaskData::default()
        };
        let err = plan_few_shot(&data, 2, &FewShotOptions::new(4, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 1"), "{err}");
        // With an official test split the pool is all of train: class 1 has 4 examples (sentences 1, 11,
        // 21, 31), so K = 4 does not fit; the refusal offers what does, and cap_k gives class 1 two and two.
        let with_test = TaskData {
            test: vec![ex("held out", 0)],
            ..data.clone()
        };
        let err = plan_few_shot(&with_test, 2, &FewShotOptions::new(4, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("class 1 has 4 examples")
                && err.contains("at most 2 fits every class")
                && err.contains("--cap-k"),
            "the refusal offers a split that works: {err}"
        );
        let capped = FewShotOptions {
            cap_k: true,
            ..FewShotOptions::new(4, 1)
        };
        let s = few_shot(&with_test, 2, &capped).unwrap();
        let count = |v: &[Example], c: usize| v.iter().filter(|e| e.label == c).count();
        assert_eq!((count(&s.train, 0), count(&s.dev, 0)), (4, 4));
        assert_eq!((count(&s.train, 1), count(&s.dev, 1)), (2, 2));
        assert!(texts(&s.train).is_disjoint(&texts(&s.dev)));
        let bad = TaskData {
            train: vec![ex("a", 0), ex("b", 5)],
            ..TaskData::default()
        };
        assert!(few_shot(&bad, 2, &FewShotOptions::new(1, 1)).is_err());
        assert!(few_shot(&data, 2, &FewShotOptions::new(0, 1)).is_err());
    }
}
