"""The one error the DSL raises for a net or solver that cannot work."""
from __future__ import annotations

from sparknet._util import UserError

__all__ = ["NetDefinitionError", "NetDefinitionWarning"]


class NetDefinitionError(UserError, ValueError):
    """A net or solver definition Caffe would reject, or would run wrongly.

    Raised where the mistake is made: by the constructor of the layer (or
    filler, rule, solver ...) whose arguments are wrong, or by ``NetParam(...)``
    for mistakes that need the whole net (an unknown bottom, a duplicate top,
    a kernel larger than its input). The message names the layer and the field;
    both are also available as attributes.

    Attributes:
        layer: name of the offending layer, or ``None`` when the mistake is not
            in a layer (a solver, a filler built on its own, the net itself).
        field: the DSL field that is wrong, e.g. ``"num_output"`` or ``"bottoms"``.
    """

    def __init__(self, message: str, *, layer: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer
        self.field = field


class NetDefinitionWarning(UserWarning):
    """A definition Caffe accepts but that is probably not what was meant.

    For example two layers of one name (BVLC's own MNIST autoencoder has two
    layers named ``loss``): Caffe builds the net, but matches weights to layers
    by name, so a ``.caffemodel`` cannot tell such layers apart.
    """
