"""The report's learning curves: one PNG per dataset, each strategy's mean over seeds with a
±1 std band, readable with all 19 strategies.

Up to `SINGLE_PANEL_MAX` strategies share one panel; more get one panel per generation, with the
other generations' means in grey behind for scale and the best strategy of all dashed as the mark
to beat. The epoch axis is logarithmic when most of the change happens in the first epochs
(`early_action`); the value axis is logit (accuracies that all end near 0.98: 0.98 and 0.99 apart,
0.5 still shown) or log (a loss over decades) when the curves end close together far from where they
started (`value_scale`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SINGLE_PANEL_MAX = 8  # strategies one panel shows legibly; more are split by generation
EARLY_SHARE = 0.8  # a log epoch axis when curves cover this share of their change in the first quarter
LOGIT_TICKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
GREY = "0.8"  # the other generations' curves
X_LABELS = {"epoch": "epoch", "steps": "optimizer step"}


def curve_stats(group: pd.DataFrame, metric: str, x: str = "epoch") -> pd.DataFrame:
    """Per (generation, strategy, x): mean, std and count of the metric over seeds (a diverged
    seed's blanked epochs left out). `x` is "epoch" or "steps" (optimizer steps so far)."""
    stats = group.groupby(["generation", "strategy", x])[metric].agg(["mean", "std", "count"])
    return stats.dropna(subset=["mean"]).reset_index()


def early_action(stats: pd.DataFrame) -> bool:
    """Whether most of the curves' change happens in the first quarter of the epochs (then a log
    epoch axis shows it): the median strategy covers `EARLY_SHARE` of its first-to-last change by then."""
    last_epoch = stats["epoch"].max()
    if last_epoch < 8:
        return False
    shares = []
    for _, s in stats.groupby("strategy"):
        s = s.sort_values("epoch")
        span = s["mean"].iloc[-1] - s["mean"].iloc[0]
        early = s[s["epoch"] <= last_epoch / 4]
        if len(early) and abs(span) > 1e-9:
            shares.append((early["mean"].iloc[-1] - s["mean"].iloc[0]) / span)
    return bool(shares) and float(pd.Series(shares).median()) >= EARLY_SHARE


def value_scale(stats: pd.DataFrame, metric: str, x: str = "epoch") -> str:
    """The value axis's scale, when the curves end close together far from where they started:
    "logit" for an accuracy (a fraction in (0, 1)), "log" for another positive metric (a loss)
    spanning over a decade; else "linear"."""
    values = stats["mean"]
    low, high = float(values.min()), float(values.max())
    late = values[stats[x] >= stats[x].max() / 2]
    close = float(late.max() - late.min()) < 0.15 * (high - low)
    if "accuracy" in metric and 0 < low and high < 1 and close:
        return "logit"
    if low > 0 and high / low > 10 and close:
        return "log"
    return "linear"


def epoch_ticks(last: int) -> list[int]:
    """Whole-epoch ticks for a log axis: 1, 2, 5, 10, 20, 50... up to the last epoch, and it."""
    ticks = [t for t in (m * 10 ** k for k in range(6) for m in (1, 2, 5)) if t < last * 0.8]
    return ticks + [last]


def value_ticks(scale: str, low: float, high: float) -> list[float]:
    """Labelled values on a logit or log axis spanning `low`..`high`."""
    if scale == "logit":
        return [t for t in LOGIT_TICKS if low * 0.9 <= t <= 1 - (1 - high) * 0.5]
    return [t for t in (m * 10.0 ** k for k in range(-4, 5) for m in (1, 2, 5)) if low * 0.8 <= t <= high * 1.25]


def _draw(ax, s: pd.DataFrame, x: str, color, label: str, band: bool, inside_unit: bool) -> None:
    ax.plot(s[x], s["mean"], color=color, lw=1.8, marker="." if len(s) <= 20 else None, label=label,
            zorder=3)
    if band and s["std"].notna().any():
        std = s["std"].fillna(0)
        low, high = s["mean"] - std, s["mean"] + std
        if inside_unit:  # a logit axis ends short of 0 and 1
            low, high = low.clip(1e-4, 1 - 1e-4), high.clip(1e-4, 1 - 1e-4)
        ax.fill_between(s[x], low, high, color=color, alpha=0.18, lw=0)


def _scales(ax, stats: pd.DataFrame, log_x: bool, y_scale: str) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(epoch_ticks(int(stats["epoch"].max()))))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
        ax.xaxis.set_minor_locator(NullLocator())
    if y_scale != "linear":
        ax.set_yscale(y_scale)
        ticks = value_ticks(y_scale, float(stats["mean"].min()), float(stats["mean"].max()))
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_minor_locator(NullLocator())


class _Figure:
    """One dataset's curves: what every panel shares (the best of all, divergences, the axes)."""

    def __init__(self, group: pd.DataFrame, metric: str, mode: str, x: str = "epoch"):
        self.metric, self.x = metric, x
        self.stats = curve_stats(group, metric, x)
        self.per = {k: s.sort_values(x) for k, s in self.stats.groupby(["generation", "strategy"])}
        self.seeds = int(group["seed"].nunique())
        self.gens = sorted({int(g) for g, _ in self.per})
        self.split = len(self.per) > SINGLE_PANEL_MAX and len(self.gens) > 1
        self.sign = -1 if mode == "max" else 1  # sorts the best final mean first
        self.best = min(self.per.items(), key=lambda kv: self.sign * kv[1]["mean"].iloc[-1])
        self.diverged = group[group["status"] == "diverged"].groupby("strategy")["seed"].nunique()
        self.log_x = x == "epoch" and early_action(self.stats)
        self.y_scale = value_scale(self.stats, metric, x)

    def panel(self, ax, gen: int | None) -> None:
        """The strategies of generation `gen` (all of them for None) in colour, with bands."""
        import matplotlib.pyplot as plt

        mine = [(k, s) for k, s in self.per.items() if gen is None or int(k[0]) == gen]
        if gen is not None:  # the rest, for scale, and the best of all as the mark to beat
            for k, s in self.per.items():
                if int(k[0]) != gen:
                    ax.plot(s[self.x], s["mean"], color=GREY, lw=0.8, zorder=1)
            (best_gen, best_name), best = self.best
            if int(best_gen) != gen:
                ax.plot(best[self.x], best["mean"], color="0.2", lw=1.1, ls="--", zorder=2,
                        label=f"best: {best_name} {best['mean'].iloc[-1]:.3f}")
            ax.set_title(f"gen{gen}", fontsize=10, loc="left")
        palette = plt.cm.tab10.colors if len(mine) <= 10 else plt.cm.tab20.colors
        for i, ((g, strategy), s) in enumerate(sorted(mine, key=lambda kv: self.sign * kv[1]["mean"].iloc[-1])):
            label = (f"{strategy} {s['mean'].iloc[-1]:.3f}"
                     + ("" if self.split or len(self.gens) == 1 else f" (gen{int(g)})")
                     + (f", {self.diverged[strategy]} diverged" if strategy in self.diverged else ""))
            _draw(ax, s, self.x, palette[i % len(palette)], label, self.seeds > 1, self.y_scale == "logit")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("best: "))  # best first, mark last
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, loc="best",
                  framealpha=0.7, title=f"final {self.metric}", title_fontsize=7)
        _scales(ax, self.stats, self.log_x, self.y_scale)

    def save(self, dataset: str, path: Path) -> None:
        import matplotlib.pyplot as plt

        panels = self.gens if self.split else [None]
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.6 * nrows + 0.9), dpi=110,
                                 sharex=True, sharey=True, squeeze=False)
        for ax, gen in zip(axes.flat, panels):
            self.panel(ax, gen)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel(X_LABELS[self.x] + (" (log scale)" if self.log_x else ""))
        for ax in axes[:, 0]:
            ax.set_ylabel(self.metric + ("" if self.y_scale == "linear" else f" ({self.y_scale} scale)"))
        spread = f"mean ± std over {self.seeds} seeds" if self.seeds > 1 else "1 seed"
        fig.suptitle(f"{dataset}: {self.metric} per {X_LABELS[self.x]} ({spread}"
                     + ("; grey: the other generations)" if self.split else ")"), fontsize=11)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def plot_curves(df: pd.DataFrame, metric: str, out_dir: Path, mode: str = "max", x: str = "epoch",
                prefix: str = "curves") -> dict[str, Path]:
    """One PNG per dataset of `df` (one row per trial and epoch), `<prefix>-<dataset>.png`: dataset ->
    file. `mode` says which final value is best (legend order, the dashed mark); `x` is the column
    on the horizontal axis ("epoch", or "steps" where the rows carry optimizer steps)."""
    import matplotlib

    matplotlib.use("Agg")
    files = {}
    for dataset, group in df[df["epoch"] > 0].groupby("dataset"):
        if metric not in group or group[metric].isna().all():
            continue
        path = out_dir / f"{prefix}-{file_safe(dataset)}.png"
        _Figure(group, metric, mode, x).save(dataset, path)
        files[dataset] = path
    return files


def file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
