"""Full fine-tuning: tunesmith vs TRL SFTTrainer on the same workload (see sft_lora.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import sft_lora

if __name__ == "__main__":
    if "--method" not in sys.argv:
        sys.argv += ["--method", "full"]
    sys.argv[0] = sft_lora.__file__
    sft_lora.main()
