#!/usr/bin/env python3
"""Times HF transformers' DeepseekV3ForCausalLM forward+backward on a checkpoint directory.

Run by `moetron bench model --hf` on the same weights, batch, sequence length, thread count and
precision, so the printed ratio compares like with like (eager attention; fp32, or the forward
under bf16 CPU autocast with `--dtype bf16`, as `moetron bench model --dtype bf16` runs ours).
Prints one JSON line: {"impl": "hf", "ms_per_step": ..., "cpu_ms_per_step": ..., "loss": ...}
(cpu = process CPU time of all threads, less sensitive to other load on a shared machine).
"""
import argparse
import json
import time

import torch
from transformers import DeepseekV3ForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: forward under torch.autocast('cpu', bfloat16), fp32 weights")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = DeepseekV3ForCausalLM.from_pretrained(args.model, attn_implementation="eager",
                                                  dtype=torch.float32)
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=gen)
    times, cpu_times = [], []
    loss = None
    for i in range(args.warmup + args.steps):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        dt, cpu_dt = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(cpu_dt)
    times.sort()
    cpu_times.sort()
    print(json.dumps({"impl": "hf", "ms_per_step": 1000 * times[len(times) // 2],
                      "cpu_ms_per_step": 1000 * cpu_times[len(cpu_times) // 2],
                      "loss": loss.item(), "batch": args.batch, "seq": args.seq,
                      "threads": args.threads, "dtype": args.dtype}))


if __name__ == "__main__":
    main()
