"""The quality/cost curve of adaptive switching: pass@1 against EAD's relative cost, per policy."""

from __future__ import annotations

from pathlib import Path


def relative_cost(large_fraction: float, params: dict[str, int], small: str, large: str) -> float:
    """EAD's cost (Ruan et al., 2025): (f_L·P_L + (1−f_L)·P_S) / P_L."""
    return large_fraction + (1 - large_fraction) * params[small] / params[large]


def plot_pareto(rows: list[dict], params: dict[str, int], path: Path) -> None:
    """One point per concurrency-8 run; the two single models as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small, large = sorted(params, key=params.get)
    sweep = [row for row in rows if row["concurrency"] == 8]
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for policy, marker in (("ead", "o"), ("quantile", "s"), ("token", "^")):
        points = sorted((relative_cost(row["large_fraction"] or 0.0, params, small, large), row["pass_at_1"],
                         row["config"]) for row in sweep if row["config"].startswith(policy + " "))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=policy)
            for cost, score, name in points:
                ax.annotate(name.split(" ")[1].split("/")[0], (cost, score), textcoords="offset points",
                            xytext=(3, -10), fontsize=7)  # the threshold; window/dwell are in RESULTS.md
    for name, fraction, colour in (("small", 0.0, "black"), ("large", 1.0, "tab:red")):
        row = next((row for row in sweep if row["config"] == name), None)
        if row is not None:
            ax.scatter([relative_cost(fraction, params, small, large)], [row["pass_at_1"]], color=colour, zorder=3,
                       label=f"{name} alone")
    large_row = next((row for row in sweep if row["config"] == "large"), None)
    if large_row is not None:
        ax.axhline(0.97 * large_row["pass_at_1"], color="grey", linestyle=":", linewidth=0.8,
                   label="97% of large")
    ax.set_xlabel("relative cost  (f_L·P_L + (1−f_L)·P_S) / P_L")
    ax.set_ylabel("HumanEval pass@1 (greedy)")
    ax.set_title(f"{small} / {large}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
