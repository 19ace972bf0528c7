"""Write a randomly initialised SmolLM2-shaped model (seed 0) for the GPU benchmark.

A lent GPU machine reaches no model hub and takes at most 64 MiB of files from here, so the
weights cannot travel: bench/gpu.sh builds the model on the spot from SmolLM2-360M's published
shape (or a tiny shape with ``--shape tiny`` to check the script on a CPU) and the embedded
SmolLM2 tokenizer carried in ``.gpudata/tokenizer``. Every contender starts from the same
weights, so throughput, memory and held-out loss compare like for like; the loss values are
those of a model learning from scratch, not of a pretrained one.

    python bench/gpu_init_model.py --tokenizer .gpudata/tokenizer --out /tmp/smollm2-360m
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# SmolLM2-360M's architecture (its config.json on the hub), and a tiny one for CPU checks
SHAPES = {
    "smollm2-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json")


def build(shape: str, tokenizer: Path, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, out / name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2-360m")
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print(build(args.shape, args.tokenizer, args.out))


if __name__ == "__main__":
    main()
