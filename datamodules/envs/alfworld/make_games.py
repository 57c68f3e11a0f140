"""Write small ALFWorld-format games over the domain, grammar and goal library shipped in the ``alfworld`` wheel.

The official games (``alfworld-download``) need network access these machines do not have, and
``alfworld-generate`` only converts existing ALFRED trials. This generator samples a room (receptacles, one target
object and distractors), writes a PDDL problem for one of four task types with the goal from alfworld's own goal
library, and lays the result out like the official data, ``json_2.1.1/<split>/<task>-<obj>-<recep>-<n>/trial_<seed>/``
holding ``game.tw-pddl`` and ``traj_data.json``, so ``AlfWorldTextEnv`` reads both the same way.

    python -m datamodules.envs.alfworld.make_games --out /tmp/alfworld --games 8
"""

from __future__ import annotations

import argparse
import json
import random
from importlib.resources import files
from pathlib import Path

#: Task type -> (the state-change predicate, the receptacle type that performs it); ``None`` for plain placement.
TASKS = {
    "pick_and_place_simple": (None, None),
    "pick_clean_then_place_in_recep": ("cleanable", "SinkBasin"),
    "pick_heat_then_place_in_recep": ("heatable", "Microwave"),
    "pick_cool_then_place_in_recep": ("coolable", "Fridge"),
}
OBJECTS = ("Apple", "Tomato", "Potato", "Egg", "Mug", "Cup", "Bread", "Lettuce")
PLACES = ("CounterTop", "Cabinet", "Drawer", "Shelf", "DiningTable", "SideTable", "Fridge", "Microwave", "SinkBasin")
OPENABLE = {"Cabinet", "Drawer", "Fridge", "Microwave"}
SPLITS = ("train", "valid_seen", "valid_unseen")


def _mangle(name: str, number: int) -> str:
    """An ALFRED-style id that alfworld's demangler turns into ``"<name> <number>"`` (numbered by sorted id)."""
    if name == "SinkBasin":  # ALFRED names it after the sink; the demangler appends "basin"
        return f"Sink_bar__plus_{number:02d}_dot_00_bar_SinkBasin"
    return f"{name}_bar__plus_{number:02d}_dot_00"


def make_problem(task_type: str, rng: random.Random) -> tuple[str, dict]:
    """A PDDL problem of ``task_type`` and its ``traj_data`` (task type and targets), sampled with ``rng``."""
    predicate, station = TASKS[task_type]
    target = rng.choice(OBJECTS)
    places = rng.sample([p for p in PLACES if p != station], 3)
    if station:
        places.append(station)
    source, goal = places[0], places[1]
    receptacles = {place: _mangle(place, i + 1) for i, place in enumerate(places)}
    distractors = rng.sample([o for o in OBJECTS if o != target], 2)
    objects = {name: _mangle(name, 1) for name in [target, *distractors]}
    object_types = sorted(set(objects))
    lines = ["(define (problem plan_trial)", "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"loc_bar_{i} - location" for i in range(len(places) + 1)]
    lines += [f"{place}Type - rtype" for place in places]
    lines += [f"{name}Type - otype" for name in object_types]
    lines += [f"{rid} - receptacle" for rid in receptacles.values()]
    lines += [f"{oid} - object" for oid in objects.values()]
    lines += [")", "(:init", "(atLocation agent1 loc_bar_0)"]
    for i, (place, rid) in enumerate(receptacles.items(), start=1):
        lines += [f"(receptacleAtLocation {rid} loc_bar_{i})", f"(receptacleType {rid} {place}Type)"]
        lines += [f"(openable {rid})"] if place in OPENABLE else []
        lines += [f"(canContain {place}Type {name}Type)" for name in object_types]
    holders = [source, *rng.choices(places[:3], k=len(distractors))]
    for (name, oid), holder in zip(objects.items(), holders, strict=True):
        location = list(receptacles).index(holder) + 1
        lines += [
            f"(objectType {oid} {name}Type)",
            f"(pickupable {oid})",
            f"(inReceptacle {oid} {receptacles[holder]})",
        ]
        lines += [f"(objectAtLocation {oid} loc_bar_{location})"]
        lines += [f"({able} {oid})" for able in ("cleanable", "heatable", "coolable")]
    lines.append(")")
    from alfworld.gen.goal_library import gdict

    lines.append(gdict[task_type]["pddl"].format(obj=target, recep=goal).replace("#", "-"))
    traj_data = {
        "task_type": task_type,
        "pddl_params": {
            "object_target": target,
            "parent_target": goal,
            "toggle_target": "",
            "mrecep_target": "",
            "object_sliced": False,
        },
        "goal": gdict[task_type]["templates"][0].format(obj=target.lower(), recep=goal.lower()),
    }
    return "\n".join(lines), traj_data


def write_game(root: Path, split: str, task_type: str, seed: int) -> Path:
    """Write one game under ``root/json_2.1.1/<split>/...``; return its ``game.tw-pddl``."""
    problem, traj_data = make_problem(task_type, random.Random(f"{split}:{task_type}:{seed}"))
    data = files("alfworld") / "data"
    target = traj_data["pddl_params"]
    folder = root / "json_2.1.1" / split / f"{task_type}-{target['object_target']}-{target['parent_target']}-{seed}"
    folder = folder / f"trial_{seed:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    game = {
        "pddl_domain": (data / "alfred.pddl").read_text(),
        "grammar": (data / "alfred.twl2").read_text().replace("UNKNOWN GOAL", traj_data["goal"]),
        "pddl_problem": problem,
        "solvable": True,
    }
    (folder / "traj_data.json").write_text(json.dumps(traj_data, indent=1))
    path = folder / "game.tw-pddl"
    path.write_text(json.dumps(game))
    return path


def write_games(root: str | Path, games_per_split: int, task_types: tuple[str, ...] = tuple(TASKS)) -> list[Path]:
    """``games_per_split`` games per split, cycling through ``task_types``; seeds differ across splits."""
    root = Path(root)
    return [
        write_game(root, split, task_types[i % len(task_types)], seed=1000 * s + i)
        for s, split in enumerate(SPLITS)
        for i in range(games_per_split)
    ]


def main() -> None:
    """Command line: write ALFWorld-format games into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the data directory (point ALFWORLD_DATA at it)")
    parser.add_argument("--games", type=int, default=8, help="games per split")
    args = parser.parse_args()
    paths = write_games(args.out, args.games)
    print(f"wrote {len(paths)} games under {args.out}; export ALFWORLD_DATA={args.out}")


if __name__ == "__main__":
    main()
