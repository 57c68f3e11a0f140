"""Generate TextWorld challenge games once into a cache directory and reuse them (about 1 to 4 s per game).

TextWorld compiles a game in 1-4 s, too slow for one per episode but fine once per game: game ``i`` of a split is
generated on first use from seed ``SPLIT_SEED_BASE[split] + i`` and kept under
``<cache_dir>/<challenge>-<hash of settings>/<split>-<i>.z8`` (with its ``.json``). Generation happens in a private
temporary directory and the files are renamed into place, ``.z8`` last, so processes generating the same game at once
never read half a game.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Seed offsets of the splits: their games never share a seed.
SPLIT_SEED_BASE = {"train": 0, "val_iid": 1_000_000, "val_ood": 2_000_000, "test": 3_000_000}


def game_path(
    challenge: str, settings: Mapping[str, Any], split: str, index: int, cache_dir: str | os.PathLike
) -> Path:
    """Path of game ``index`` of ``split``, generating and compiling it first if it is not cached."""
    import textworld
    import textworld.challenges

    if challenge not in textworld.challenges.CHALLENGES:
        raise ValueError(
            f"unknown TextWorld challenge {challenge!r}; choose one of {sorted(textworld.challenges.CHALLENGES)}."
        )
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() / f"{challenge}-{digest}"
    target = folder / f"{split}-{index}.z8"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    options = textworld.GameOptions()
    options.seeds = SPLIT_SEED_BASE[split] + index
    options.file_ext = ".z8"
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        options.path = str(Path(scratch) / target.name)
        make = textworld.challenges.CHALLENGES[challenge][1]
        compiled = Path(textworld.generator.compile_game(make(dict(settings), options), options))
        os.replace(compiled.with_suffix(".json"), target.with_suffix(".json"))
        os.replace(compiled, target)
    return target
