"""TF1 variable names: which variables are optimizer state, which scopes hold a recurrent cell, and how
the other variables group into layers by scope. Names only (and shapes), never values.

A TF1 cell's variables live under its variable scope: `rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel`.
The scope's last component names the class (`basic_lstm_cell` → BasicLSTMCell); the names below it
changed across TF versions (`Linear/Matrix` in 0.x, `weights` in 1.0-1.1, `kernel` since 1.2). A scope
is a cell only when every variable under it has a cell role name and the shapes fit the class; a
sibling `recurrent_kernel` makes it a Keras layer (same `lstm_cell/kernel` name, other layout).

Sources: shared/reference/beyond-keras.md §0.2 and §2 (TF 2.21 tf_keras legacy_cells.py, contrib
lstm_ops.py / gru_ops.py / cudnn_rnn_ops.py, real TF 0.x and 1.x checkpoints).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

# Scope leaf name → TF class. `lstm_cell` is also contrib's LSTMBlockCell (same names, same math).
CELL_SCOPES = {
    "basic_lstm_cell": "BasicLSTMCell", "BasicLSTMCell": "BasicLSTMCell",
    "lstm_cell": "LSTMCell", "LSTMCell": "LSTMCell",
    "lstm_fused_cell": "LSTMBlockFusedCell",
    "cudnn_compatible_lstm_cell": "CudnnCompatibleLSTMCell",
    "gru_cell": "GRUCell", "GRUCell": "GRUCell",
    "basic_rnn_cell": "BasicRNNCell", "BasicRNNCell": "BasicRNNCell",
}
LSTM_CLASSES = frozenset({"BasicLSTMCell", "LSTMCell", "LSTMBlockFusedCell", "CudnnCompatibleLSTMCell"})
GRU_CLASSES = frozenset({"GRUCell", "GRUBlockCell"})
RNN_CLASSES = frozenset({"BasicRNNCell"})
CELL_CLASSES = LSTM_CLASSES | GRU_CLASSES | RNN_CLASSES

# Role (the TF ≥ 1.2 name, as the layout tables call the tensors) → every name it has had.
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "kernel": ("kernel", "weights", "Linear/Matrix", "W_0"),
    "bias": ("bias", "biases", "Linear/Bias", "B"),
    "w_i_diag": ("w_i_diag", "W_I_diag"),
    "w_f_diag": ("w_f_diag", "W_F_diag"),
    "w_o_diag": ("w_o_diag", "W_O_diag"),
    "projection/kernel": ("projection/kernel", "projection/weights", "W_P_0"),
    "gates/kernel": ("gates/kernel", "gates/weights", "Gates/Linear/Matrix"),
    "gates/bias": ("gates/bias", "gates/biases", "Gates/Linear/Bias"),
    "candidate/kernel": ("candidate/kernel", "candidate/weights", "Candidate/Linear/Matrix"),
    "candidate/bias": ("candidate/bias", "candidate/biases", "Candidate/Linear/Bias"),
    # contrib GRUBlockCell: which of w_ru / w_c is the gate kernel is decided by shape (see below)
    "w_ru": ("w_ru",), "w_c": ("w_c",), "b_ru": ("b_ru",), "b_c": ("b_c",),
}
_ROLE_OF = {alias: role for role, aliases in ROLE_ALIASES.items() for alias in aliases}
_LSTM_ROLES = frozenset({"kernel", "bias", "w_i_diag", "w_f_diag", "w_o_diag", "projection/kernel"})
_GRU_ROLES = frozenset({"gates/kernel", "gates/bias", "candidate/kernel", "candidate/bias"})
_GRU_BLOCK_ROLES = frozenset({"w_ru", "w_c", "b_ru", "b_c"})
_RNN_ROLES = frozenset({"kernel", "bias"})

# Optimizer state that is not a per-variable slot.
_OPTIMIZER_GLOBALS = re.compile(r"(?:^|/)(?:beta[12]_power(?:_\d+)?|global_step)$")
_KERAS_TF1_OPTIMIZER = re.compile(
    r"^(?:training(?:_\d+)?/|(?:Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl)(?:_\d+)?/"
    r"(?:iterations|lr|learning_rate|beta_1|beta_2|decay|momentum|rho|epsilon)$)")


@dataclass(frozen=True)
class Variable:
    """One stored variable by name (partitioned variables are one variable)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CellScope:
    """A scope holding one TF1 cell: its class and each tensor role's variable name."""

    scope: str
    class_name: str
    roles: Mapping[str, str]  # role (kernel, gates/kernel, ...) → variable name
    notes: tuple[str, ...] = ()


@dataclass
class Grouping:
    """The variables of a checkpoint, sorted into what they are."""

    cells: list[CellScope] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # scope → plain variable names
    order: list[tuple[str, str]] = field(default_factory=list)  # ("cell" | "group", scope) in name order
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- optimizer
def optimizer_state(variables: Mapping[str, Variable]) -> tuple[list[str], list[str]]:
    """(optimizer variable names, slot names seen). A slot is `<var>/<Slot>` of the same shape as a
    variable `<var>` of the checkpoint (Adam, Adam_1, Momentum, RMSProp, ...); globals are
    `beta1_power`, `beta2_power`, `global_step` and Keras-on-TF1 optimizer variables."""
    found, slots = [], []
    for name, var in variables.items():
        owner, _, slot = name.rpartition("/")
        if owner in variables and variables[owner].shape == var.shape:
            found.append(name)
            if slot not in slots:
                slots.append(slot)
        elif _OPTIMIZER_GLOBALS.search(name) or _KERAS_TF1_OPTIMIZER.search(name):
            found.append(name)
    return found, slots


# ----------------------------------------------------------------------------------------- cells
def _cell_split(name: str) -> tuple[str, str, str] | None:
    """(scope, scope leaf, role alias) when `name` is `<...>/<cell scope>/<role alias>`."""
    parts = name.split("/")
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] in CELL_SCOPES:
            alias = "/".join(parts[k + 1:])
            if alias in _ROLE_OF:
                return "/".join(parts[:k + 1]), parts[k], alias
            return None
    return None


def group(variables: Mapping[str, Variable], model_names: Sequence[str]) -> Grouping:
    """Cells by scope, then the remaining variables by their parent scope, in name order."""
    candidates: dict[str, dict[str, str]] = {}
    leaves: dict[str, str] = {}
    for name in model_names:
        split = _cell_split(name)
        if split:
            scope, leaf, alias = split
            candidates.setdefault(scope, {})[alias] = name
            leaves[scope] = leaf
    below = _count_below(model_names, candidates)
    result = Grouping()
    cell_of: dict[str, CellScope] = {}
    for scope, aliases in candidates.items():
        if below[scope] != len(aliases):  # another variable under the scope (Keras's recurrent_kernel...)
            continue
        cell = _fit(scope, leaves[scope], aliases, variables)
        if isinstance(cell, str):
            result.notes.append(cell)
            continue
        cell_of[scope] = cell
        result.cells.append(cell)
    in_cell = {name: cell.scope for cell in cell_of.values() for name in cell.roles.values()}
    seen: set[tuple[str, str]] = set()
    for name in model_names:
        if name in in_cell:
            item = ("cell", in_cell[name])
        else:
            scope = name.rpartition("/")[0] or name
            result.groups.setdefault(scope, []).append(name)
            item = ("group", scope)
        if item not in seen:
            seen.add(item)
            result.order.append(item)
    return result


def may_hold_cells(names: Iterable[str]) -> bool:
    """Whether any name has a TF1 cell scope component (a cheap test before grouping)."""
    return any(part in CELL_SCOPES for name in names for part in name.split("/")[:-1])


def describe_cell(scope: str, shapes: Mapping[str, tuple[int, ...]]) -> CellScope | str:
    """The cell held by `scope`, from its variables' full names and shapes (every variable must lie
    under the scope and have a role name), or a note saying why it is not one."""
    leaf = scope.rsplit("/", 1)[-1]
    if leaf not in CELL_SCOPES:
        return f"{scope}: not a TF1 cell scope"
    aliases: dict[str, str] = {}
    for name in shapes:
        split = _cell_split(name)
        if split is None or split[0] != scope:
            return f"{scope}: {name} is not a variable of a TF1 cell"
        aliases[split[2]] = name
    return _fit(scope, leaf, aliases, {n: Variable(n, s) for n, s in shapes.items()})


def _count_below(names: Sequence[str], scopes: Mapping[str, object]) -> dict[str, int]:
    """How many variables lie under each candidate scope (one pass over the names)."""
    counts = dict.fromkeys(scopes, 0)
    for name in names:
        prefix = ""
        for part in name.split("/")[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in counts:
                counts[prefix] += 1
    return counts


def _fit(scope: str, leaf: str, aliases: Mapping[str, str], variables: Mapping[str, Variable]
         ) -> CellScope | str:
    """The cell when the roles and shapes fit a TF1 class, else a note saying why not."""
    roles: dict[str, str] = {}
    for alias, name in aliases.items():
        role = _ROLE_OF[alias]
        if role in roles:
            return f"{scope}: two variables for the {role} of a TF1 cell; listed as plain variables"
        roles[role] = name
    roles = {role: roles[role] for role in ROLE_ALIASES if role in roles}  # kernel, bias, peepholes, ...
    shape = {role: variables[name].shape for role, name in roles.items()}
    cls = CELL_SCOPES[leaf]
    family = set(roles)
    if cls in GRU_CLASSES and family <= _GRU_BLOCK_ROLES:
        return _fit_gru_block(scope, roles, shape)
    if cls in LSTM_CLASSES and family <= _LSTM_ROLES and _lstm_shapes(shape):
        return CellScope(scope, cls, roles)
    if cls in GRU_CLASSES and family <= _GRU_ROLES and _gru_shapes(shape):
        return CellScope(scope, cls, roles)
    if cls in RNN_CLASSES and family <= _RNN_ROLES and _rnn_shapes(shape):
        return CellScope(scope, cls, roles)
    listed = ", ".join(f"{aliases_name} {list(variables[n].shape)}" for aliases_name, n in sorted(aliases.items()))
    return f"{scope}: names of a TF1 {cls} but shapes that fit none ({listed}); listed as plain variables"


def _lstm_shapes(shape: Mapping[str, tuple[int, ...]]) -> bool:
    kernel = shape.get("kernel")
    if kernel is None or len(kernel) != 2 or kernel[1] % 4 or kernel[1] == 0:
        return False
    units = kernel[1] // 4
    recurrent = units
    if "projection/kernel" in shape:
        proj = shape["projection/kernel"]
        if len(proj) != 2 or proj[0] != units or proj[1] <= 0:
            return False
        recurrent = proj[1]
    vectors_ok = all(shape[r] == (units,) for r in ("w_i_diag", "w_f_diag", "w_o_diag") if r in shape)
    peepholes = sum(r in shape for r in ("w_i_diag", "w_f_diag", "w_o_diag"))
    return kernel[0] > recurrent and shape.get("bias", (4 * units,)) == (4 * units,) and vectors_ok \
        and peepholes in (0, 3)


def _gru_shapes(shape: Mapping[str, tuple[int, ...]]) -> bool:
    gates, candidate = shape.get("gates/kernel"), shape.get("candidate/kernel")
    if gates is None or candidate is None or len(gates) != 2 or len(candidate) != 2:
        return False
    units = candidate[1]
    return units > 0 and gates == (candidate[0], 2 * units) and candidate[0] > units \
        and shape.get("gates/bias", (2 * units,)) == (2 * units,) \
        and shape.get("candidate/bias", (units,)) == (units,)


def _rnn_shapes(shape: Mapping[str, tuple[int, ...]]) -> bool:
    kernel = shape.get("kernel")
    return kernel is not None and len(kernel) == 2 and kernel[1] > 0 and kernel[0] > kernel[1] \
        and shape.get("bias", (kernel[1],)) == (kernel[1],)


def _fit_gru_block(scope: str, roles: dict[str, str], shape: Mapping[str, tuple[int, ...]]) -> CellScope | str:
    """contrib GRUBlockCell: `w_ru` (in+u, 2u) and `w_c` (in+u, u), except that one contrib version
    saved each under the other's name. Decide by shape, and say so when the names were swapped."""
    kernels = [r for r in ("w_ru", "w_c") if r in roles]
    if len(kernels) != 2 or any(len(shape[r]) != 2 for r in kernels):
        return f"{scope}: a GRUBlockCell needs w_ru and w_c matrices; listed as plain variables"
    wide, narrow = sorted(kernels, key=lambda r: -shape[r][1])
    units = shape[narrow][1]
    if units <= 0 or shape[wide] != (shape[narrow][0], 2 * units) or shape[narrow][0] <= units or \
            shape.get("b_ru", (2 * units,)) != (2 * units,) or shape.get("b_c", (units,)) != (units,):
        return f"{scope}: w_ru {list(shape['w_ru'])} and w_c {list(shape['w_c'])} do not fit a GRUBlockCell"
    mapped = {"gates/kernel": roles[wide], "candidate/kernel": roles[narrow]}
    for role, target in (("b_ru", "gates/bias"), ("b_c", "candidate/bias")):
        if role in roles:
            mapped[target] = roles[role]
    notes = ()
    if wide == "w_c":
        notes = ("the gate kernel is saved as w_c and the candidate kernel as w_ru (as one contrib "
                 "version of GRUBlockCell named them): told apart by shape",)
    return CellScope(scope, "GRUBlockCell", mapped, notes)


# ----------------------------------------------------------------------------------------- cuDNN
def cudnn_opaque(names: Iterable[str], cells: Sequence[CellScope],
                 variables: Mapping[str, Variable]) -> tuple[list[str], list[str]]:
    """(opaque blobs with canonical copies beside them, notes). CudnnLSTM saves its 1-D
    `opaque_kernel` and the TF-canonical `cudnn_compatible_lstm_cell` tensors of the same weights."""
    duplicates, notes = [], []
    canonical = [c for c in cells if c.class_name == "CudnnCompatibleLSTMCell"]
    for name in names:
        if name.rsplit("/", 1)[-1] != "opaque_kernel" or len(variables[name].shape) != 1:
            continue
        owner = name.rpartition("/")[0]
        mine = [c for c in canonical if not owner or c.scope.startswith(owner + "/")]
        if mine:
            duplicates.append(name)
            notes.append(f"{name}: CudnnLSTM's opaque parameter buffer ({variables[name].shape[0]:,} values); "
                         f"the canonical copies saved beside it ({', '.join(c.scope for c in mine)}) are used "
                         "and the buffer is not counted again (not decoded)")
        else:
            notes.append(f"{name}: a cuDNN opaque parameter buffer without canonical copies beside it: "
                         "listed as a plain variable, not decoded into gates")
    return duplicates, notes
