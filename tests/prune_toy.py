"""A two-layer toy problem shared by the pruning-loop tests (not a test module)."""

import jax
import jax.numpy as jnp
import optax

import jaxcomp.prune as jp

X = jax.random.normal(jax.random.key(2), (32, 12))
Y = jax.random.randint(jax.random.key(3), (32,), 0, 3)
SCHEDULE = jp.polynomial_schedule(0.0, 0.8, 0, 20, update_every=5)


def params0():
    return {"fc1": {"kernel": jax.random.normal(jax.random.key(0), (12, 16)), "bias": jnp.zeros(16)},
            "fc2": {"kernel": jax.random.normal(jax.random.key(1), (16, 3)),
                    "bias": jnp.full(3, 0.1, jnp.float32)}}


def loss(p):
    h = jax.nn.relu(X @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    logits = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
