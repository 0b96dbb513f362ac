"""Turn a run's metrics.json into results.md (the comparison table) and PNG plots.

    python python/report.py runs/<run-dir>          # re-render an existing run

Numbers reported, per (LR, arm): final validation perplexity (mean and sample sd over seeds, and each
seed), the paired difference in final validation loss against Uniform at the same LR and seed (with a
paired t statistic, so a difference is only called one when it exceeds the seed-to-seed spread), the
steps each run needed to reach its Uniform twin's final validation loss, and the measured LLR update
overhead (seconds in spectral updates / training seconds).
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

# Two-sided 95% critical values of Student's t, df = 1..10 (no scipy dependency).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_critical_95(df: int) -> float:
    return _T95.get(df, 1.96 if df > 30 else 2.1)


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def steps_to_reach(val: list[dict], target: float) -> int | None:
    """First evaluated step whose validation loss is <= target (None if never)."""
    for v in val:
        if v["step"] > 0 and v["loss"] <= target:
            return int(v["step"])
    return None


def summarize(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (lr, arm) with per-seed values and paired comparisons against Uniform."""
    runs = [r for r in metrics["runs"]]
    uni = {(r["lr"], r["seed"]): r for r in runs if r["arm"] == "uniform"}
    rows = []
    keys = sorted({(r["lr"], r["arm"]) for r in runs}, key=lambda k: (k[0], _arm_order(k[1])))
    for lr, arm in keys:
        rs = sorted((r for r in runs if r["lr"] == lr and r["arm"] == arm), key=lambda r: r["seed"])
        ok = [r for r in rs if r.get("status", "ok") == "ok"]
        row: dict[str, Any] = {"lr": lr, "arm": arm, "seeds": [r["seed"] for r in rs],
                               "ppl": [r["final_val_ppl"] for r in ok], "loss": [r["final_val_loss"] for r in ok],
                               "failed": [f"seed {r['seed']}: {r['status']}" for r in rs if r.get("status", "ok") != "ok"],
                               "tokens_seen": sorted({r["tokens_seen"] for r in rs}),
                               "tok_s": statistics.fmean(r["tokens_per_second"] for r in rs)}
        over = [r["llr_overhead"] for r in rs if r.get("llr_overhead") is not None]
        row["overhead"] = statistics.fmean(over) if over else None
        row["llr_seconds"] = statistics.fmean(r["llr_update_seconds"] for r in rs) if over else None
        diffs, reach = [], []
        for r in ok:
            u = uni.get((lr, r["seed"]))
            if u is None or u.get("status", "ok") != "ok":
                continue
            diffs.append(r["final_val_loss"] - u["final_val_loss"])
            reach.append(steps_to_reach(r["val"], u["final_val_loss"]))
        row["diffs"], row["reach"] = diffs, reach
        row["steps"] = rs[0]["steps"] if rs else None
        rows.append(row)
    return rows


def paired_rows(metrics: dict[str, Any], arm: str, control: str) -> list[dict[str, Any]]:
    """Rows of ``arm`` whose "diffs" are paired against ``control`` (same LR, same seed) instead of Uniform."""
    runs = [r for r in metrics["runs"] if r.get("status", "ok") == "ok"]
    ref = {(r["lr"], r["seed"]): r for r in runs if r["arm"] == control}
    out = []
    for lr in sorted({r["lr"] for r in runs if r["arm"] == arm}):
        diffs = [r["final_val_loss"] - ref[(lr, r["seed"])]["final_val_loss"]
                 for r in runs if r["arm"] == arm and r["lr"] == lr and (lr, r["seed"]) in ref]
        if diffs:
            out.append({"lr": lr, "arm": arm, "diffs": diffs})
    return out


def _arm_order(arm: str) -> int:
    order = ["uniform", "llr", "llr-shuffled", "uniform-smax", "lars", "lamb", "sharpness", "rlrs", "alphadecay",
             "llr+alphadecay", "muon", "llr-muon"]
    return order.index(arm) if arm in order else len(order)


def verdict(row: dict[str, Any]) -> str:
    """A sentence on whether the paired difference against Uniform exceeds seed noise."""
    d = row["diffs"]
    if not d:
        return "no paired Uniform runs"
    m = statistics.fmean(d)
    if len(d) < 3:
        return f"mean Δ val loss {m:+.4f} over {len(d)} seed(s): fewer than 3 seeds, no claim"
    sd = statistics.stdev(d)
    t = m / (sd / math.sqrt(len(d))) if sd > 0 else math.copysign(math.inf, m) if m else 0.0
    crit = t_critical_95(len(d) - 1)
    word = "lower" if m < 0 else "higher"
    if abs(t) >= crit:
        return (f"Δ val loss {m:+.4f} ± {sd:.4f} (paired, n={len(d)}), t = {t:+.2f} beyond ±{crit:.2f}: "
                f"{row['arm']} is {word} than Uniform at the 95% level")
    return (f"Δ val loss {m:+.4f} ± {sd:.4f} (paired, n={len(d)}), t = {t:+.2f} within ±{crit:.2f}: "
            f"not distinguishable from seed noise")


def _fmt_ms(xs: list[float], digits: int = 2) -> str:
    if not xs:
        return "—"
    m, sd = _mean_sd(xs)
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if len(xs) > 1 else "")


def render_markdown(metrics: dict[str, Any]) -> str:
    """The results table plus everything needed to reproduce it."""
    c, m = metrics["config"], metrics["model"]
    rows = summarize(metrics)
    tokens = sorted({t for r in rows for t in r["tokens_seen"]})
    warm = int(round(c["warmup"] * c["steps"]))
    lines = [
        f"# Uniform vs LLR — preset `{metrics['preset']}`",
        "",
        f"- Command: `{metrics['command']}`",
        f"- Model: `{c['model']}` ({m['arch']}, d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, "
        f"d_ff {m['d_ff']}, vocab {m['vocab_size']}, {'tied' if m['tie_embeddings'] else 'untied'} head): "
        f"{metrics['params'] / 1e6:.2f}M parameters ({metrics['params_non_embedding'] / 1e6:.2f}M non-embedding)",
        f"- Data: `{metrics['data']['source']}`, {metrics['data']['train_tokens']:,} training tokens; validation: "
        f"{metrics['valid_tokens_evaluated']:,} held-out tokens (fixed, the same for every run)",
        f"- Training: {c['steps']} steps x {c['batch_size']} x {c['seq_len']} tokens = "
        f"{', '.join(f'{t:,}' for t in tokens)} tokens seen per run; warmup {warm} steps + cosine to "
        f"{c['min_lr_ratio']:g} x peak; clip {c['clip']:g}; AdamW betas ({c['beta1']:g}, {c['beta2']:g}), wd {c['weight_decay']:g}",
        f"- LLR: s = {c['s']:g} (Muon: {c['muon_s']:g}), interval {c['interval']} steps, gradient alphas for the first "
        f"{c['grad_phase']:.0%} of steps, active until {c['active_until']:.0%}, ramp {c['ramp_steps']} steps",
        f"- Seeds: {', '.join(str(s) for s in c['seeds'])} (each seed fixes the initialisation and the batch order; "
        "all arms of a seed see identical batches)",
        f"- Machine: {metrics['machine'].get('gpu', metrics['machine']['platform'])}, torch {metrics['machine']['torch']}, "
        f"{metrics['machine']['torch_threads']} threads; total wall time {metrics.get('wall_seconds', float('nan')):.0f} s",
    ]
    scales = c.get("arm_lr_scale_used") or {}
    shown = {arm: v for arm, v in scales.items() if arm in {r["arm"] for r in rows}}
    if shown:
        lines.append("- Arm LRs: " + ", ".join(f"{arm} {v:g} x LR" for arm, v in shown.items())
                     + " (the LLR paper's Table 1 ratios to AdamW's LR unless --arm-lr-scale says otherwise); "
                     + ", ".join(f"{arm} weight decay {v:g}" for arm, v in (c.get("arm_weight_decay") or {}).items()
                                 if arm in {r["arm"] for r in rows}))
    if metrics.get("skipped_arms"):
        lines.append("- Skipped arms: " + "; ".join(f"`{k}`: {v}" for k, v in metrics["skipped_arms"].items()))
    lines += [
        "",
        "| LR | arm | final val ppl (mean ± sd) | per seed | Δ val loss vs Uniform (paired) | steps to Uniform's final val loss | LLR update time | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{p:.2f}" for p in r["ppl"]) or "—"
        if r["failed"]:
            per_seed += " (" + "; ".join(r["failed"]) + ")"
        diff = "—" if r["arm"] == "uniform" or not r["diffs"] else _fmt_ms(r["diffs"], 4)
        reach = "—" if r["arm"] == "uniform" or not r["reach"] else ", ".join(
            "not reached" if s is None else f"{s}" for s in r["reach"]) + f" (of {r['steps']})"
        over = "—" if r["overhead"] is None else f"{r['llr_seconds']:.2f} s ({100 * r['overhead']:.2f}%)"
        lines.append(f"| {r['lr']:g} | {r['arm']} | {_fmt_ms(r['ppl'])} | {per_seed} | {diff} | {reach} | {over} | {r['tok_s']:,.0f} |")
    lines += ["", "Paired comparison against Uniform (same LR, same seed):", ""]
    for r in rows:
        if r["arm"] != "uniform":
            lines.append(f"- lr {r['lr']:g}, {r['arm']}: {verdict(r)}")
    control = paired_rows(metrics, "llr", "llr-shuffled")
    if control:
        lines += ["", "Does the spectral signal matter, or only the spread? LLR against its shuffled control (the same "
                  "multipliers dealt to the layers at random at every update; same LR, same seed):", ""]
        for r in control:
            lines.append(f"- lr {r['lr']:g}: {verdict(r).replace('Uniform', 'llr-shuffled')}")
    lines += [
        "",
        "Steps to Uniform's final val loss are read off the validation evaluations "
        f"(every {c['eval_every']} steps), so their resolution is {c['eval_every']} steps. "
        "LLR update time is the optimizer's own `llr_update_seconds` (spectral measurement and the LR map), "
        "as a fraction of the run's training time (evaluation excluded).",
        "",
        "Plots: `loss_curves.png`, `alpha_heatmap.png`, `lr_multiplier_heatmap.png`.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the README's table

# How far a rerun of a published run may land and still count as reproducing it: each arm's mean final validation
# perplexity within this fraction of the published mean, and the same sign of LLR - Uniform in every seed. BLAS
# summation order (CPU model, threads actually used, library build) changes the last bits of every step, and 120
# steps amplify that, more in some seeds than others. Measured (README "Result"): a rerun on another machine of
# the same kind landed within 1.2% per seed and 0.7% per arm mean; a rerun on the same kind of machine under heavy
# load matched seed 0 of both arms within 0.02% but moved Uniform's seed 1 by +6.0%. The seed-to-seed spread is 6-7%.
REFERENCE_TOLERANCE = 0.05
# Config entries that change the numbers: a reference run with other values is not comparable.
_COMPARED_CONFIG = ("model", "data", "vocab_size", "tokenizer_train_chars", "seq_len", "batch_size", "steps", "warmup",
                    "min_lr_ratio", "weight_decay", "beta1", "beta2", "clip", "s", "muon_s", "interval", "grad_phase",
                    "active_until", "ramp_steps", "eval_windows", "tie_embeddings", "muon_lr_ratio")


def readme_table(metrics: dict[str, Any]) -> str:
    """The compact table the README shows: per (LR, arm) the final validation perplexity (mean ± sd over seeds and
    each seed), the paired difference in final validation loss against Uniform and the steps to Uniform's final
    loss."""
    lines = ["| LR | arm | final val ppl (mean ± sd) | per seed | Δ val loss vs Uniform (paired) | steps to Uniform's final val loss |",
             "|---|---|---|---|---|---|"]
    for r in summarize(metrics):
        diff = "—" if r["arm"] == "uniform" or not r["diffs"] else _fmt_ms(r["diffs"], 4)
        reach = "—" if r["arm"] == "uniform" or not r["reach"] else ", ".join(
            "not reached" if x is None else f"{x}" for x in r["reach"]) + f" (of {r['steps']})"
        lines.append(f"| {r['lr']:g} | {r['arm']} | {_fmt_ms(r['ppl'])} | {', '.join(f'{p:.2f}' for p in r['ppl'])} "
                     f"| {diff} | {reach} |")
    return "\n".join(lines)


def compare_to_reference(metrics: dict[str, Any], reference: dict[str, Any], where: str,
                         tolerance: float = REFERENCE_TOLERANCE) -> str:
    """This run against a published run (the README's table): per (LR, arm) the published and the new mean
    perplexity and their relative difference, per seed, and whether LLR - Uniform kept its sign in every seed.
    Says "not comparable" and why when the two runs differ in a config entry that changes the numbers."""
    head = f"Comparison with the published table ({where}, measured {reference.get('started', '?')} on " \
           f"{reference.get('machine', {}).get('gpu', reference.get('machine', {}).get('platform', '?'))}):"
    c, rc = metrics["config"], reference.get("config", {})
    differ = [f"{k} = {c.get(k)!r} here, {rc.get(k)!r} there" for k in _COMPARED_CONFIG if c.get(k) != rc.get(k)]
    if differ:
        return head + "\n- not comparable: " + "; ".join(differ)
    mine = {(r["lr"], r["arm"]): r for r in summarize(metrics)}
    theirs = {(r["lr"], r["arm"]): r for r in summarize(reference)}
    lines, verdicts = [head], []
    for key in sorted(mine.keys() & theirs.keys(), key=lambda k: (k[0], _arm_order(k[1]))):
        a, b = mine[key], theirs[key]
        seeds_a = dict(zip([s for s in a["seeds"]], a["ppl"])) if len(a["ppl"]) == len(a["seeds"]) else {}
        seeds_b = dict(zip([s for s in b["seeds"]], b["ppl"])) if len(b["ppl"]) == len(b["seeds"]) else {}
        common = sorted(seeds_a.keys() & seeds_b.keys())
        if not common:
            continue
        ma, mb = statistics.fmean(seeds_a[s] for s in common), statistics.fmean(seeds_b[s] for s in common)
        rel = ma / mb - 1.0
        ok = abs(rel) <= tolerance
        verdicts.append(ok)
        per_seed = ", ".join(f"seed {s}: {seeds_b[s]:.2f} -> {seeds_a[s]:.2f} ({100 * (seeds_a[s] / seeds_b[s] - 1):+.1f}%)"
                             for s in common)
        lines.append(f"- lr {key[0]:g}, {key[1]}: mean ppl {mb:.2f} published, {ma:.2f} here ({100 * rel:+.2f}%, "
                     f"{'within' if ok else 'OUTSIDE'} ±{100 * tolerance:g}%); {per_seed}")
    for lr in sorted({k[0] for k in mine}):
        for arm in sorted({k[1] for k in mine if k[0] == lr and k[1] != "uniform"}, key=_arm_order):
            if (lr, arm) not in theirs:
                continue
            lower_a, lower_b = _lower_per_seed(metrics, lr, arm), _lower_per_seed(reference, lr, arm)
            seeds = sorted(lower_a.keys() & lower_b.keys())
            if not seeds:
                continue
            sign_a, sign_b = [lower_a[x] for x in seeds], [lower_b[x] for x in seeds]
            same = sign_a == sign_b
            verdicts.append(same)
            lines.append(f"- lr {lr:g}, {arm} vs Uniform, seeds {seeds}: {_signs(sign_b)} published, {_signs(sign_a)} here: "
                         f"{'the same' if same else 'DIFFERENT'}")
    if not verdicts:
        return head + "\n- not comparable: no (LR, arm, seed) in common"
    lines.append("=> reproduces the published table within its stated tolerance" if all(verdicts) else
                 "=> does NOT reproduce the published table within its stated tolerance")
    return "\n".join(lines)


def _lower_per_seed(metrics: dict[str, Any], lr: float, arm: str) -> dict[int, bool]:
    """seed -> whether ``arm`` ended with a lower validation loss than Uniform (same LR and seed; finished runs)."""
    runs = [r for r in metrics["runs"] if r["lr"] == lr and r.get("status", "ok") == "ok"]
    uni = {r["seed"]: r["final_val_loss"] for r in runs if r["arm"] == "uniform"}
    return {r["seed"]: r["final_val_loss"] < uni[r["seed"]] for r in runs if r["arm"] == arm and r["seed"] in uni}


def _signs(lower: list[bool]) -> str:
    return "[" + ", ".join("lower" if x else "higher" for x in lower) + "]"


# ----------------------------------------------------------------------------- plots


def _ema(xs: list[float], span: int) -> list[float]:
    a, out, m = 2.0 / (span + 1), [], None
    for x in xs:
        m = x if m is None else a * x + (1 - a) * m
        out.append(m)
    return out


def run_title(metrics: dict[str, Any]) -> str:
    """One line with everything that defines the runs: model, tokens, schedule, optimizer settings, seeds."""
    c, m = metrics["config"], metrics["model"]
    warm = int(round(c["warmup"] * c["steps"]))
    return (f"{c['model']} {m['arch']} ({metrics['params'] / 1e6:.2f}M params), {c['steps']} steps x "
            f"{c['batch_size'] * c['seq_len']:,} tokens of {metrics['data']['source']}; warmup {warm} + cosine to "
            f"{c['min_lr_ratio']:g}x, wd {c['weight_decay']:g}, clip {c['clip']:g}; LLR s={c['s']:g}, interval "
            f"{c['interval']}, gradient alphas for {c['grad_phase']:.0%}; seeds {','.join(str(s) for s in c['seeds'])}")


def loss_figure(metrics: dict[str, Any]) -> Any:
    """Two panels per LR: the whole run (the y-axis holds every plotted point, the first steps included) and the
    second half zoomed in, where the arms separate. Train loss: EMA, mean over seeds, min-max band; validation
    loss: dashed, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = metrics["runs"]
    lrs = sorted({r["lr"] for r in runs})
    arms = sorted({r["arm"] for r in runs}, key=_arm_order)
    steps = metrics["config"]["steps"]
    fig, axes = plt.subplots(len(lrs), 2, figsize=(13, 4.4 * len(lrs)), squeeze=False)
    span = max(2, steps // 20)
    for (ax, zoom), lr in zip(axes, lrs):
        plotted: list[tuple[np.ndarray, np.ndarray]] = []  # (x, y) of every line, for the axes' limits
        for ci, arm in enumerate(arms):
            rs = [r for r in runs if r["lr"] == lr and r["arm"] == arm]
            if not rs:
                continue
            color = f"C{ci}"
            n = min(len(r["train_loss"]) for r in rs)
            for a in (ax, zoom):
                if n:
                    curves = np.array([_ema(r["train_loss"][:n], span) for r in rs])
                    x = np.arange(1, n + 1)
                    a.plot(x, curves.mean(0), color=color, lw=1.5, label=f"{arm} train (EMA, {len(rs)} seeds)")
                    if len(rs) > 1:
                        a.fill_between(x, curves.min(0), curves.max(0), color=color, alpha=0.2, lw=0)
                    if a is ax:
                        plotted += [(x, curves.min(0)), (x, curves.max(0))]
                vs = sorted({v["step"] for r in rs for v in r["val"]})
                vm = np.array([statistics.fmean(v["loss"] for r in rs for v in r["val"] if v["step"] == s) for s in vs])
                a.plot(vs, vm, color=color, ls="--", marker="o", ms=3, label=f"{arm} val (mean)")
                if a is ax:
                    plotted.append((np.array(vs, dtype=float), vm))
        lo = min(float(np.min(y)) for _, y in plotted)
        hi = max(float(np.max(y)) for _, y in plotted)
        pad = 0.04 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        late = [y[x >= steps / 2] for x, y in plotted]
        late = [y for y in late if y.size]
        if late:
            zlo, zhi = min(float(y.min()) for y in late), max(float(y.max()) for y in late)
            zpad = 0.08 * (zhi - zlo or 0.1)
            zoom.set_ylim(zlo - zpad, zhi + zpad)
        zoom.set_xlim(steps / 2, steps + max(1, steps // 50))
        ax.set_title(f"lr {lr:g}: the whole run", fontsize=10)
        zoom.set_title(f"lr {lr:g}: second half, zoomed", fontsize=10)
        for a in (ax, zoom):
            a.set_xlabel("step")
            a.set_ylabel("cross-entropy (nats/token)")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    fig.suptitle(run_title(metrics), fontsize=9)
    fig.tight_layout()
    return fig


def plot_loss_curves(metrics: dict[str, Any], path: Path) -> None:
    """``loss_figure`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = loss_figure(metrics)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    return name.replace(".weight", "").replace("layers.", "L").replace("self_attn.", "").replace("attn.", "").replace("mlp.", "")


def column_labels(stats: dict[str, Any]) -> list[str]:
    """x labels of a heatmap: the step of each snapshot, marked "(grad)" where its alphas were measured on the
    gradients (LLR's gradient phase, the first ``grad_phase`` of training), not on the weights."""
    sources = stats.get("source") or [None] * len(stats["steps"])
    return [f"{s} (grad)" if src == "grad" else str(s) for s, src in zip(stats["steps"], sources)]


def plot_layer_heatmaps(metrics: dict[str, Any], key: str, path: Path, title: str) -> bool:
    """Heatmap of a per-layer quantity (alpha or multiplier) over training steps, one panel per LLR arm/LR.

    Uses the first seed of each (arm, lr); layers that never have a finite value (norms, biases) are left
    out. Columns whose alphas came from gradients (the gradient phase) are labelled "(grad)" and outlined.
    Returns False when no run logged layer statistics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = []
    seen = set()
    for r in sorted(metrics["runs"], key=lambda r: (r["lr"], _arm_order(r["arm"]), r["seed"])):
        st = r.get("layer_stats")
        if not st or (r["arm"], r["lr"]) in seen:
            continue
        seen.add((r["arm"], r["lr"]))
        mat = np.array([[np.nan if v is None else v for v in row] for row in st[key]], dtype=float).T  # layers x time
        keep = [i for i in range(mat.shape[0]) if np.isfinite(mat[i]).any() and st.get("kinds", ["?"] * mat.shape[0])[i] != "vector"]
        if not keep:
            continue
        panels.append((r, st, mat[keep], [_short(st["names"][i]) for i in keep]))
    if not panels:
        return False
    h = max(3.0, 0.22 * max(len(p[3]) for p in panels) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), h), squeeze=False)
    for ax, (r, st, mat, names) in zip(axes[0], panels):
        steps = st["steps"]
        im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=6)
        labels = column_labels(st)
        grad_cols = [i for i, lab in enumerate(labels) if lab.endswith("(grad)")]
        ticks = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)) | set(grad_cols))
        ax.set_xticks(ticks)
        ax.set_xticklabels([labels[i] for i in ticks], fontsize=7, rotation=30, ha="right")
        for i in grad_cols:
            ax.add_patch(plt.Rectangle((i - 0.5, -0.5), 1, len(names), fill=False, ec="red", lw=1.2))
        phase = (f"(grad), outlined: alphas of the gradients (first {metrics['config']['grad_phase']:.0%} of steps);"
                 "\nthe other columns: alphas of the weights") if grad_cols else "alphas of the weights"
        ax.set_xlabel(f"step of the snapshot\n{phase}", fontsize=7)
        ax.set_title(f"{title}: {r['arm']}, lr {r['lr']:g}, seed {r['seed']}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path, metrics: dict[str, Any], plots: bool = True) -> str:
    """Write results.md (and the PNGs) into ``out``; return the markdown."""
    out = Path(out)
    md = render_markdown(metrics)
    if plots:
        plot_loss_curves(metrics, out / "loss_curves.png")
        if not plot_layer_heatmaps(metrics, "alpha", out / "alpha_heatmap.png", "PL_Alpha_Hill per layer"):
            md = md.replace("`alpha_heatmap.png`, `lr_multiplier_heatmap.png`", "(no LLR arm ran: no heatmaps)")
        else:
            plot_layer_heatmaps(metrics, "multiplier", out / "lr_multiplier_heatmap.png", "LR multiplier per layer")
    (out / "results.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python python/report.py RUN_DIR   (a folder holding metrics.json)")
    out = Path(args[0])
    path = out / "metrics.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass the run directory written by python/train.py")
    print(write_report(out, json.loads(path.read_text())))


if __name__ == "__main__":
    main()
