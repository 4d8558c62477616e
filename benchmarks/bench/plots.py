"""PNG figures of a bench report: latency CDFs, and throughput / p99 TTFT against load."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: the bench runs on headless machines
    import matplotlib.pyplot as plt

    return plt


def latency_cdfs(report: dict, path: Path) -> None:
    """Empirical CDFs of TTFT, TPOT, ITL and E2E latency: one line per target and load level."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for axis, key, title in zip(axes.flat, ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"),
                                ("TTFT", "TPOT (excl. first token)", "ITL (per token)", "end-to-end latency")):
        shown: list[float] = []
        for level in report["levels"]:
            for name, records in level["records"].items():
                if key == "itl_ms":
                    values = [x for r in records if r["ok"] for x in r["itl_ms"]]
                else:
                    values = [r[key] for r in records if r["ok"] and r[key] is not None]
                if not values:
                    continue
                xs = np.sort(values)
                shown += [float(xs[0]), float(xs[-1])]
                axis.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=f"{name} {level['label']}")
        axis.set_title(title)
        axis.set_xlabel("ms")
        if shown and min(shown) > 0 and max(shown) / min(shown) > 50:  # stalls stretch the axis: keep the body of the CDF readable
            axis.set_xscale("log")
        axis.set_ylabel("fraction of requests" if key != "itl_ms" else "fraction of tokens")
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    figure.suptitle(f"latency CDFs ({report['config']['dataset']}, {report['config']['api']})")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_curves(report: dict, path: Path) -> None:
    """Output throughput, request goodput and p99 TTFT against concurrency (or request rate)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [t["name"] for t in report["targets"]]
    xs = [level["x"] for level in report["levels"]]
    for name in names:
        runs = [level["runs"][name] for level in report["levels"]]
        axes[0].plot(xs, [r["output_throughput"] for r in runs], marker="o", label=name)
        axes[1].plot(xs, [r["goodput"] if r["goodput"] is not None else r["request_throughput"] for r in runs],
                     marker="o", label=name)
        axes[2].plot(xs, [r["ttft_ms"]["p99"] for r in runs], marker="o", label=name)
    x_label = "request rate (req/s)" if report["config"]["mode"] == "rate" else "concurrency"
    goodput_title = "goodput (req/s within SLO)" if report["config"]["slo_s"] else "request throughput (req/s)"
    for axis, title in zip(axes, ("output throughput (tok/s)", goodput_title, "TTFT p99 (ms)")):
        axis.set_title(title)
        axis.set_xlabel(x_label)
        axis.grid(alpha=0.3)
        if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            axis.set_xscale("log", base=2)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Both figures into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latency_cdf.png", out_dir / "load_curves.png"]
    latency_cdfs(report, paths[0])
    load_curves(report, paths[1])
    return paths
