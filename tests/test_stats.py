"stackwise.eval.stats.compare_seeds against scipy and against a by-hand enumeration."
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from stackwise.core import StackwiseError
from stackwise.eval.stats import compare_seeds, seed_summary


def test_welch_matches_scipy_and_hand():
    a, b = [2.10, 2.05, 2.20, 2.12], [2.30, 2.26, 2.41]
    r = compare_seeds(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert r['t'] == pytest.approx(ref.statistic, rel=1e-12)
    assert r['p'] == pytest.approx(ref.pvalue, rel=1e-12)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert r['t'] == pytest.approx((np.mean(a) - np.mean(b)) / np.sqrt(va + vb), rel=1e-12)
    # Welch-Satterthwaite degrees of freedom give the same p-value
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    assert r['p'] == pytest.approx(2 * stats.t.sf(abs(r['t']), df), rel=1e-9)
    assert (r['n_a'], r['n_b']) == (4, 3)
    assert r['mean_a'] == pytest.approx(np.mean(a)) and r['std_b'] == pytest.approx(np.std(b, ddof=1))
    assert r['diff'] == pytest.approx(np.mean(a) - np.mean(b))


def test_exact_permutation_by_enumeration():
    a, b = np.array([1.0, 1.4, 0.9, 1.2]), np.array([1.3, 1.8, 1.6])
    r = compare_seeds(a, b)
    pool, obs = np.concatenate([a, b]), abs(a.mean() - b.mean())
    diffs = [abs(pool[list(i)].mean() - np.delete(pool, list(i)).mean()) for i in combinations(range(7), 4)]
    assert r['perm_exact']
    assert r['perm_p'] == pytest.approx(np.mean([d >= obs - 1e-12 for d in diffs]), abs=1e-12)


def test_no_difference_is_not_significant():
    r = compare_seeds([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r['diff'] == 0 and r['perm_p'] == pytest.approx(1.0) and r['p'] == pytest.approx(1.0)


def test_random_permutations_when_enumeration_is_large():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 12), rng.normal(1.5, 1, 12)  # C(24, 12) = 2.7M relabellings: sampled
    r = compare_seeds(a, b, n_resamples=2000, seed=1)
    assert not r['perm_exact'] and r['perm_p'] < 0.05 and r['p'] < 0.05


def test_bad_input_names_the_fix():
    assert compare_seeds([1.0], [1.0, 2.0])['verdict'] == 'fewer than two runs per arm: no test'
    with pytest.raises(StackwiseError, match='paired'): compare_seeds([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)
    with pytest.raises(StackwiseError, match='no finite'): seed_summary([None, float('nan')])
    with pytest.raises(StackwiseError, match='NaN'): compare_seeds([1.0, np.inf], [1.0, 2.0])


def test_paired_matches_scipy_and_sign_flips():
    a, b = np.array([1.50, 1.61, 1.72, 1.40]), np.array([1.53, 1.66, 1.73, 1.45])
    r = compare_seeds(a, b, paired=True)
    assert r['test'] == 'paired t' and r['t'] == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    d = a - b  # exact sign-flip enumeration: 2^4 relabellings
    flips = [abs(np.mean(d * np.array(s))) for s in __import__('itertools').product([1, -1], repeat=4)]
    assert r['perm_exact'] and r['perm_p'] == pytest.approx(np.mean([f >= abs(d.mean()) - 1e-12 for f in flips]), abs=1e-12)
    assert r['significant'] == (r['p'] < 0.05)


def test_seed_summary_t_interval():
    v = [2.0, 2.3, 2.1, 2.5]
    s = seed_summary(v + [None, float('inf')])
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert s['n'] == 4 and s['ci95_lo'] == pytest.approx(np.mean(v) - half) and s['ci95_hi'] == pytest.approx(np.mean(v) + half)
    one = seed_summary([3.0])
    assert one['n'] == 1 and one['mean'] == 3.0 and np.isnan(one['std'])
