"""``tunesmith validate``'s data check: the data a config names goes through the same reading,
format detection, templating, label masks and contract checks its recipe runs before
training, without loading the model. A broken row fails here with its file:line, as it would
a minute into ``tunesmith train``.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import prepare_classification
from tunesmith.data.mixture import prepare_mixture
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.preference import prepare_preference
from tunesmith.recipes import common


def check_data(cfg: RunConfig) -> dict[str, Any]:
    """Prepare the config's data as its recipe would; a summary per split, or the first
    problem as a DataError/ConfigError."""
    classifier = cfg.task == "classification" or (
        cfg.task == "distill" and cfg.distill.head == "classification")
    tok = common.build_tokenizer(cfg, chat_template=not classifier)
    if classifier:
        data: Any = prepare_classification(cfg.data, cfg.classification, tok, cfg.train.seed)
        return {"train": len(data.train), "validation": len(data.validation),
                "labels": data.labels.names, "warnings": data.warnings}
    if cfg.task == "dpo":
        data = prepare_preference(cfg.data, cfg.dpo, tok, cfg.train.seed)
        return {"train pairs": len(data.train), "validation pairs": len(data.validation)}
    if cfg.data.mixture is not None:
        data = prepare_mixture(cfg.data, cfg.data.mixture, tok, cfg.train.seed)
    else:
        data = prepare_data(cfg.data, tok, cfg.train.seed)
    stats = {k: v.as_dict() for k, v in data.stats.items()}
    return {"train": len(data.train), "validation": len(data.validation),
            "format": next((s.get("format") for s in stats.values() if s.get("format")), None),
            "trained tokens": sum(s.get("trained_tokens", 0) for s in stats.values()),
            "masked tokens": sum(s.get("masked_tokens", 0) for s in stats.values())}
