"""The embedded suite's world model: a static ``World`` (layout, containers, goal) and an immutable ``State``.

Rooms sit on a grid; items lie on a room's floor or inside a container; containers are closed, open or locked (a
locked chest opens after ``unlock chest with key``). Actions: go, take, open, unlock, put. There are no pure
no-op actions (look, inventory, close): with them a uniformly random policy almost never wins within 20 turns, and RL
from a random-like start needs to see some successes. ``transitions`` lists every admissible action with the
state and message it leads to, so the environment, the random baseline and the planner share one rule book.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NORTH_SOUTH_EAST_WEST = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1)}
#: layout name -> (rows, columns) of the room grid
LAYOUTS = {"corridor2": (1, 2), "corridor3": (1, 3), "corridor4": (1, 4), "grid2x2": (2, 2), "grid2x3": (2, 3)}


@dataclass(frozen=True)
class State:
    """What actions change: where the agent is, what it carries, where items lie, which containers are open/locked.

    ``places`` maps each item not carried to ``"room:<i>"`` or a container name, as a sorted tuple of pairs.
    """

    room: int
    inventory: frozenset[str]
    places: tuple[tuple[str, str], ...]
    opened: frozenset[str]
    locked: frozenset[str]

    def place_of(self, item: str) -> str | None:
        """Where ``item`` lies (None when carried)."""
        return dict(self.places).get(item)


@dataclass(frozen=True)
class World:
    """What never changes within an episode."""

    task: str
    family: str
    layout: str
    rooms: tuple[str, ...]
    exits: tuple[tuple[tuple[str, int], ...], ...]
    container_rooms: tuple[tuple[str, int], ...]
    keys: tuple[tuple[str, str], ...]  # (locked container, the key that opens it)
    goal_item: str
    goal_container: str | None  # None: the goal is to carry goal_item
    start: State

    def containers_in(self, room: int) -> list[str]:
        """Containers in ``room``, in a fixed order."""
        return [name for name, where in self.container_rooms if where == room]

    def won(self, state: State) -> bool:
        """The goal holds in ``state``."""
        if self.goal_container is None:
            return self.goal_item in state.inventory
        return state.place_of(self.goal_item) == self.goal_container


def grid_exits(layout: str) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Per room index, the (direction, neighbour) pairs of a ``LAYOUTS`` grid."""
    rows, cols = LAYOUTS[layout]
    exits = []
    for r in range(rows):
        for c in range(cols):
            pairs = []
            for direction, (dr, dc) in NORTH_SOUTH_EAST_WEST.items():
                if 0 <= r + dr < rows and 0 <= c + dc < cols:
                    pairs.append((direction, (r + dr) * cols + c + dc))
            exits.append(tuple(pairs))
    return tuple(exits)


def visible_items(world: World, state: State) -> list[str]:
    """Items the agent can take: on this room's floor or inside an open container here."""
    here = f"room:{state.room}"
    open_here = {c for c in world.containers_in(state.room) if c in state.opened}
    return sorted(item for item, place in state.places if place == here or place in open_here)


def transitions(world: World, state: State) -> dict[str, tuple[State, str]]:
    """Every admissible action -> (next state, feedback message)."""
    moves: dict[str, tuple[State, str]] = {}
    for direction, room in world.exits[state.room]:
        moves[f"go {direction}"] = (replace(state, room=room), "")
    for item in visible_items(world, state):
        places = tuple(pair for pair in state.places if pair[0] != item)
        moves[f"take {item}"] = (
            replace(state, inventory=state.inventory | {item}, places=places),
            f"you take the {item} .",
        )
    keys = dict(world.keys)
    for container in world.containers_in(state.room):
        if container in state.locked:
            key = keys[container]
            if key in state.inventory:
                unlocked = replace(state, locked=state.locked - {container})
                moves[f"unlock {container} with {key}"] = (unlocked, f"you unlock the {container} .")
        elif container in state.opened:
            for item in sorted(state.inventory):
                places = tuple(sorted((*state.places, (item, container))))
                moved = replace(state, inventory=state.inventory - {item}, places=places)
                moves[f"put {item} in {container}"] = (moved, f"you put the {item} in the {container} .")
        else:
            moves[f"open {container}"] = (
                replace(state, opened=state.opened | {container}),
                f"you open the {container} .",
            )
    return moves


def describe(world: World, state: State) -> str:
    """The observation of the current room."""
    here = f"room:{state.room}"
    things = [f"a {item}" for item, place in state.places if place == here]
    notes = []
    for container in world.containers_in(state.room):
        if container in state.locked:
            things.append(f"a locked {container}")
        elif container not in state.opened:
            things.append(f"a closed {container}")
        else:
            things.append(f"a open {container}")
            inside = [item for item, place in state.places if place == container]
            notes.append(
                f"the {container} holds " + " , ".join(f"a {i}" for i in inside)
                if inside
                else f"the {container} is empty"
            )
    text = f"you are in the {world.rooms[state.room]} ."
    if things:
        text += " you see " + (" , ".join(things[:-1]) + " and " + things[-1] if len(things) > 1 else things[0]) + " ."
    for note in notes:
        text += f" {note} ."
    return text + " exits : " + " , ".join(d for d, _ in world.exits[state.room]) + " ."
