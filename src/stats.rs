//! Statistics on the ground floor: rank and linear correlation, ranks, top-k lists and their
//! overlap; used by the methods (ensembles), the evaluation, the reports and the viewer.

/// Pearson correlation of two equally long samples (0 when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson needs samples of equal length");
    let n = x.len() as f64;
    if x.is_empty() {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks (0-based, ties get their average rank).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| smaller_first(x[a], x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Indices of the `k` largest values, largest first (ties by index). A selection, then a sort
/// of the `k` chosen: O(n + k log k), so that the viewer's top 24 of 60,000 images do not sort
/// all 60,000 every frame.
pub fn top_k(x: &[f64], k: usize) -> Vec<usize> {
    select_sorted(x.len(), k, |a, b| larger_first(x[a], x[b]).then(a.cmp(&b)))
}

/// Indices of the `k` smallest values, smallest first (ties by index, last first: the reverse
/// of [`top_k`]'s full order).
pub fn bottom_k(x: &[f64], k: usize) -> Vec<usize> {
    select_sorted(x.len(), k, |a, b| smaller_first(x[a], x[b]).then(b.cmp(&a)))
}

/// Larger numbers first, and NaN after every number: a NaN is never ranked first. (`total_cmp`
/// alone orders a positive NaN above +∞.)
pub fn larger_first(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => b.total_cmp(&a),
        (a_nan, b_nan) => a_nan.cmp(&b_nan),
    }
}

/// Smaller numbers first, and NaN after every number (a negative NaN too, which `total_cmp`
/// orders below −∞).
pub fn smaller_first(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.total_cmp(&b),
        (a_nan, b_nan) => a_nan.cmp(&b_nan),
    }
}

/// The first `k` of `0..n` in the total order `before`, in that order.
fn select_sorted(n: usize, k: usize, before: impl Fn(usize, usize) -> std::cmp::Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    if k < n {
        order.select_nth_unstable_by(k - 1, |&a, &b| before(a, b));
        order.truncate(k);
    }
    order.sort_unstable_by(|&a, &b| before(a, b));
    order
}

/// Fraction of the top-k of `x` that is also in the top-k of `y`.
pub fn overlap_at_k(x: &[f64], y: &[f64], k: usize) -> f64 {
    let (a, b) = (top_k(x, k), top_k(y, k));
    if a.is_empty() {
        return 0.0;
    }
    a.iter().filter(|i| b.contains(i)).count() as f64 / a.len() as f64
}

/// Xie et al.'s "generally influential" statistic over the top-k lists of many queries: how
/// many distinct training images fill them, and how concentrated they are.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TopKSpread {
    /// k of every list.
    pub k: usize,
    /// Number of queries.
    pub queries: usize,
    /// Distinct training images among all top-k lists (at most queries × k).
    pub distinct: usize,
    /// Share of the queries × k slots held by the 10 most frequent training images (10/(q·k)
    /// when every list is different, 1 when the same 10 images top every query).
    pub top10_share: f64,
}

/// [`TopKSpread`] of the given top-k lists.
pub fn top_k_spread(lists: &[Vec<usize>], k: usize) -> TopKSpread {
    let mut counts: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for list in lists {
        for &i in list {
            *counts.entry(i).or_default() += 1;
        }
    }
    let slots: usize = lists.iter().map(Vec::len).sum();
    let mut frequencies: Vec<usize> = counts.values().copied().collect();
    frequencies.sort_unstable_by(|a, b| b.cmp(a));
    let top10: usize = frequencies.iter().take(10).sum();
    TopKSpread {
        k,
        queries: lists.len(),
        distinct: counts.len(),
        top10_share: if slots == 0 { 0.0 } else { top10 as f64 / slots as f64 },
    }
}

/// The consistency intraclass correlation ICC(3,1) of a table of `rows` (each row one subject,
/// each of its k ≥ 2 columns one rater; Shrout & Fleiss 1979): (MSR − MSE) / (MSR + (k − 1)·MSE),
/// with MSE the residual after removing both the row and the column means. A column's constant
/// shift (one seed's models all a little worse) does not count against it, as it does not
/// against a correlation between columns. 0 with fewer than two rows or columns, ragged rows,
/// or no variance at all.
pub fn icc_consistency(rows: &[Vec<f64>]) -> f64 {
    let m = rows.len();
    let k = rows.first().map_or(0, Vec::len);
    if m < 2 || k < 2 || rows.iter().any(|r| r.len() != k) {
        return 0.0;
    }
    let row_means: Vec<f64> = rows.iter().map(|r| r.iter().sum::<f64>() / k as f64).collect();
    let column_means: Vec<f64> = (0..k)
        .map(|c| rows.iter().map(|r| r[c]).sum::<f64>() / m as f64)
        .collect();
    let grand = row_means.iter().sum::<f64>() / m as f64;
    let between_rows = k as f64 * row_means.iter().map(|x| (x - grand).powi(2)).sum::<f64>() / (m - 1) as f64;
    let residual = rows
        .iter()
        .zip(&row_means)
        .map(|(r, rm)| {
            r.iter()
                .zip(&column_means)
                .map(|(v, cm)| (v - rm - cm + grand).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / ((m - 1) * (k - 1)) as f64;
    let denominator = between_rows + (k - 1) as f64 * residual;
    if denominator > 0.0 {
        (between_rows - residual) / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_and_bottom_k_by_selection_match_a_full_sort() {
        // With ties: the selection must give exactly what a stable full sort gives.
        let x: Vec<f64> = (0..500).map(|i| ((i * 7919) % 97) as f64 / 7.0).collect();
        let mut full: Vec<usize> = (0..x.len()).collect();
        full.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
        for k in [0, 1, 24, 499, 500, 600] {
            assert_eq!(super::top_k(&x, k), full[..k.min(500)].to_vec(), "top {k}");
            let reversed: Vec<usize> = full.iter().rev().take(k).copied().collect();
            assert_eq!(super::bottom_k(&x, k), reversed, "bottom {k}");
        }
    }

    use super::*;

    #[test]
    fn correlations_of_known_samples() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[8.0, 6.0, 4.0, 2.0]) + 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[1.0, 10.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![1.5, 0.0, 1.5]);
        assert_eq!(pearson(&x, &[1.0; 4]), 0.0);
        assert_eq!(top_k(&[0.1, 0.9, 0.5], 2), vec![1, 2]);
        assert_eq!(overlap_at_k(&[0.1, 0.9, 0.5], &[0.9, 0.8, 0.1], 2), 0.5);
    }

    #[test]
    fn top_k_spread_counts_distinct_images_and_concentration() {
        let same = vec![vec![1, 2]; 5];
        let s = top_k_spread(&same, 2);
        assert_eq!((s.distinct, s.top10_share), (2, 1.0));
        let different: Vec<Vec<usize>> = (0..20).map(|q| vec![2 * q, 2 * q + 1]).collect();
        let s = top_k_spread(&different, 2);
        assert_eq!(s.distinct, 40);
        assert!((s.top10_share - 0.25).abs() < 1e-12);
    }

    #[test]
    fn no_nan_is_ranked_first_at_either_end() {
        let x = [1.0, f64::NAN, -f64::NAN, 3.0, f64::INFINITY, -2.0, f64::NEG_INFINITY];
        assert_eq!(super::top_k(&x, 5), [4, 3, 0, 5, 6]);
        assert_eq!(super::bottom_k(&x, 5), [6, 5, 0, 3, 4]);
        let r = super::ranks(&x);
        assert_eq!(&r[..1], &[2.0]);
        assert!(r[1] >= 5.0 && r[2] >= 5.0, "NaN ranks after every number: {r:?}");
    }

    #[test]
    fn consistency_icc_is_the_share_of_variance_between_rows_beyond_column_shifts() {
        // Rows apart, columns equal: all of it lies between rows.
        assert_eq!(icc_consistency(&[vec![1.0, 1.0], vec![3.0, 3.0], vec![2.0, 2.0]]), 1.0);
        // A column shifted by a constant changes nothing.
        assert_eq!(
            icc_consistency(&[vec![1.0, 11.0], vec![3.0, 13.0], vec![2.0, 12.0]]),
            1.0
        );
        // Columns in opposite order: below 0.
        assert!(icc_consistency(&[vec![1.0, 3.0], vec![3.0, 1.0], vec![2.0, 2.0]]) < 0.0);
        // By hand: rows (1, 2), (4, 4), (4, 6); row means 1.5, 4, 5, grand 3.5, column means 3 and
        // 4; MSR = 2·(4 + 0.25 + 2.25)/2 = 6.5; residuals 0, 0, ±0.5, ∓0.5: SSE = 1, MSE = 0.5;
        // ICC = 6 / 7.
        let icc = icc_consistency(&[vec![1.0, 2.0], vec![4.0, 4.0], vec![4.0, 6.0]]);
        assert!((icc - 6.0 / 7.0).abs() < 1e-12, "{icc}");
        assert_eq!(icc_consistency(&[vec![1.0]]), 0.0);
    }
}
