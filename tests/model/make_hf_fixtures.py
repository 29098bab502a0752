#!/usr/bin/env python3
"""Golden fixtures for tests/model/test_model_golden.cpp, made by HF transformers' DeepseekV3.

Writes <out>/model/hf_deepseek_v3_<case>.safetensors holding the checkpoint-named weights
(per-expert names, as a released checkpoint stores them), input ids, labels, HF's logits and
loss, and a metadata record of the config. Usage (the venv of scripts/setup.sh has torch and
transformers):  python tests/model/make_hf_fixtures.py build/fixtures
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config,
                          DeepseekV3ForCausalLM)

V2_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
           "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
           "mscale": 0.707, "mscale_all_dim": 0.707}

# Must mirror the C++ configs in test_model_golden.cpp. V2 cases use HF's DeepseekV2 (softmax
# scoring, greedy / group_limited_greedy, no renormalisation, routed_scaling_factor applied).
CASES = {
    "v2_lite_greedy": ("v2", dict(q_lora_rank=None, topk_method="greedy", n_group=1, topk_group=1,
                                  routed_scaling_factor=1.0, rope_parameters=V2_YARN)),
    "v2_group_limited": ("v2", dict(q_lora_rank=16, topk_method="group_limited_greedy", n_group=4,
                                    topk_group=1, routed_scaling_factor=16.0,
                                    rope_parameters={"rope_type": "default",
                                                     "rope_theta": 10000.0})),
    "yarn_qlora": ("v3", dict(q_lora_rank=16, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 0.707, "mscale_all_dim": 0.707})),
    "plain_no_qlora": ("v3", dict(q_lora_rank=None, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0})),
}


def make(case, family, extra, out_dir):
    torch.manual_seed(1234)
    common = dict(
        vocab_size=61, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
        n_routed_experts=8, kv_lora_rank=16, qk_rope_head_dim=4, v_head_dim=8,
        qk_nope_head_dim=8, num_experts_per_tok=2, first_k_dense_replace=1,
        max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        attention_bias=False, initializer_range=0.1)
    if family == "v3":
        cfg = DeepseekV3Config(**common, routed_scaling_factor=2.5, n_group=4, topk_group=2,
                               norm_topk_prob=True, rope_interleave=True, **extra)
        cls = DeepseekV3ForCausalLM
    else:
        cfg = DeepseekV2Config(**common, norm_topk_prob=False, **extra)
        cls = DeepseekV2ForCausalLM
    cfg._attn_implementation = "eager"
    model = cls(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # exercise the norm weights
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.rand_like(b))  # positive: selection changes, no ties
    tensors = {}
    I = cfg.moe_intermediate_size
    for name, t in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                tensors[f"{base}{e}.gate_proj.weight"] = t[e, :I].contiguous()
                tensors[f"{base}{e}.up_proj.weight"] = t[e, I:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                tensors[f"{base}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            tensors[name] = t.contiguous()
    weights = {"weight." + k: v for k, v in tensors.items()}
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        pos = torch.arange(12).unsqueeze(0).expand(2, 12) + 5
        out_pos = model(input_ids=ids, position_ids=pos)
    data = dict(weights)
    data["input_ids"] = ids
    data["labels"] = labels
    data["logits"] = out.logits.float().contiguous()
    data["loss"] = out.loss.reshape(1).float()
    data["logits_pos5"] = out_pos.logits.float().contiguous()
    os.makedirs(os.path.join(out_dir, "model"), exist_ok=True)
    path = os.path.join(out_dir, "model", f"hf_deepseek_{case}.safetensors")
    import transformers
    save_file(data, path, metadata={"transformers": transformers.__version__, "case": case})
    print(f"wrote {path}: {len(weights)} weights, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "build/fixtures"
    for case, (family, extra) in CASES.items():
        make(case, family, extra, out_dir)
