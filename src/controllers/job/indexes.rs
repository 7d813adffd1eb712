//! Completion indexes of Indexed Jobs: the text form of `status.completedIndexes` /
//! `failedIndexes` (increasing numbers; runs of three or more as `first-last`, e.g.
//! `1,3-5,7`), reading a pod's index, and the next indexes to start.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;

/// The annotation (and label) with a pod's completion index.
pub(crate) const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// A set of indexes below `completions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Indexes(pub(crate) BTreeSet<i32>);

impl Indexes {
    /// Parses the text form, ignoring malformed parts and indexes `>= completions`.
    pub(crate) fn parse(s: &str, completions: i32) -> Indexes {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
                None => (part.parse::<i32>(), part.parse::<i32>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                tracing::debug!(part, "ignoring a malformed index interval");
                continue;
            };
            if first < 0 || first > last {
                continue;
            }
            set.extend(first..=last.min(completions.saturating_sub(1)));
        }
        Indexes(set)
    }

    pub(crate) fn total(&self) -> i32 {
        i32::try_from(self.0.len()).unwrap_or(i32::MAX)
    }

    pub(crate) fn has(&self, i: i32) -> bool {
        self.0.contains(&i)
    }
}

impl std::fmt::Display for Indexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut runs: Vec<(i32, i32)> = Vec::new();
        for &i in &self.0 {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == i => *last = i,
                _ => runs.push((i, i)),
            }
        }
        let parts: Vec<String> = runs
            .into_iter()
            .map(|(a, b)| match b - a {
                0 => a.to_string(),
                1 => format!("{a},{b}"),
                _ => format!("{a}-{b}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A pod's completion index (from the annotation, else the label), if valid.
pub(crate) fn completion_index(pod: &Pod) -> Option<i32> {
    let meta = &pod.metadata;
    let raw = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))?;
    raw.parse::<i32>().ok().filter(|i| *i >= 0)
}

/// The lowest `count` indexes below `completions` that neither succeeded nor are taken
/// by a pod in `busy`.
pub(crate) fn first_pending(
    succeeded: &Indexes,
    busy: &BTreeSet<i32>,
    count: usize,
    completions: i32,
) -> Vec<i32> {
    (0..completions)
        .filter(|i| !succeeded.has(*i) && !busy.contains(i))
        .take(count)
        .collect()
}

/// The `generateName` of an index's pods: `<job>-<index>-`, the job name shortened so
/// that the generated name stays a valid label.
pub(crate) fn generate_name(job: &str, index: i32) -> String {
    const MAX_GENERATED: usize = 58;
    let suffix = format!("-{index}-");
    let room = MAX_GENERATED.saturating_sub(suffix.len());
    let mut cut = job.len().min(room);
    while !job.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &job[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form() {
        let cases = [
            ("", 10, vec![], ""),
            ("1,3-5,7", 10, vec![1, 3, 4, 5, 7], "1,3-5,7"),
            ("0,1", 10, vec![0, 1], "0,1"),
            ("0-2", 10, vec![0, 1, 2], "0-2"),
            ("5-12", 8, vec![5, 6, 7], "5-7"),
            ("x,2,9-3", 10, vec![2], "2"),
        ];
        for (text, completions, want, back) in cases {
            let ix = Indexes::parse(text, completions);
            assert_eq!(ix.0.iter().copied().collect::<Vec<_>>(), want, "{text}");
            assert_eq!(ix.to_string(), back, "{text}");
        }
    }

    #[test]
    fn pending_and_names() {
        let done = Indexes::parse("0,2", 6);
        let busy: BTreeSet<i32> = [1].into();
        assert_eq!(first_pending(&done, &busy, 2, 6), vec![3, 4]);
        assert_eq!(first_pending(&done, &busy, 9, 6), vec![3, 4, 5]);
        assert_eq!(generate_name("pi", 3), "pi-3-");
        let long = "a".repeat(70);
        let g = generate_name(&long, 12);
        assert_eq!(g.len(), 58);
        assert!(g.ends_with("-12-"));
    }
}
