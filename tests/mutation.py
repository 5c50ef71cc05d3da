"""Random byte mutations of seed expositions, for the fuzz tests of the compiled kernels."""

from __future__ import annotations

import random


def mutate(body: bytes, rng: random.Random, alphabet: bytes) -> bytes:
    """Delete, insert or overwrite one to four bytes of `body`; inserted bytes come from `alphabet`."""
    mutated = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(mutated) + 1)
        action = rng.randrange(3)
        if action == 0 and position < len(mutated):
            del mutated[position]
        elif action == 1:
            mutated.insert(position, rng.choice(alphabet))
        elif position < len(mutated):
            mutated[position] = rng.randrange(256)
    return bytes(mutated)
