//! The built-in tasks: the classic sentence-classification sets of the data directory (SST-2, SST-5, MR, CR,
//! MPQA, Subj), with the templates, label words and descriptions of LM-BFF-style prompting.

use super::{DataSource, TaskSpec};

/// Names of the built-in tasks.
const BUILTIN_TASK_NAMES: &[&str] = &["sst2", "sst5", "mr", "cr", "mpqa", "subj"];

/// The built-in task with this name (case-insensitive), if any.
pub fn builtin_task(name: &str) -> Option<TaskSpec> {
    let sentiment_words = ["terrible", "great"];
    let sentiment_descriptions = ["It was terrible.", "It was great."];
    let sentiment_labels = ["negative", "positive"];
    let single = |file: &str| {
        Some(DataSource::Single {
            file: file.to_string(),
        })
    };
    let spec = match name.to_ascii_lowercase().as_str() {
        "sst2" => task(
            "sst2",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            Some(DataSource::Split {
                train: "stsa.binary.train".to_string(),
                dev: Some("stsa.binary.dev".to_string()),
                test: "stsa.binary.test".to_string(),
            }),
        ),
        "sst5" => task(
            "sst5",
            &[
                "very negative",
                "negative",
                "neutral",
                "positive",
                "very positive",
            ],
            "{sentence} It was {mask} .",
            &["terrible", "bad", "okay", "good", "great"],
            &[
                "It was terrible.",
                "It was bad.",
                "It was okay.",
                "It was good.",
                "It was great.",
            ],
            Some(DataSource::Split {
                train: "stsa.fine.train".to_string(),
                dev: Some("stsa.fine.dev".to_string()),
                test: "stsa.fine.test".to_string(),
            }),
        ),
        "mr" => task(
            "mr",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("rt-polarity.all"),
        ),
        "cr" => task(
            "cr",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("custrev.all"),
        ),
        "mpqa" => task(
            "mpqa",
            &sentiment_labels,
            "{sentence} It was {mask} .",
            &sentiment_words,
            &sentiment_descriptions,
            single("mpqa.all"),
        ),
        "subj" => task(
            "subj",
            &["subjective", "objective"],
            "{sentence} This is {mask} .",
            &["subjective", "objective"],
            &["This is subjective.", "This is objective."],
            single("subj.all"),
        ),
        _ => return None,
    };
    Some(spec)
}

/// Names of the built-in tasks, in a fixed order.
pub fn builtin_task_names() -> &'static [&'static str] {
    BUILTIN_TASK_NAMES
}

/// Builds a task spec from string slices.
fn task(
    name: &str,
    labels: &[&str],
    template: &str,
    words: &[&str],
    descriptions: &[&str],
    source: Option<DataSource>,
) -> TaskSpec {
    let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TaskSpec {
        template: Some(template.to_string()),
        label_words: owned(words),
        label_descriptions: owned(descriptions),
        source,
        ..TaskSpec::with_labels(name, owned(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fewshot::plan_few_shot;
    use crate::data::test_util::{ex, test_data_dir};
    use crate::data::{few_shot, load_examples, read_label_sentence_file, Example, FewShotOptions};
    use std::collections::HashSet;

    #[test]
    fn real_files_match_the_readme() {
        let Some(dir) = test_data_dir() else { return };
        let expected = [
            ("stsa.binary.train", 6920),
            ("stsa.binary.dev", 872),
            ("stsa.binary.test", 1821),
            ("stsa.fine.train", 8544),
            ("stsa.fine.dev", 1101),
            ("stsa.fine.test", 2210),
            ("rt-polarity.all", 10662),
            ("subj.all", 10000),
            ("custrev.all", 3775),
            ("mpqa.all", 10606),
        ];
        for (file, count) in expected {
            let examples = read_label_sentence_file(&dir.join(file)).unwrap();
            assert_eq!(examples.len(), count, "{file}");
            for e in &examples {
                assert!(!e.text.contains(['\n', '\r']), "{file}: {:?}", e.text);
                let trimmed = e.text.trim_matches(|c: char| c.is_ascii_whitespace());
                assert_eq!(trimmed, e.text, "{file}");
            }
        }
        let label_counts = |file: &str, classes: usize| {
            let mut counts = vec![0usize; classes];
            for e in read_label_sentence_file(&dir.join(file)).unwrap() {
                counts[e.label] += 1;
            }
            counts
        };
        assert_eq!(label_counts("stsa.binary.train", 2), [3310, 3610]);
        assert_eq!(
            label_counts("stsa.fine.train", 5),
            [1092, 2218, 1624, 2322, 1288]
        );
        assert_eq!(label_counts("rt-polarity.all", 2), [5331, 5331]);
        assert_eq!(label_counts("custrev.all", 2), [1368, 2407]);
        assert_eq!(label_counts("mpqa.all", 2), [7294, 3312]);
        assert_eq!(label_counts("subj.all", 2), [5000, 5000]);

        let mr = read_label_sentence_file(&dir.join("rt-polarity.all")).unwrap();
        assert!(
            mr.iter().any(|e| !e.text.is_ascii()),
            "Latin-1 chars expected"
        );
    }

    #[test]
    fn every_builtin_task_loads_from_the_real_data() {
        let Some(dir) = test_data_dir() else { return };
        for name in builtin_task_names() {
            let spec = builtin_task(name).unwrap();
            let data = load_examples(&spec, &dir).unwrap();
            assert!(!data.train.is_empty(), "{name}");
            let is_split = matches!(spec.source, Some(DataSource::Split { .. }));
            assert_eq!(!data.test.is_empty(), is_split, "{name}");
            let split = few_shot(&data, spec.labels.len(), &FewShotOptions::new(16, 13)).unwrap();
            assert_eq!(split.train.len(), 16 * spec.labels.len(), "{name}");
        }
    }

    #[test]
    fn mr_test_sample_is_fixed_and_disjoint() {
        let Some(dir) = test_data_dir() else { return };
        let spec = builtin_task("mr").unwrap();
        let data = load_examples(&spec, &dir).unwrap();
        let a = plan_few_shot(&data, 2, &FewShotOptions::new(16, 13)).unwrap();
        let b = plan_few_shot(&data, 2, &FewShotOptions::new(16, 42)).unwrap();
        assert!(a.test_from_train);
        assert_eq!(a.test.len(), 2000);
        // Pinned values, cross-checked with an independent Python implementation.
        assert_eq!(a.test[..8], [0, 2, 7, 9, 19, 20, 22, 25]);
        assert_eq!(a.train[..6], [4528, 4195, 3209, 1664, 62, 1651]);
        assert_eq!(a.test, b.test);
        assert_ne!(a.train, b.train);
        for plan in [&a, &b] {
            let train: HashSet<_> = plan.train.iter().collect();
            let dev: HashSet<_> = plan.dev.iter().collect();
            let test: HashSet<_> = plan.test.iter().collect();
            assert_eq!(train.len(), 32);
            assert_eq!(dev.len(), 32);
            assert!(train.is_disjoint(&dev));
            assert!(train.is_disjoint(&test));
            assert!(dev.is_disjoint(&test));
        }
        let split = few_shot(&data, 2, &FewShotOptions::new(16, 13)).unwrap();
        assert_eq!(split.test.len(), 2000);
        assert_eq!(split.train.iter().filter(|e| e.label == 0).count(), 16);
    }

    #[test]
    fn sst2_uses_the_official_test_split() {
        let Some(dir) = test_data_dir() else { return };
        let data = load_examples(&builtin_task("sst2").unwrap(), &dir).unwrap();
        let split = few_shot(&data, 2, &FewShotOptions::new(16, 21)).unwrap();
        assert_eq!(split.test, data.test);
        assert_eq!(split.test.len(), 1821);
        let mut opts = FewShotOptions::new(16, 21);
        opts.max_test = Some(100);
        assert_eq!(few_shot(&data, 2, &opts).unwrap().test.len(), 100);
    }

    #[test]
    fn builtin_tasks_are_valid() {
        assert_eq!(
            builtin_task_names(),
            ["sst2", "sst5", "mr", "cr", "mpqa", "subj"]
        );
        for name in builtin_task_names() {
            let spec = builtin_task(name).unwrap();
            spec.validate().unwrap();
            assert_eq!(&spec.name, name);
            assert_eq!(spec.label_words.len(), spec.labels.len());
        }
        assert!(builtin_task("nope").is_none());
        assert_eq!(builtin_task("SST2").unwrap().name, "sst2");
        let subj = builtin_task("subj").unwrap();
        assert_eq!(subj.labels, ["subjective", "objective"]);
        assert_eq!(
            subj.template.as_deref(),
            Some("{sentence} This is {mask} .")
        );
        assert_eq!(
            subj.source,
            Some(DataSource::Single {
                file: "subj.all".into()
            })
        );
    }

    #[test]
    fn templates_render_in_one_pass() {
        let spec = builtin_task("sst2").unwrap();
        let sentence = ex("a {mask} of {sentence} braces {", 1);
        assert_eq!(
            spec.render_prompt(&sentence, "<mask>"),
            "a {mask} of {sentence} braces { It was <mask> ."
        );
        let mut pair = spec.clone();
        pair.template = Some("{sentence} ? {mask} , {sentence_b} {other}".to_string());
        let example = Example {
            text: "A".to_string(),
            text_b: Some("B".to_string()),
            label: 0,
        };
        assert_eq!(
            pair.render_prompt(&example, "[MASK]"),
            "A ? [MASK] , B {other}"
        );
        assert_eq!(
            pair.render_prompt(&ex("A", 0), "[MASK]"),
            "A ? [MASK] ,  {other}"
        );
    }
}
