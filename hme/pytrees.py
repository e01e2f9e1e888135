"""Small pytree helpers shared by the fitting loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_where(flag: jax.Array, a, b):
    """Leafwise ``jnp.where(flag, a, b)`` over two pytrees of the same structure (``flag`` a scalar boolean)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(flag, x, y), a, b)
