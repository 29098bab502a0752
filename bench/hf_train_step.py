#!/usr/bin/env python3
"""Times HF transformers' DeepseekV3ForCausalLM forward+backward on a checkpoint directory.

Used by bench/model_step.sh next to `moetron bench model` on the same weights, batch, sequence
length and thread count, so the printed ratio compares like with like (eager attention, fp32).
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
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
