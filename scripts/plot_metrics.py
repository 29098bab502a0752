#!/usr/bin/env python3
"""Plots a run's metrics.jsonl: loss (train and eval), learning rate, gradient norm, tokens/s,
expert load (max/mean per MoE layer), eval accuracy, and (GRPO) reward curves when present.

Usage: scripts/plot_metrics.py RUN_DIR [--out DIR]   (PNGs go to RUN_DIR/plots by default)
Uses matplotlib from moetron's venv (scripts/setup.sh installs it).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_records(path):
    train, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            (evals if "eval_loss" in rec else train).append(rec)
    return train, evals


def series(records, key):
    pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(out_dir, name, title, lines, ylabel, logy=False):
    lines = [(label, xs, ys) for label, xs, ys in lines if xs]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    path = os.path.join(out_dir, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    args = ap.parse_args()
    metrics = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        sys.exit(f"{metrics}: no such file (is {args.run_dir} a moetron run directory?)")
    train, evals = read_records(metrics)
    out = args.out or os.path.join(args.run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    made = [
        plot(out, "loss", "loss", [("train", *series(train, "loss")),
                                   ("train main CE", *series(train, "main_loss")),
                                   ("eval", *series(evals, "eval_loss"))], "loss"),
        plot(out, "lr", "learning rate", [("lr", *series(train, "lr"))], "lr"),
        plot(out, "grad_norm", "gradient norm (before clipping)",
             [("grad norm", *series(train, "grad_norm"))], "L2 norm", logy=True),
        plot(out, "throughput", "throughput", [("tokens/s", *series(train, "tokens_per_s"))],
             "tokens/s"),
        plot(out, "accuracy", "held-out accuracy", [("eval", *series(evals, "eval_accuracy"))],
             "accuracy"),
    ]
    loads = [r for r in train if r.get("expert_load")]
    if loads:
        n = len(loads[0]["expert_load"])
        made.append(plot(out, "expert_load", "expert load (max / mean assignments)",
                         [(f"MoE layer {i}", [r["step"] for r in loads],
                           [r["expert_load"][i]["max_over_mean"] for r in loads])
                          for i in range(n)], "max / mean"))
    for key in ("reward_mean", "kl", "response_length"):
        made.append(plot(out, key, key.replace("_", " "), [(key, *series(train, key))], key))
    for p in made:
        if p:
            print(p)


if __name__ == "__main__":
    main()
