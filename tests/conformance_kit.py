"""What conformance rows are made of: the toy parameters, gradients and the ``Row`` record.

A family adds its rows in ``tests/conformance_<family>.py`` as a list named
``ROWS`` of :class:`Row`; ``tests/test_conformance.py`` collects every such
file, so a new method is one row in its family's file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import jaxcomp as jc
import jaxcomp.prune as jp

STEPS = 7  # SCHED reaches its target at step 6
SCHED = jp.polynomial_schedule(0.0, 0.5, 0, 6, update_every=2)


def params0() -> dict:
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "fc1": {"kernel": jax.random.normal(k[0], (6, 8)), "bias": jnp.zeros(8)},
        "fc2": {"kernel": jax.random.normal(k[1], (8, 4)).astype(jnp.bfloat16),
                "bias": jnp.zeros(4, jnp.bfloat16)},
    }


def grads_at(t: int) -> dict:
    return jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(9), t),
                                                    x.shape).astype(x.dtype), params0())


def toy_loss(p):
    return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) ** 2) for x in jax.tree.leaves(p))


def masks_of(p):
    return jax.tree.map(lambda x: jnp.abs(x) > 0.5, p)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # the factory's public name (registry name where registered)
    build: Callable[[], jc.Compressor]
    grads: bool = False  # update needs grads=
    injectable: dict[str, Any] | None = None  # kwargs for inject_hyperparams(factory)(**kw)
    factory: Callable[..., jc.Compressor] | None = None
    label: str = ""
    restrictable: bool = True  # works on a sub-tree (masked, partition)
    every_step: bool = False  # no ``due``: its update must run on every step

    @property
    def id(self) -> str:
        return self.label or self.name
