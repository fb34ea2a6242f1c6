# %%
#| default_exp compare

# %% [markdown]
# # Deciding an ordering
#
# > Paired differences over seeds (t-test) or frames (bootstrap) with their confidence intervals and a verdict, Holm's correction for a family of comparisons, and the forest plot that shows them: how the book decides the thesis' orderings.

# %% [markdown]
# *Default run: **8 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# The thesis' claims are orderings: CPFS transfers better than direct flow classification (chapter 3), S3
# segments better than appearance alone (chapter 4), saliency seeds GrabCut better than a centre prior
# (chapter 7). The book decides each on paired differences — the arms evaluated on the same seeds or frames —
# with these tools — over seeds, a paired $t$-test; over many test frames, the paired bootstrap — Holm's correction
# for a family, and the forest plot; chapters 3 and 4 use them (`motion_nbs.transfer` re-exports them).

# %%
#| export
import numpy as np

from motion_nbs.core import optional_import

# %%
#| hide
from fastcore.test import test_close, test_eq, test_fail
from scipy import stats as _stats


# %% [markdown]
# ## Deciding an ordering
#
# Each claim of the chapter is an ordering of arms — CPFS above direct flow classification above random.
# With the arms evaluated on the same seeds, `paired_comparison` takes the per-seed differences $d_s$ of one
# metric: their mean, its 95% confidence interval ($t$ distribution with $n-1$ degrees of freedom), the paired
# $t$-test's two-sided p-value (scipy), and a verdict: *holds* when $p < 0.05$ and the mean is positive,
# *reversed* when $p < 0.05$ and it is negative, *not resolved* otherwise.

# %%
#| export
def paired_comparison(a, b  # the metric of two arms, one value per seed, in the same seed order
                     ) -> dict:
    "The paired difference a − b: mean, 95% CI, paired t-test p-value, verdict ('holds', 'not resolved', 'reversed')."
    from scipy import stats
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_comparison needs two equally long lists of at least 2 values, got {a.shape} and {b.shape}")
    d = a - b
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    half = float(stats.t.ppf(0.975, len(d) - 1) * se)
    p = float(stats.ttest_rel(a, b).pvalue) if se > 0 else (0.0 if mean != 0 else 1.0)
    verdict = "not resolved" if not p < 0.05 else "holds" if mean > 0 else "reversed"
    return dict(mean_difference=mean, ci95=[mean - half, mean + half], p=p, n=len(d), verdict=verdict)



# %%
_c = paired_comparison([0.62, 0.65, 0.61, 0.66, 0.64], [0.55, 0.56, 0.57, 0.55, 0.58])
test_eq(_c["verdict"], "holds"); test_close(_c["mean_difference"], 0.074, eps=1e-9)
test_close(_c["p"], _stats.ttest_rel([0.62, 0.65, 0.61, 0.66, 0.64], [0.55, 0.56, 0.57, 0.55, 0.58]).pvalue, eps=1e-12)
test_eq(paired_comparison([0.5, 0.6, 0.4], [0.55, 0.5, 0.45])["verdict"], "not resolved")
test_eq(paired_comparison([0.1, 0.2, 0.15, 0.1], [0.5, 0.6, 0.55, 0.52])["verdict"], "reversed")
test_fail(lambda: paired_comparison([1.0], [0.5]), contains="at least 2 values")


# %% [markdown]
# Over many test frames instead of a few seeds, and for metrics whose per-frame values are far from normal
# (the IoU of a segmentation, the share of pixels a mask gets right), chapter 7's orderings are judged by the
# **paired bootstrap**: resample the frames with replacement, the same frames for both arms, `n_boot` times;
# the 95 % CI is the percentile interval of the resampled mean differences, and the two-sided p-value is twice
# the share of resampled differences on the far side of zero (at least $1/(n_\text{boot}+1)$, so never 0).

# %%
#| export
def paired_bootstrap(a, b,  # the metric of two arms on the same items (frames), one value per item, in the same order
                     n_boot: int = 10_000,  # bootstrap resamples
                     seed: int = 0  # seeds the resampling
                    ) -> dict:
    "The paired difference a − b over items: mean, percentile 95% CI and two-sided p-value of the paired bootstrap, verdict."
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_bootstrap needs two equally long lists of at least 2 values, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()): raise ValueError("paired_bootstrap: the values contain NaN or inf")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 100): raise ValueError(f"n_boot={n_boot!r}; expected an int >= 100")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * max(min((means <= 0).mean(), (means >= 0).mean()), 1 / (n_boot + 1))) if d.any() else 1.0
    mean = float(d.mean())
    verdict = "not resolved" if not p < 0.05 else "holds" if mean > 0 else "reversed"
    return dict(mean_difference=mean, ci95=[float(lo), float(hi)], p=float(p), n=len(d), n_boot=n_boot, verdict=verdict)


# %%
_rng = np.random.default_rng(1)
_x = _rng.normal(0.6, 0.1, 500); _y = _x - 0.02 + _rng.normal(0, 0.05, 500)
_b = paired_bootstrap(_x, _y)
_ref = _stats.bootstrap((_x, _y), lambda u, v, axis=-1: (u - v).mean(axis), paired=True, method="percentile",
                        n_resamples=10_000, random_state=np.random.default_rng(7)).confidence_interval
test_close(_b["ci95"], [_ref.low, _ref.high], eps=2e-3)        # scipy's paired percentile bootstrap, other resamples
test_close(_b["mean_difference"], float((_x - _y).mean()), eps=1e-12)
test_eq(_b["verdict"], "holds"); assert _b["p"] < 1e-3
test_eq(paired_bootstrap(_x, _x)["p"], 1.0)                    # identical arms: nothing to decide
_null = [paired_bootstrap(_rng.normal(0, 1, 40), _rng.normal(0, 1, 40), n_boot=1000, seed=k)["p"] for k in range(200)]
assert 0.02 < np.mean(np.array(_null) < 0.05) < 0.10, np.mean(np.array(_null) < 0.05)   # about 5 % false alarms under the null
test_eq(paired_bootstrap(_x, _y, seed=3), paired_bootstrap(_x, _y, seed=3))
test_fail(lambda: paired_bootstrap([1.0, float("nan")], [0.5, 0.2]), contains="NaN or inf")
test_fail(lambda: paired_bootstrap(_x, _y, n_boot=10), contains="n_boot=10")


# %% [markdown]
# Chapter 3's experiments test several orderings at once — every CPFS loss against flow classification, in
# every world, on several metrics — so a p-value below 0.05 is expected by chance somewhere in the family.
# `holm` adjusts a family's p-values by Holm's step-down method (it controls the family-wise error rate
# without assuming independence): sort the $m$ p-values, multiply the $i$-th smallest by $m - i + 1$, make
# the sequence non-decreasing and cap it at 1.

# %%
#| export
def holm(pvalues  # the family's p-values, in any order
        ) -> list:
    "Holm-adjusted p-values, in the order given."
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)): raise ValueError(f"holm needs a list of p-values in [0, 1], got {pvalues!r}")
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out.tolist()


# %%
test_close(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], eps=1e-12)
test_eq(holm([]), [])
test_eq(holm([0.5]), [0.5])
test_fail(lambda: holm([0.1, 1.5]), contains="p-values in [0, 1]")


# %% [markdown]
# A conclusion that is a paired difference is drawn as one: `forest_plot` puts each comparison on its own row
# with its mean and 95 % CI, and a line at zero (not bars of means with standard deviations, which hide the
# pairing).

# %%
#| export
def forest_plot(rows: list,  # dicts: label, mean, ci95 [lo, hi], group (rows of one group share a colour)
                ax=None, xlabel: str = "paired difference", title: str = None,
                ylabel: str = "comparison"):
    """Paired differences with their 95 % CIs, one row each, top to bottom, and a line at 0: the figure for a conclusion
    that is a paired difference (not bars of means). Returns the axes."""
    plt = optional_import("matplotlib.pyplot", "forest_plot")
    if ax is None: ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))[1]
    groups = list(dict.fromkeys(r.get("group") for r in rows))
    for i, r in enumerate(rows):
        c = f"C{groups.index(r.get('group')) % 10}"
        lo, hi = r["ci95"]
        ax.errorbar(r["mean"], i, xerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="o", color=c, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(xlabel); ax.set_ylabel(ylabel)
    if title: ax.set_title(title, fontsize=9)
    return ax


# %%
_ax = forest_plot([dict(label="a − b", mean=1.0, ci95=[0.5, 1.5], group="x"), dict(label="c − b", mean=-2.0, ci95=[-3.0, -1.0], group="y")])
test_eq([t.get_text() for t in _ax.get_yticklabels()], ["a − b", "c − b"])
test_eq(len(_ax.lines), 1 + 2 * 3)   # the zero line; per row: the marker and the two caps

# %%
#| hide
import nbdev; nbdev.nbdev_export()
