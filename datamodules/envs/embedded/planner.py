"""Shortest solutions by breadth-first search over the goal-relevant actions.

Only moves, and actions on the goal item, the goal container, locked containers, their keys and the containers holding
any of those, are searched: taking, opening or putting anything else never shortens a solution (nothing is
heavy, nothing blocks), so the pruned search is still optimal and stays small.
"""

from __future__ import annotations

from collections import deque

from datamodules.envs.embedded.world import State, World, transitions


def relevant_names(world: World, state: State) -> set[str]:
    """Items and containers a solution may need to act on."""
    names = {world.goal_item} | {c for c, _ in world.keys} | {k for _, k in world.keys}
    if world.goal_container:
        names.add(world.goal_container)
    holders = {state.place_of(name) for name in list(names)}
    return names | {h for h in holders if h and not h.startswith("room:")}


def _useful(action: str, relevant: set[str]) -> bool:
    verb = action.split()[0]
    if verb == "go":
        return True
    words = action.split()
    named = {" ".join(words[i : i + 2]) for i in range(len(words) - 1)} | set(words)
    return bool(named & relevant)


def solve(world: World, state: State, limit: int = 200_000) -> list[str] | None:
    """A shortest action list from ``state`` to the goal, [] if already won, None if unreachable."""
    if world.won(state):
        return []
    relevant = relevant_names(world, world.start)
    parents: dict[State, tuple[State, str] | None] = {state: None}
    queue = deque([state])
    while queue and len(parents) < limit:
        current = queue.popleft()
        for action, (nxt, _) in transitions(world, current).items():
            if nxt in parents or not _useful(action, relevant):
                continue
            parents[nxt] = (current, action)
            if world.won(nxt):
                path = []
                node = nxt
                while parents[node] is not None:
                    node, act = parents[node]
                    path.append(act)
                return path[::-1]
            queue.append(nxt)
    return None
