"""Sweep results: validation loss vs learning rate per width, the optimal LR per width, its drift in grid
steps, and the transfer gap (the largest width trained at the LR tuned at the smallest width, against the
best loss found at the largest width). A cell run with several seeds counts with its mean loss over them,
and as diverged if any seed diverged."""

from __future__ import annotations

import math
from pathlib import Path

from .sweep import read_rows


def read_many(paths: list[str | Path]) -> list[dict]:
    """The rows of one or more results files. With several, each file's rows are kept apart (their own
    panel and summary): the parametrization is labelled with the file, e.g. `mup [alpha8/results.jsonl]`."""
    if len(paths) == 1:
        return read_results(paths[0])
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise ValueError("the same results file is given twice")
    labels = [f"{Path(p).parent.name}/{Path(p).name}" if Path(p).parent.name else Path(p).name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    return [
        {**row, "parametrization": f"{row['parametrization']} [{label}]"}
        for path, label in zip(paths, labels, strict=True)
        for row in read_results(path)
    ]


def read_results(path: str | Path) -> list[dict]:
    """The rows of a results file; for a trial recorded more than once, the last row, except that an error
    row does not replace an outcome (ok or diverged) of the same config. A row without a seed is seed 0."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a results file (a folder?)")
    rows: dict[tuple, dict] = {}
    for n, row in read_rows(path):
        missing = {"width", "lr", "parametrization", "optimizer"} - set(row)
        if missing:
            raise ValueError(f"{path}:{n}: missing {', '.join(sorted(missing))}")
        _check_row(row, f"{path}:{n}")
        key = row["parametrization"], row["optimizer"], row["width"], row["lr"], row.get("seed", 0)
        old = rows.get(key, {})
        kept = old.get("status", "error") != "error" and old.get("config_hash") == row.get("config_hash")
        if row.get("status") != "error" or not kept:  # an error row hides no outcome of the same config
            rows[key] = row
    return list(rows.values())


def _check_row(row: dict, where: str) -> None:
    """The fields the plot reads have their types."""
    if isinstance(row["width"], bool) or not isinstance(row["width"], int):
        raise ValueError(f"{where}: width must be an integer, got {row['width']!r}")
    if isinstance(row["lr"], bool) or not isinstance(row["lr"], (int, float)):
        raise ValueError(f"{where}: lr must be a number, got {row['lr']!r}")
    for key in ("final_val_loss", "best_val_loss"):
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{where}: {key} must be a number or null, got {v!r}")


def _loss(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if row.get("diverged") or row.get("status") == "error" or v is None or not math.isfinite(v):
        return None
    return float(v)


def cells(rows: list[dict], metric: str) -> dict[tuple, dict]:
    """(width, lr) -> the cell over its seeds: `loss` the mean (None if a seed diverged), `losses` each
    finished seed's, `diverged` a seed diverged or ended without a finite loss, `seeds` how many rows."""
    out: dict[tuple, dict] = {}
    for r in rows:
        c = out.setdefault((r["width"], r["lr"]), {"losses": [], "diverged": False, "seeds": 0})
        c["seeds"] += 1
        loss = _loss(r, metric)
        c["diverged"] |= bool(r.get("diverged")) or loss is None
        if loss is not None:
            c["losses"].append(loss)
    for c in out.values():
        c["loss"] = None if c["diverged"] else sum(c["losses"]) / len(c["losses"])
    return out


def summarize(rows: list[dict], metric: str = "final_val_loss") -> list[dict]:
    """One entry per (parametrization, optimizer): per width the optimal LR (its index in the LR grid, and
    whether it sits at the grid's edge), the shift of the optimum from the smallest width in grid steps, the
    drift (largest minus smallest optimal index), and the transfer gap in percent."""
    out = []
    for par, opt in sorted({(r["parametrization"], r["optimizer"]) for r in rows}):
        mine = [
            r
            for r in rows
            if r["parametrization"] == par and r["optimizer"] == opt and r.get("status") != "error"
        ]
        lrs = sorted({r["lr"] for r in mine})
        widths = sorted({r["width"] for r in mine})
        if not widths:  # every trial of this parametrization and optimizer ended in an error
            continue
        table = cells(mine, metric)
        best = {}
        for w in widths:
            scored = [(c["loss"], lr) for lr in lrs if (c := table.get((w, lr))) and c["loss"] is not None]
            if scored:
                loss, lr = min(scored)
                i = lrs.index(lr)
                best[w] = {
                    "lr": lr,
                    "loss": loss,
                    "index": i,
                    "edge": i in (0, len(lrs) - 1),
                    "diverged": sum(1 for lr in lrs if (w, lr) in table and table[w, lr]["diverged"]),
                }
            else:
                best[w] = {"lr": None, "loss": None, "index": None, "edge": False, "diverged": len(lrs)}
        idx = [b["index"] for b in best.values() if b["index"] is not None]
        entry = {
            "parametrization": par,
            "optimizer": opt,
            "metric": metric,
            "seeds": max(c["seeds"] for c in table.values()) if table else 0,
            "seeds_min": min(c["seeds"] for c in table.values()) if table else 0,
            "lrs": lrs,
            "widths": widths,
            "best": best,
            "drift_steps": max(idx) - min(idx) if idx else None,
            "lost": [w for w in widths if best[w]["index"] is None],  # no finite loss at any lr
            "shift": {},
            "transfer": None,
        }
        small, large = widths[0], widths[-1]
        if best[small]["index"] is not None:
            for w in widths:
                if best[w]["index"] is not None:
                    entry["shift"][w] = best[w]["index"] - best[small]["index"]
        if len(widths) > 1 and best[small]["lr"] is not None and best[large]["loss"] is not None:
            cell = table.get((large, best[small]["lr"]))
            loss = cell["loss"] if cell else None
            entry["transfer"] = {
                "lr": best[small]["lr"],
                "width": large,
                "loss": loss,
                "best": best[large]["loss"],
                "best_lr": best[large]["lr"],
                "diverged": bool(cell and cell["diverged"]),
                "gap_pct": None if loss is None else 100 * (loss / best[large]["loss"] - 1),
            }
        out.append(entry)
    return out


def _fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def text(summary: list[dict]) -> str:
    lines = []
    for e in summary:
        grid = ", ".join(f"{x:.3g}" for x in e["lrs"])
        seeds = f"; mean over {_seeds(e)} seeds per cell" if e["seeds"] > 1 else ""
        lines.append(f"{e['parametrization']} / {e['optimizer']} ({e['metric']}{seeds}; LR grid {grid})")
        for w in e["widths"]:
            b = e["best"][w]
            shift = e["shift"].get(w)
            note = " (at the grid edge: widen the grid)" if b["edge"] else ""
            div = f", {b['diverged']} diverged" if b["diverged"] else ""
            lines.append(
                f"  width {w:>5d}: best lr {_fmt(b['lr'], '.3g'):>8s}  loss {_fmt(b['loss'])}  shift "
                f"{'-' if shift is None else f'{shift:+d}'} steps{div}{note}"
            )
        lines.append(
            f"  drift of the optimum across widths: {_fmt(e['drift_steps'], 'd')} grid steps{_lost(e)}"
        )
        t = e["transfer"]
        if t:
            gap = (
                "diverged" if t["diverged"] else ("not run" if t["loss"] is None else f"{t['gap_pct']:+.2f}%")
            )
            lines.append(
                f"  width {t['width']} at the lr tuned at width {e['widths'][0]} ({t['lr']:.3g}): loss "
                f"{_fmt(t['loss'])} vs best {t['best']:.4f} at lr {t['best_lr']:.3g}: {gap}"
            )
        lines.append("")
    return "\n".join(lines)


def _seeds(e: dict) -> str:
    """Seeds per cell: `3`, or `1-3` where cells differ."""
    return f"{e['seeds_min']}-{e['seeds']}" if e["seeds_min"] < e["seeds"] else str(e["seeds"])


def _lost(e: dict) -> str:
    """A note on the widths where every learning rate diverged (the drift counts only the others)."""
    return f"; no lr trained at width {', '.join(map(str, e['lost']))}" if e["lost"] else ""


def markdown(summary: list[dict]) -> str:
    out = [
        "| parametrization | optimizer | width | best lr | loss | shift (grid steps) | diverged |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        for w in e["widths"]:
            b, s = e["best"][w], e["shift"].get(w)
            out.append(
                f"| {e['parametrization']} | {e['optimizer']} | {w} | {_fmt(b['lr'], '.3g')}"
                f"{' (edge)' if b['edge'] else ''} | {_fmt(b['loss'])} | {'-' if s is None else f'{s:+d}'} "
                f"| {b['diverged']} |"
            )
    out += [
        "",
        "| parametrization | optimizer | drift (grid steps) | largest width at the small width's lr | gap "
        "| seeds |",
        "|---|---|---:|---|---:|---:|",
    ]
    for e in summary:
        t = e["transfer"]
        gap = "-" if not t else ("diverged" if t["diverged"] else _fmt(t["gap_pct"], "+.2f") + "%")
        at = "-" if not t else f"width {t['width']}, lr {t['lr']:.3g}: {_fmt(t['loss'])} vs {t['best']:.4f}"
        out.append(
            f"| {e['parametrization']} | {e['optimizer']} | {_fmt(e['drift_steps'], 'd')}{_lost(e)} | {at} "
            f"| {gap} | {_seeds(e)} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str | Path, metric: str = "final_val_loss") -> None:
    """One panel per (parametrization, optimizer): loss vs log2 LR, one line per width (darker = wider; the
    mean over seeds, each seed a small dot), the optimum of each width circled, diverged trials as x at the
    top of the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows, metric)
    if not summary:
        raise ValueError("no results to plot")
    opts = sorted({e["optimizer"] for e in summary})
    pars = sorted({e["parametrization"] for e in summary})
    fig, axes = plt.subplots(len(opts), len(pars), figsize=(5 * len(pars), 3.8 * len(opts)), squeeze=False)
    all_widths = sorted({w for e in summary for w in e["widths"]})
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(0.85 * i / max(1, len(all_widths) - 1)) for i, w in enumerate(all_widths)}
    for e in summary:
        ax = axes[opts.index(e["optimizer"])][pars.index(e["parametrization"])]
        mine = [
            r
            for r in rows
            if r["parametrization"] == e["parametrization"] and r["optimizer"] == e["optimizer"]
        ]
        finite = [_loss(r, metric) for r in mine if _loss(r, metric) is not None]
        top = max(finite) if finite else 1.0
        table = cells([r for r in mine if r.get("status") != "error"], metric)
        for w in e["widths"]:
            pts = sorted(
                (lr, c["loss"]) for (cw, lr), c in table.items() if cw == w and c["loss"] is not None
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=colour[w], label=f"width {w}"
                )
            if e["seeds"] > 1:
                each = [(lr, x) for (cw, lr), c in table.items() if cw == w for x in c["losses"]]
                ax.plot([p[0] for p in each], [p[1] for p in each], ".", ms=2, color=colour[w], alpha=0.5)
            b = e["best"][w]
            if b["lr"] is not None:
                ax.plot([b["lr"]], [b["loss"]], "o", ms=9, mfc="none", mec=colour[w])
            div = [r["lr"] for r in mine if r["width"] == w and r.get("diverged")]
            if div:
                ax.plot(div, [top] * len(div), "x", color=colour[w], ms=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate (log2)")
        ax.set_ylabel(metric.replace("_", " "))
        drift = e["drift_steps"]
        drift = "-" if drift is None else drift
        steps = "step" if drift == 1 else "steps"
        # two lines: on one, a file's label and the verdict overran the next panel's title
        verdict = f"optimum drifts {drift} {steps}{_lost(e)}"
        ax.set_title(f"{e['parametrization']} / {e['optimizer']}:\n{verdict}", fontsize=9)
        ax.legend(fontsize=7)
    title = "validation loss vs learning rate (x: diverged; circles: optimum per width)"
    fig.suptitle(title if len(pars) > 1 else title.replace(" (", "\n("), fontsize=10)  # one column: two lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
