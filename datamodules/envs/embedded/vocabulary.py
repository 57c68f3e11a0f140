"""Every word the embedded suite can emit or accept (the tiny preset's tokenizer is fitted on ``VOCABULARY``)."""

from __future__ import annotations

ROOM_NAMES = ("kitchen", "hall", "bedroom", "study", "garden", "cellar", "attic", "bathroom")
PLAIN_NOUNS = ("apple", "book", "cup", "ball", "coin", "lamp", "pen")
CONTAINER_NAMES = ("box", "drawer", "basket", "cabinet")
LOCKABLE = "chest"
DIRECTIONS = ("north", "south", "east", "west")

_TEMPLATE = (
    "your goal : . you are in the see a , and exits nothing happens is empty holds locked closed open "
    "take from put in unlock with go gem key"
).split()

VOCABULARY: tuple[str, ...] = tuple(
    sorted(set(_TEMPLATE) | set(ROOM_NAMES) | set(PLAIN_NOUNS) | set(CONTAINER_NAMES) | {LOCKABLE} | set(DIRECTIONS))
)
