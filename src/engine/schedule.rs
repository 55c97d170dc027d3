//! Scheduling decisions of the engine, as pure functions: whether to wait for more requests before a batch
//! ([`keep_waiting`]), which rows of the waiting requests form the next batch ([`take_rows`]), and how a
//! batch's rows are split by length into forward passes ([`buckets`]).

use std::ops::Range;

/// Whether the engine keeps waiting (up to its batch wait) for more requests before running the next batch:
/// while fewer requests are waiting than were active around the last batch (`expected`: the requests it
/// answered, whose clients may send again, plus those still waiting) and their rows fill less than the token
/// budget. So a lone client's requests run at once instead of waiting out the batch wait for company that
/// cannot come, and concurrent clients are gathered into one batch (not two alternating halves) without
/// waiting longer than it takes them to arrive.
pub fn keep_waiting(waiting: usize, expected: usize, waiting_tokens: usize, budget: usize) -> bool {
    waiting < expected && waiting_tokens < budget
}

/// Picks rows for the next batch from requests waiting in arrival order, each given as (rows already served,
/// token length of every row). Round robin: every request first gets up to an equal share of `budget`
/// tokens (always at least one row while the batch is empty or the row fits), then the batch is filled in
/// arrival order. So a small request waits for at most about one batch, whatever is queued ahead of it, and
/// a large request is split across batches. Returns (request index, rows) pairs.
pub fn take_rows(pending: &[(usize, &[usize])], budget: usize) -> Vec<(usize, Range<usize>)> {
    let n = pending.len();
    if n == 0 {
        return Vec::new();
    }
    let share = (budget / n).max(1);
    let mut taken = vec![0usize; n];
    let mut tokens = 0usize;
    for (i, &(next, lens)) in pending.iter().enumerate() {
        let mut mine = 0usize;
        while next + taken[i] < lens.len() {
            let l = lens[next + taken[i]].max(1);
            let fits = tokens + l <= budget;
            if (taken[i] > 0 && mine + l > share) || (!fits && tokens > 0) {
                break;
            }
            taken[i] += 1;
            mine += l;
            tokens += l;
        }
    }
    for (i, &(next, lens)) in pending.iter().enumerate() {
        while next + taken[i] < lens.len() {
            let l = lens[next + taken[i]].max(1);
            if tokens + l > budget {
                break;
            }
            taken[i] += 1;
            tokens += l;
        }
    }
    pending
        .iter()
        .zip(taken)
        .enumerate()
        .filter(|(_, (_, t))| *t > 0)
        .map(|(i, (&(next, _), t))| (i, next..next + t))
        .collect()
}

/// Splits rows into forward passes by length so that short texts are not padded to the longest: rows sorted
/// longest first are cut into contiguous groups minimizing Σ (`overhead` + rows × longest length), i.e.
/// padded tokens computed plus a fixed cost per pass in token-equivalents (kernel launches, per-pass work).
/// Returns groups of row indices (into `lens`), longest group first.
pub fn buckets(lens: &[usize], overhead: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lens[i]), i));
    let n = order.len();
    if n == 0 {
        return Vec::new();
    }
    // best[i]: least cost of the first i sorted rows; cut[i]: where their last group starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for i in 1..=n {
        for j in 0..i {
            let cost = best[j] + overhead + (i - j) * lens[order[j]].max(1);
            if cost < best[i] {
                best[i] = cost;
                cut[i] = j;
            }
        }
    }
    let mut groups = Vec::new();
    let mut i = n;
    while i > 0 {
        let j = cut[i];
        groups.push(order[j..i].to_vec());
        i = j;
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_request_joins_the_next_batch_behind_a_large_one() {
        let big = vec![128usize; 256];
        let small = vec![10usize];
        let picked = take_rows(&[(0, &big), (0, &small)], 4096);
        assert_eq!(picked, vec![(0, 0..31), (1, 0..1)]);
        // Alone, the large request fills the budget and the rest waits for later batches.
        assert_eq!(take_rows(&[(32, &big)], 4096), vec![(0, 32..64)]);
        // The last rows of a request are picked up.
        assert_eq!(take_rows(&[(250, &big)], 4096), vec![(0, 250..256)]);
    }

    #[test]
    fn the_engine_waits_only_for_clients_it_has_seen_together() {
        // A lone client (one request answered, none waiting): its next request runs at once.
        assert!(!keep_waiting(1, 1, 20, 4096));
        // Eight clients (e.g. four answered, four waiting): gather until all eight are back …
        assert!(keep_waiting(3, 8, 60, 4096));
        assert!(!keep_waiting(8, 8, 160, 4096));
        // … unless the waiting rows already fill a batch.
        assert!(!keep_waiting(3, 8, 4096, 4096));
    }

    #[test]
    fn a_row_longer_than_the_budget_still_runs_alone() {
        let huge = vec![9000usize];
        let other = vec![5usize];
        assert_eq!(take_rows(&[(0, &huge), (0, &other)], 4096), vec![(0, 0..1)]);
        assert_eq!(take_rows(&[(0, &other), (0, &huge)], 4096), vec![(0, 0..1)]);
    }

    #[test]
    fn every_waiting_request_gets_rows_while_the_budget_allows() {
        let a = vec![16usize; 100];
        let b = vec![16usize; 100];
        let c = vec![16usize; 3];
        let picked = take_rows(&[(0, &a), (0, &b), (0, &c)], 320);
        let total: usize = picked.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(total, 20);
        assert!(picked.iter().any(|(i, _)| *i == 2));
    }

    #[test]
    fn buckets_cut_padding_only_when_it_pays() {
        // Two clear length groups, cheap passes: two buckets.
        let lens = [100, 10, 98, 12, 11, 97];
        let b = buckets(&lens, 16);
        assert_eq!(b, vec![vec![0, 2, 5], vec![3, 4, 1]]);
        // Expensive passes: one bucket.
        assert_eq!(buckets(&lens, 10_000).len(), 1);
        // Every row exactly once.
        let mut all: Vec<usize> = buckets(&lens, 1).concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert!(buckets(&[], 5).is_empty());
    }
}
