"""ONNX LSTM, GRU and RNN nodes into directions: the node's W, R, B, P (as the node sees them, folded when
an exporter built them from slices) cut by the ONNX gate layouts (`layouts.ONNX`: LSTM i, o, f, c; GRU
z, r, h; the direction index on the leading axis), and the node's attributes mapped to the Direction.

- `direction`: `bidirectional` gives `<path>/forward` and `<path>/backward` (index 0 and 1 of every
  weight), `reverse` one direction with `go_backwards=True`.
- `activations` (f, g, h per direction; alpha/beta consumed in order, as onnxruntime does) become
  `recurrent_activation` / `activation` where a Keras activation computes the same function
  (HardSigmoid(0.2, 0.5) is Keras 2's hard_sigmoid, HardSigmoid(1/6, 0.5) Keras 3's); otherwise they
  stay None and a note names them. An LSTM whose g and h differ has no Keras activation either.
- `linear_before_reset` is the GRU's `reset_after`; `clip` is `gate_clip`; peepholes `P` (i, o, f) are
  the blocks `p_i p_o p_f`; `input_forget=1` and `layout=1` are stated in the notes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import GATES, CellKind, Direction, block_order
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.formats.onnx.layers import RecurrentLayer
from lstm_inspect.model import Model, Weight
from lstm_inspect.safety import printable

KINDS = {"LSTM": CellKind.LSTM, "GRU": CellKind.GRU, "RNN": CellKind.SIMPLE_RNN}
PER_DIRECTION = {"LSTM": 3, "GRU": 2, "RNN": 1}  # activations of one direction: f, g, h
_ROLES = ("W", "R", "B", "P")

# Which activations take alpha and beta, and onnxruntime's defaults when the lists run out.
_USES = {"affine": (True, True), "relu": (False, False), "leakyrelu": (True, False),
         "thresholdedrelu": (True, False), "tanh": (False, False), "scaledtanh": (True, True),
         "sigmoid": (False, False), "hardsigmoid": (True, True), "elu": (True, False),
         "softsign": (False, False), "softplus": (False, False)}
_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}
_PLAIN = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "softsign": "softsign", "softplus": "softplus"}


@dataclass(frozen=True)
class Activation:
    """One ONNX activation with its parameters, and the Keras activation computing the same (if any);
    `flavor` says which Keras hard_sigmoid it is (`keras2`: clip(0.2x + 0.5, 0, 1), `keras3`:
    relu6(x + 3) / 6)."""

    name: str
    alpha: float | None = None
    beta: float | None = None
    keras: str | None = None
    flavor: str | None = None

    @property
    def text(self) -> str:
        params = [f"{k}={v:g}" for k, v in (("alpha", self.alpha), ("beta", self.beta)) if v is not None]
        return f"{self.name}({', '.join(params)})" if params else self.name

    def same(self, other: "Activation") -> bool:
        return (self.name.lower(), self.alpha, self.beta) == (other.name.lower(), other.alpha, other.beta)


def onnx_directions(model: Model) -> list[Direction]:
    """Every direction of every recurrent node, in model order."""
    out: list[Direction] = []
    for layer in model.layers:
        if isinstance(layer, RecurrentLayer):
            out.extend(node_directions(layer))
    return out


def node_directions(layer: RecurrentLayer) -> list[Direction]:
    """The directions of one node; none when W or R has no known shape (the reader's notes say why)."""
    node = layer.node
    assert node is not None
    tensors = {role: op.weight for role in _ROLES if (op := layer.operand(role)) is not None and op.weight}
    if "W" not in tensors or "R" not in tensors:
        return []
    kind = KINDS[node.op_type]
    units, input_dim = _sizes(layer, tensors)
    layout = layouts.ONNX[kind]
    # The ONNX table names the recurrent tensor after its role: R holds the U blocks.
    activations = split_activations(node.op_type, node.activations, node.activation_alpha,
                                    node.activation_beta, node.num_directions)
    sides = ("forward", "backward") if node.num_directions == 2 else (None,)
    out = []
    for k, side in enumerate(sides):
        path = f"{layer.name}/{side}" if side else layer.name
        blocks = layouts.cut(layout, tensors, layouts.Sizes(units, input_dim), path=path, direction=k)
        backwards = side == "backward" or node.direction == "reverse"
        activation, recurrent, act_notes = keras_activations(node.op_type, activations[k] if activations else None,
                                                             node.activations, node.num_directions)
        out.append(Direction(
            path=path, kind=kind, class_name=node.op_type, units=units, input_dim=input_dim,
            blocks=tuple(sorted(blocks, key=lambda b: block_order(b.name))), use_bias="B" in tensors,
            reset_after=bool(node.linear_before_reset) if kind is CellKind.GRU else None,
            activation=activation, recurrent_activation=recurrent, go_backwards=backwards,
            corrections=(_correction(kind, "P" in tensors),), notes=tuple(_notes(layer, kind) + act_notes),
            layer_name=layer.name, source_layout=layout.name, gate_clip=node.clip))
    return out


def _sizes(layer: RecurrentLayer, tensors: dict[str, Weight]) -> tuple[int, int]:
    """(hidden size, input size), every tensor's leading axis checked against the node's directions."""
    node = layer.node
    assert node is not None
    n = max(1, len(GATES[KINDS[node.op_type]]))
    where = f"{node.op_type} node '{printable(layer.name, 200)}'"
    w, r = tensors["W"], tensors["R"]
    if len(w.shape) != 3 or len(r.shape) != 3:
        raise CorruptModelError(f"{where}: W {list(w.shape)} and R {list(r.shape)} must have 3 axes")
    units = node.hidden_size if node.hidden_size is not None else r.shape[-1]
    want = {"W": (node.num_directions, n * units, w.shape[-1]), "R": (node.num_directions, n * units, units),
            "B": (node.num_directions, 2 * n * units), "P": (node.num_directions, 3 * units)}
    for role, weight in tensors.items():
        if tuple(weight.shape) != want[role]:
            raise CorruptModelError(f"{where}: {role} has shape {list(weight.shape)}, expected {list(want[role])} "
                                    f"({node.num_directions} direction(s), hidden_size {units})")
    if any(d == 0 for d in (units, w.shape[-1])):
        raise CorruptModelError(f"{where}: hidden size {units} and input size {w.shape[-1]} must be positive")
    return units, w.shape[-1]


def _correction(kind: CellKind, peepholes: bool) -> str:
    order = ", ".join(layouts.ONNX[kind].native_order.split(", ")) if kind is not CellKind.SIMPLE_RNN else ""
    gates = f"rows in gate order {order}, " if order else ""
    return (f"ONNX layout: W[d] and R[d] {gates}each block transposed to x @ W; B[d] = [Wb; Rb] split into "
            "b (Wb) and bU (Rb)" + ("; P[d] peepholes in order i, o, f" if peepholes else ""))


def _notes(layer: RecurrentLayer, kind: CellKind) -> list[str]:
    node = layer.node
    assert node is not None
    notes = []
    for op in layer.operands:
        if op.role not in _ROLES:
            continue
        if not op.stored:
            notes.append(f"{op.role}: the values are not in the file ({op.why})")
        elif op.how and not op.how.startswith("initializer"):
            notes.append(f"{op.role}: {op.how}")
    if layer.counted_in:
        notes.append(f"its weights are made of tensors counted under {', '.join(layer.counted_in)}")
    if node.layout == 1:
        notes.append("layout=1: X is [batch, seq, input] and Y [batch, seq, directions, hidden] (batch first); "
                     "the weights do not depend on it")
    if node.input_forget:
        notes.append("input_forget=1: the forget gate is 1 − i (input and forget gates coupled); the f blocks "
                     "are stored but not used")
    if kind is CellKind.GRU and not node.linear_before_reset:
        notes.append("linear_before_reset=0: the reset gate multiplies h_{t-1} before the recurrent product "
                     "and bU_h is added outside it (Keras reset_after=False, with bias b_h + bU_h)")
    if node.clip is not None:
        notes.append(f"clip={node.clip:g}: every gate's pre-activation is clipped to [-{node.clip:g}, "
                     f"{node.clip:g}] (not the cell state)")
    return notes


# --- activations ----------------------------------------------------------------------------------

def split_activations(op_type: str, names: tuple[str, ...], alphas: tuple[float, ...], betas: tuple[float, ...],
                      directions: int) -> list[tuple[Activation, ...]] | None:
    """Per direction, its activations with alpha/beta (taken in order by the activations that use them,
    onnxruntime's defaults after the lists end); None when the list's length does not fit."""
    per = PER_DIRECTION[op_type]
    if len(names) != per * directions:
        return None
    resolved = list(_resolve(names, alphas, betas))
    return [tuple(resolved[k * per:(k + 1) * per]) for k in range(directions)]


def _resolve(names: tuple[str, ...], alphas: tuple[float, ...], betas: tuple[float, ...]) -> Iterator[Activation]:
    alpha_left, beta_left = list(alphas), list(betas)
    for name in names:
        key = name.lower()
        uses = _USES.get(key)
        if uses is None:
            yield Activation(name)
            continue
        default = _DEFAULTS.get(key, (0.0, 0.0))
        alpha = (alpha_left.pop(0) if alpha_left else default[0]) if uses[0] else None
        beta = (beta_left.pop(0) if beta_left else default[1]) if uses[1] else None
        keras, flavor = _keras_name(key, alpha, beta)
        yield Activation(name, alpha, beta, keras, flavor)


def _keras_name(key: str, alpha: float | None, beta: float | None) -> tuple[str | None, str | None]:
    if key in _PLAIN:
        return _PLAIN[key], None
    if key == "elu" and alpha == 1.0:
        return "elu", None
    if key == "affine" and (alpha, beta) == (1.0, 0.0):
        return "linear", None
    if key == "hardsigmoid" and beta == 0.5:
        if np.float32(alpha) == np.float32(0.2):
            return "hard_sigmoid", "keras2"
        if np.float32(alpha) == np.float32(1.0 / 6.0):
            return "hard_sigmoid", "keras3"
    return None, None


def keras_activations(op_type: str, acts: tuple[Activation, ...] | None, names: tuple[str, ...],
                      directions: int) -> tuple[str | None, str | None, list[str]]:
    """(activation, recurrent_activation, notes) of one direction."""
    if acts is None:
        want = PER_DIRECTION[op_type] * directions
        return None, None, [f"activations lists {len(names)} function(s), a {directions}-direction {op_type} "
                            f"takes {want}: not mapped"]
    notes = [f"activation {a.text} has no Keras equivalent" for a in acts if a.keras is None]
    if op_type == "RNN":
        return acts[0].keras, None, notes
    activation = acts[1].keras
    if op_type == "LSTM" and not acts[1].same(acts[2]):
        notes.append(f"the cell input activation g={acts[1].text} and output activation h={acts[2].text} "
                     "differ: no Keras activation computes both")
        activation = None
    flavors = {a.flavor for a in acts if a.flavor}
    if flavors:
        notes.append("HardSigmoid(alpha=0.2, beta=0.5) is Keras 2's hard_sigmoid" if flavors == {"keras2"} else
                     "HardSigmoid(alpha=1/6, beta=0.5) is Keras 3's hard_sigmoid" if flavors == {"keras3"} else
                     "two different HardSigmoid definitions: no Keras equivalent")
        if len(flavors) > 1:
            return None, None, notes
    return activation, acts[0].keras, notes


def hard_sigmoid_flavor(acts: tuple[Activation, ...] | None) -> str | None:
    flavors = {a.flavor for a in acts or () if a.flavor}
    return flavors.pop() if len(flavors) == 1 else None
