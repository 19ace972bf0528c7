"""``tunesmith data inspect`` and ``tunesmith data prepare``: look at, clean and split datasets.

Public entry points:

* ``prepare(cfg)`` runs the whole preparation (see ``pipeline``) and returns the data card;
* ``inspect_dataset(path, ...)`` computes the statistics ``data inspect`` shows;
* ``read_card``, ``prepared_split_path`` and ``card_hashes`` let training use a prepared
  directory and record its hashes;
* ``cli.register(data_app)`` adds both commands to the ``data`` typer sub-app.
"""

from tunesmith.data.prepare.card import card_hashes, prepared_split_path, read_card
from tunesmith.data.prepare.config import PrepareConfig, build_config, load_config_file
from tunesmith.data.prepare.pipeline import PrepareResult, prepare

__all__ = ["PrepareConfig", "PrepareResult", "build_config", "card_hashes", "load_config_file",
           "prepare", "prepared_split_path", "read_card"]
