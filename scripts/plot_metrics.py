#!/usr/bin/env python3
"""Plots a run's metrics.jsonl: loss (train and eval), learning rate, gradient norm, tokens/s,
expert load (max/mean per MoE layer), eval accuracy, and for GRPO runs: rewards (mean and per
component), accuracy with pass@k, response length with the truncation ratio, KL, clip
fractions, entropy, the time split of a step (generate / reward / train) and memory per phase.
Each plot is drawn only when its keys are present.

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


def keys_with_prefix(records, prefix):
    """Keys starting with `prefix` in first-seen order (e.g. the reward/<name> components)."""
    keys = []
    for r in records:
        keys += [k for k in r if k.startswith(prefix) and k not in keys]
    return keys


def pass_keys(records):
    """pass@k keys sorted by k (pass@1, pass@8, ...)."""
    keys = [k for k in keys_with_prefix(records, "pass@") if k[5:].isdigit()]
    return sorted(keys, key=lambda k: int(k[5:]))


def plot(out_dir, name, title, lines, ylabel, logy=False, right=None, right_label=None):
    """Lines (label, xs, ys) on one axis; `right` lines on a second y axis (dashed)."""
    lines = [(label, xs, ys) for label, xs, ys in lines if xs]
    right = [(label, xs, ys) for label, xs, ys in (right or []) if xs]
    if not lines and not right:
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
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (label, xs, ys) in enumerate(right):
            ax2.plot(xs, ys, label=label, linestyle="--",
                     color=colors[(len(lines) + i) % len(colors)],
                     marker="o" if len(xs) < 30 else None)
        ax2.set_ylabel(right_label or "")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if len(handles) > 1:
        ax.legend(handles, labels)
    path = os.path.join(out_dir, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_time_split(out_dir, records):
    """Stacked seconds per step spent generating, scoring and training (GRPO)."""
    keys = [("generate", "time_generate_s"), ("reward", "time_reward_s"), ("train", "time_train_s")]
    recs = [r for r in records if all(r.get(k) is not None for _, k in keys)]
    if not recs:
        return None
    xs = [r["step"] for r in recs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(xs, *[[r[k] for r in recs] for _, k in keys], labels=[n for n, _ in keys],
                 alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.set_title("time per step (stacked)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    path = os.path.join(out_dir, "time_split.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def grpo_plots(out, train):
    """The GRPO step records' plots; each is skipped when its keys are absent."""
    components = keys_with_prefix(train, "reward/")
    return [
        plot(out, "reward", "reward", [("mean", *series(train, "reward_mean"))]
             + [(k[len("reward/"):], *series(train, k)) for k in components], "reward"),
        plot(out, "response_length", "response length",
             [("mean", *series(train, "response_length_mean")),
              ("max", *series(train, "response_length_max"))], "tokens",
             right=[("truncation ratio", *series(train, "truncation_ratio"))],
             right_label="truncated fraction"),
        plot(out, "kl", "KL to the reference (k3)", [("kl", *series(train, "kl"))], "kl"),
        plot(out, "clip_frac", "clipped token fraction",
             [("low (ratio < 1 - eps_low, A < 0)", *series(train, "clip_frac_low")),
              ("high (ratio > 1 + eps_high, A > 0)", *series(train, "clip_frac_high"))],
             "fraction of tokens"),
        plot(out, "entropy", "sampling entropy", [("entropy", *series(train, "entropy"))],
             "nats per token"),
        plot_time_split(out, train),
        plot(out, "memory", "memory per phase",
             [("generate", *series(train, "memory_generate_mb")),
              ("train", *series(train, "memory_train_mb"))], "MiB"),
    ]


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
        plot(out, "throughput", "throughput", [("tokens/s", *series(train, "tokens_per_s")),
                                               ("generated tokens/s",
                                                *series(train, "gen_tokens_per_s"))],
             "tokens/s"),
        plot(out, "accuracy", "accuracy",
             [("train accuracy", *series(train, "accuracy"))]
             + [(k, *series(train, k)) for k in pass_keys(train)]
             + [("eval", *series(evals, "eval_accuracy")),
                ("eval pass@1 (sampled)", *series(evals, "eval_pass@1"))], "accuracy"),
    ]
    made += grpo_plots(out, train)
    loads = [r for r in train if r.get("expert_load")]
    if loads:
        n = len(loads[0]["expert_load"])
        made.append(plot(out, "expert_load", "expert load (max / mean assignments)",
                         [(f"MoE layer {i}", [r["step"] for r in loads],
                           [r["expert_load"][i]["max_over_mean"] for r in loads])
                          for i in range(n)], "max / mean"))
    for p in made:
        if p:
            print(p)


if __name__ == "__main__":
    main()
