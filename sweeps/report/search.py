"""The report of a strategy search (`dals search`), from plain records: files only.

- the leaderboard per strategy (its best complete trial in the search), grouped by family and
  generation, with the budget each strategy got (trial-epochs: (trial, seed) epochs trained);
- the top-k re-run on fresh seeds (test accuracy mean +- std) and the verdict;
- the winner's validation curve against the best complete trial of each generation (PNG);
- which regime the dataset behaves like: the paper's Table 1 column whose ranking of the strategies
  is closest (Spearman) to the search's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.report.paper import PAPER_DATASETS, PAPER_TABLE1

# A family is what a strategy's update is built on (the README's table of the registry).
FAMILIES: dict[str, tuple[str, ...]] = {
    "SGD + schedule": ("sgd", "cosine", "sgdr"),
    "Adam-type": ("adam", "adamw", "adabound", "radam", "lookahead-adamw"),
    "sign": ("lion",),
    "layer-wise": ("lars", "discriminative", "stlr-discriminative"),
    "sharpness / gradient filter": ("sam", "sam-discriminative", "grokfast"),
    "DALS": ("dals", "dals-fast", "dals-acc"),
}
FAMILY = {s: f for f, members in FAMILIES.items() for s in members}
PAPER_REGIME = {"synthetic": "scratch", "cifar10": "scratch", "rte": "finetune", "trec6": "finetune",
                "imdb": "finetune"}
MIN_SHARED = 6  # strategies the search and the paper must share for a regime call
MIN_RHO = 0.3  # below it, no paper column ranks the strategies like the search does


def leaderboard(trials: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per strategy: its best complete trial, counts and budget; best first."""
    df = pd.DataFrame(trials)
    if df.empty:
        return pd.DataFrame(columns=["strategy", "family", "generation", "trials", "complete", "pruned",
                                     "trial_epochs", "best_val", "reached", "score", "best_trial", "hp"])
    rows = []
    for strategy, g in df.groupby("strategy", sort=False):
        done = g[g["state"] == "COMPLETE"]
        best = done.loc[done["value"].idxmax()] if len(done) else None
        rows.append({"strategy": strategy, "family": FAMILY.get(strategy, "other"),
                     "generation": int(g["generation"].iloc[0]), "trials": len(g), "complete": len(done),
                     "pruned": int((g["state"] == "PRUNED").sum()), "trial_epochs": int(g["trial_epochs"].sum()),
                     "best_val": math.nan if best is None else float(best["value"]),
                     "reached": int(g["curve"].map(len).max()),
                     "score": max(len(c) * 10 + c[-1] for c in g["curve"] if c) if g["curve"].map(len).max() else math.nan,
                     "best_trial": None if best is None else int(best["number"]),
                     "hp": {} if best is None else best["hp"]})
    out = pd.DataFrame(rows)
    return out.sort_values(["best_val", "score"], ascending=[False, False], na_position="last",
                           ignore_index=True)


def grouped(board: pd.DataFrame, by: str) -> pd.DataFrame:
    """Best strategy and value, trials and budget per family or generation."""
    rows = []
    for key, g in board.groupby(by, sort=False):
        top = g.iloc[0]  # the board is sorted best first
        rows.append({by: key, "best": top["strategy"] if top["best_val"] == top["best_val"] else "-",
                     "best_val": top["best_val"], "trials": int(g["trials"].sum()),
                     "trial_epochs": int(g["trial_epochs"].sum())})
    return pd.DataFrame(rows).sort_values("best_val", ascending=False, na_position="last", ignore_index=True)


def regime_like(board: pd.DataFrame) -> tuple[str, str, float, int] | None:
    """(regime, paper dataset, Spearman rho, strategies compared): the paper's Table 1 column that
    ranks the strategies most like the search, None under MIN_SHARED strategies. The search ranks a
    strategy as ASHA does (`score`): by the furthest epoch any of its trials reached, then by its
    value there, so every strategy the search looked at counts, stopped ones too."""
    ours = board.dropna(subset=["score"]).set_index("strategy")["score"]
    paper = {k.split("@", 1)[0]: v for k, v in PAPER_TABLE1.items()}
    shared = [s for s in ours.index if s in paper]
    if len(shared) < MIN_SHARED:
        return None
    best = None
    for i, dataset in enumerate(PAPER_DATASETS):
        theirs = pd.Series({s: paper[s][i] for s in shared})
        rho = float(ours[shared].rank().corr(theirs.rank()))
        if best is None or (rho == rho and rho > best[2]):
            best = (PAPER_REGIME[dataset], dataset, rho, len(shared))
    return best


def regime_line(like: tuple[str, str, float, int] | None) -> str:
    if like is None:
        return f"Regime: too few strategies were looked at (< {MIN_SHARED}) to compare with the paper."
    regime, dataset, rho, n = like
    if not rho >= MIN_RHO:
        return (f"Regime: no clear match: the closest of the paper's Table 1 columns is {dataset} ({regime}), "
                f"Spearman {rho:+.2f} over {n} strategies (under {MIN_RHO}).")
    return (f"Regime: the dataset behaves like **{regime}**: the search ranks the strategies most like the "
            f"paper's {dataset} column (Spearman {rho:+.2f} over {n} strategies).")


def _num(x: Any, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _hp(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hp.items())) or "-"


def plot_winner(trials: list[dict[str, Any]], winner_trial: int | None, out: Path) -> Path | None:
    """The winner's search curve (mean val accuracy per epoch) against each generation's best
    complete trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["state"] == "COMPLETE" and t["curve"]]
    if not done:
        return None
    best_gen: dict[int, dict[str, Any]] = {}
    for t in done:
        g = t["generation"]
        if g not in best_gen or t["value"] > best_gen[g]["value"]:
            best_gen[g] = t
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in sorted(best_gen):
        t = best_gen[g]
        if t["number"] == winner_trial:
            continue
        ax.plot(range(1, len(t["curve"]) + 1), t["curve"], marker=".", alpha=0.7,
                label=f"gen{g} best: {t['strategy']} (#{t['number']})")
    win = next((t for t in done if t["number"] == winner_trial), None)
    if win is not None:
        ax.plot(range(1, len(win["curve"]) + 1), win["curve"], color="black", linewidth=2.5, marker="o",
                label=f"winner: {win['strategy']} (#{win['number']}, gen{win['generation']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy (mean over the search's seeds)")
    ax.set_title("the winner against the best of each generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def _rerun_cells(r: dict[str, Any]) -> list[str]:
    """A top-k row's re-run val and test cells; a runner-up the search already set apart says so."""
    if r.get("status") == "skipped":
        return ["not re-run", "not re-run (search value > 2 standard errors below the best's)"]
    return [_num(r["val_mean"]), f"{_num(r['test_mean'])} ± {_num(r['test_std'])}"]


def write_search_report(out_dir: Path, *, title: str, trials: list[dict[str, Any]], reruns: list[dict[str, Any]],
                        verdict: str, preset: str | None, trial_epochs: dict[str, int],
                        budget: dict[str, Any]) -> Path:
    """`search.md`, `leaderboard.csv` and `winner.png` in `out_dir`; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = leaderboard(trials)
    board.to_csv(out_dir / "leaderboard.csv", index=False)
    winner = reruns[0] if reruns and reruns[0]["test"] else None
    lines = [f"# {title}", ""]
    if winner:
        lines += [f"**Winner: `{winner['strategy']}`** ({_hp(winner['hp'])}): test accuracy "
                  f"{_num(winner['test_mean'])} ± {_num(winner['test_std'])} on fresh seeds "
                  f"{budget['rerun_seeds']}; preset `{preset}`.", "", f"Verdict: {verdict}.", ""]
    lines += [regime_line(regime_like(board)), ""]
    states = pd.Series([t["state"] for t in trials]).value_counts().to_dict() if trials else {}
    lines += [f"Budget: {budget['trials']} trials" + (f" or {budget['minutes']:g} min" if budget.get("minutes") else "")
              + f", {budget['seeds']} seed{'s' if budget['seeds'] != 1 else ''} each; {len(trials)} started ({', '.join(f'{v} {k.lower()}' for k, v in states.items())}); "
              f"trial-epochs: search {trial_epochs['search']}, re-run {trial_epochs['rerun']}; wall {budget['wall_s']:g} s.", ""]
    lines += ["## Top-k on fresh seeds", "",
              "Ranked by mean validation accuracy on the fresh seeds; test accuracy is reported, never chosen on.", ""]
    lines += _table(["rank", "strategy", "search trial", "search val", "re-run val", "test (mean ± std)", "hp"],
                    [[i + 1, r["strategy"], r["number"], _num(r["objective"]), *_rerun_cells(r), _hp(r["hp"])]
                     for i, r in enumerate(reruns)])
    lines += ["", "## Leaderboard (search, best complete trial per strategy)", ""]
    lines += _table(["strategy", "family", "gen", "trials", "complete", "pruned", "trial-epochs", "furthest epoch",
                     "best val (complete)", "hp"],
                    [[r.strategy, r.family, r.generation, r.trials, r.complete, r.pruned, r.trial_epochs, r.reached,
                      _num(r.best_val), _hp(r.hp)] for r in board.itertuples()])
    for by, label in (("family", "family"), ("generation", "generation")):
        g = grouped(board, by) if len(board) else pd.DataFrame()
        lines += ["", f"## By {label}", ""]
        lines += _table([label, "best strategy", "best val", "trials", "trial-epochs"],
                        [[getattr(r, by), r.best, _num(r.best_val), r.trials, r.trial_epochs] for r in g.itertuples()])
    png = plot_winner(trials, winner["number"] if winner else None, out_dir / "winner.png")
    if png is not None:
        lines += ["", f"![the winner against the best of each generation]({png.name})"]
    path = out_dir / "search.md"
    path.write_text("\n".join(lines) + "\n")
    return path
