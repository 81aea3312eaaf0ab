"""What every weight format answers, and the arithmetic they share.

A format is how a variant's quantized tensors reach the graph and how the graph
multiplies them: `floating` (no integers), `direct` (dequantize, then the dot),
`factored` (per-group contraction first, scales after), `integer` (the same with the
activation quantized too). Each lives in a file of its own and answers, for the
variants that name it (`dequant`):

- `check`: the fields it needs (a ValueError naming the field and what to set);
- `qweight_shape` / `lay_out`: the integers' shape as a graph argument, and the host
  arrays reshaped to it;
- `centre`: the integer the graph subtracts (the host folds it into the minimum);
- `matrix` / `linear`: the in-graph dequant and the multiplication;
- `llamacpp_type`: the llama.cpp tensor type nearest to it, for the baseline;
- `expects_fused`: whether IREE 3.13 fuses its dequant into decode's matvecs, which the
  row's `dequant_fused` column should then say (`workers.compile.dispatches`).

Formats are stateless: one instance each, in `workers.formats.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from workers.core.config import EMBEDDING, LM_HEAD
from workers.core.kinds import Layout

if TYPE_CHECKING:
    import numpy as np

    from workers.formats.variant import Variant

Array = Any  # a jax array: jax is imported inside the graph-building functions


class Format:
    """One weight format (see the module docstring); subclasses override what differs."""

    name: ClassVar[str]
    # multiplies one scale per output channel itself; the others leave an ungrouped
    # tensor to `direct`
    per_channel: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<format {self.name}>"

    def check(self, variant: Variant, where: str) -> None:
        """Raises ValueError for a variant field this format cannot take."""

    def llamacpp_type(self, variant: Variant) -> str:
        """The nearest llama.cpp type to a quantized variant's linears. Our formats are
        affine (scale and minimum): Q4_1 is llama.cpp's affine 4-bit; its 8-bit type
        Q8_0 is symmetric (scale only), the nearest there is."""
        return "Q8_0" if variant.bits == 8 else "Q4_1"

    def expects_fused(self, variant: Variant) -> bool | None:
        """The `dequant_fused` IREE 3.13 gives decode at O3; None: nothing to fuse."""
        return None

    def centre(self, variant: Variant, name: str) -> int:
        """What the graph subtracts from a tensor's integers (0: nothing)."""
        return 0

    def qweight_shape(
        self, variant: Variant, name: str, stored: tuple[int, ...], axis: int, group: int | None
    ) -> tuple[int, ...]:
        """The integers' shape as a graph argument, from their 2-D stored shape."""
        return stored

    def lay_out(
        self, variant: Variant, name: str, qweight: np.ndarray, axis: int, num_groups: int
    ) -> np.ndarray:
        """The host's 2-D stored integers reshaped to `qweight_shape` (the same bytes)."""
        return qweight

    def matrix(self, w: dict[str, Array], key: str, variant: Variant, axis: int) -> Array:
        """The weight `key` in its stored orientation, as the graph's float matrix."""
        raise TypeError(f"{self!r} never makes {key} a float matrix: it multiplies it grouped")

    def linear(
        self, x: Array, w: dict[str, Array], key: str, variant: Variant, layout: str
    ) -> Array:
        """x [T, in] times the weight `key` -> [T, out], in x's dtype."""
        weight = self.matrix(w, key, variant, contraction_axis(key, layout)).astype(x.dtype)
        return matmul(x, weight, layout)


def matmul(x: Array, weight: Array, layout: str) -> Array:
    """x [T, in] times a float matrix stored [in, out] (in_major) or [out, in] (out_major).

    in_major: x @ W. out_major, one row (decode): W . x with W [out, in] as the dot's
    left operand, which IREE lowers to a matvec; `x @ W.T` would make it transpose the
    whole weight first. out_major, several rows (prefill): x . W^T, which stays one
    matmul when the graph is batched.
    """
    if layout == Layout.IN_MAJOR:
        return dot(x, weight, 1, 0)
    if x.shape[0] > 1:
        # Several rows (prefill, score): x . W^T, one matmul with both operands
        # contiguous along `in`. W . x is that too for one sequence, but vmapped over
        # a batch (`batched`) the rows become two free dims, and IREE 3.13 then
        # transposes x to [in, batch x rows] for a plain A.B matmul, 4-7x slower per
        # FLOP on the CPU: 1B prefill at batch 4 took ~10x batch 1 (docs/results.md).
        return dot(x, weight, 1, 1)
    return dot(weight, x, 1, 1).T


def dot(a: Array, b: Array, a_axis: int, b_axis: int) -> Array:
    """The product contracting `a_axis` of a with `b_axis` of b."""
    from jax import lax

    return lax.dot_general(a, b, (((a_axis,), (b_axis,)), ((), ())))


def contraction_axis(name: str, layout: str) -> int:
    """The axis of a stored matrix that a matmul contracts: 0 for [in, out], 1 for [out, in]."""
    # the embedding and lm_head tables stay [vocab, hidden] whatever the layout
    return 1 if name in (EMBEDDING, LM_HEAD) or layout == Layout.OUT_MAJOR else 0
