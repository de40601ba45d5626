"""Elementwise operators and activations: one TFLite kernel per ONNX operator where there is one,
short chains where there is not (HardSigmoid), and PyTorch's Erf spelling of GELU fused into one.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from ._graph import (
    Graph,
    Unsupported,
    Value,
    scalar,
)

#: ONNX operators that are one TFLite operator on each element, float32 in and out.
ELEMENTWISE: Final = {
    "Abs": "ABS",
    "Ceil": "CEIL",
    "Cos": "COS",
    "Exp": "EXP",
    "Floor": "FLOOR",
    "HardSwish": "HARD_SWISH",
    "Log": "LOG",
    "Neg": "NEG",
    "Relu": "RELU",
    "Sigmoid": "LOGISTIC",
    "Sin": "SIN",
    "Sqrt": "SQRT",
    "Tanh": "TANH",
}


class ArithmeticOps(Graph):
    """Activations and elementwise arithmetic (ONNX broadcasting)."""

    def elementwise(self, node: Any, attrs: dict[str, Any]) -> None:
        self.unary(node, ELEMENTWISE[node.op_type])

    def _op_Elu(self, node: Any, attrs: dict[str, Any]) -> None:
        if float(attrs.get("alpha", 1.0)) != 1.0:
            raise Unsupported(f"Elu {node.name!r} with alpha != 1 (TFLite's ELU has alpha 1)")
        self.unary(node, "ELU")

    def _op_Gelu(self, node: Any, attrs: dict[str, Any]) -> None:
        approximate = attrs.get("approximate", "none") == "tanh"
        self.unary(node, "GELU", "GeluOptions", approximate=approximate)

    def _op_Erf(self, node: Any, attrs: dict[str, Any]) -> None:
        raise Unsupported(
            f"operator Erf (node {node.name!r}) is supported only within an exact GELU (x / "
            "sqrt(2) -> Erf -> + 1 -> * x -> * 0.5, which becomes TFLite's GELU)"
        )

    def gelu(self, x: str, output: str, name: str) -> None:
        """The exact (erf) GELU of ``x`` as ``output``: what the fused Erf chain computes."""
        from onnx import helper

        self._op_Gelu(helper.make_node("Gelu", [x], [output], name=name), {})

    def _op_HardSigmoid(self, node: Any, attrs: dict[str, Any]) -> None:
        # max(0, min(1, alpha * x + beta)): TFLite has no such operator, so MUL, ADD and a clamp.
        self.float_only(node)
        value = self.values[node.input[0]]
        name = node.output[0]
        steps = [("MUL", "alpha", attrs.get("alpha", 0.2)), ("ADD", "beta", attrs.get("beta", 0.5))]
        source = self.physical(node.input[0], value.perm)
        for op, label, operand in steps:
            out = self.scratch(f"{name}/{label}", value)
            factor = self.writer.constant(f"{name}/{label}/value", scalar(operand, value))
            self.writer.op(
                op, [source, factor], [out], f"{op.title()}Options", fusedActivationFunction=0
            )
            source = out
        self.clamp(name, source, value, 0.0, 1.0)

    def _op_Pow(self, node: Any, attrs: dict[str, Any]) -> None:
        exponent = self.values[node.input[1]].const
        same_shape = self.values[node.input[0]].shape == self.info(node.output[0])[0]
        if exponent is not None and exponent.size == 1 and same_shape:
            # What exporters write for x**2 and x**0.5: the kernels that compute exactly that.
            power = float(exponent.reshape(-1)[0])
            if power == 1.0:
                self.values[node.output[0]] = self.values[node.input[0]]
                return
            if power in (0.5, 2.0):
                self.unary(node, "SQRT" if power == 0.5 else "SQUARE")
                return
        names = list(node.input)
        if exponent is not None and exponent.dtype != np.float32:
            # ONNX allows an integer exponent; TFLite's POW takes one type.
            exact = exponent.astype(np.float32)
            if not np.array_equal(exact, exponent):
                raise Unsupported(f"Pow {node.name!r} has an exponent float32 cannot hold")
            names[1] = self.fresh(f"{names[1]}/float32")
            self.values[names[1]] = Value(exact.shape, exact.dtype, const=exact)
        if any(self.values[n].dtype != np.float32 for n in names):
            raise Unsupported(f"Pow {node.name!r} on non-float32 tensors is not supported")
        self.binary(names, node.output[0], "POW", "PowOptions", fused=False)

    def _op_Reciprocal(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        one = self.fresh(f"{node.output[0]}/one")
        self.values[one] = Value((), np.dtype(np.float32), const=np.ones((), np.float32))
        self.binary([one, node.input[0]], node.output[0], "DIV", "DivOptions")

    def _op_Softplus(self, node: Any, attrs: dict[str, Any]) -> None:
        # log(1 + exp(x)) overflows from x = 89 on: computed as relu(x) + log(1 + exp(-|x|)).
        self.float_only(node)
        value = self.values[node.input[0]]
        name = node.output[0]

        def step(label: str, op: str, *inputs: int) -> int:
            out = self.scratch(f"{name}/{label}", value)
            fields: dict[str, object] = {"fusedActivationFunction": 0} if op == "ADD" else {}
            self.writer.op(op, inputs, [out], "AddOptions" if fields else None, **fields)
            return out

        x = self.physical(node.input[0], value.perm)
        tail = step("exp", "EXP", step("neg", "NEG", step("abs", "ABS", x)))
        one = self.writer.constant(f"{name}/one", scalar(1.0, value))
        log = step("log", "LOG", step("plus1", "ADD", tail, one))
        out, _ = self.new(name, value.perm, nonneg=True)
        self.writer.op(
            "ADD", [step("relu", "RELU", x), log], [out], "AddOptions", fusedActivationFunction=0
        )

    def _op_Max(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "MAXIMUM", "MaximumMinimumOptions")

    def _op_Min(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "MINIMUM", "MaximumMinimumOptions")

    def _op_LeakyRelu(self, node: Any, attrs: dict[str, Any]) -> None:
        self.unary(node, "LEAKY_RELU", "LeakyReluOptions", alpha=float(attrs.get("alpha", 0.01)))

    def _op_Clip(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        if self.opset >= 11:  # bounds became optional inputs in opset 11
            names = [*node.input[1:3], "", ""][:2]
            low, high = (
                float(self.const(n, "Clip bound").reshape(())) if n else None for n in names
            )
        else:
            low, high = attrs.get("min"), attrs.get("max")
        low = -math.inf if low is None else float(low)
        high = math.inf if high is None else float(high)
        named = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, math.inf): "RELU"}
        if (low, high) in named:
            self.unary(node, named[(low, high)])
            return
        value = self.values[node.input[0]]
        if low == -math.inf and high == math.inf:
            self.values[node.output[0]] = value
            return
        self.clamp(node.output[0], self.physical(node.input[0], value.perm), value, low, high)

    def clamp(self, name: str, source: int, value: Value, low: float, high: float) -> None:
        """``name = min(max(source, low), high)``, as ONNX's Clip defines it (so low > high gives
        high everywhere); an infinite bound is skipped. ``source`` is stored like ``value``."""
        steps = [(op, b) for op, b in (("MAXIMUM", low), ("MINIMUM", high)) if math.isfinite(b)]
        for index, (op, bound) in enumerate(steps):
            if index == len(steps) - 1:
                out, _ = self.new(name, value.perm, nonneg=low >= 0 and high >= 0)
            else:
                out = self.scratch(f"{name}/{op.lower()}", value)
            limit = self.writer.constant(f"{name}/{op.lower()}/bound", scalar(bound, value))
            self.writer.op(op, [source, limit], [out], "MaximumMinimumOptions")
            source = out

    def _op_Add(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node.input, node.output[0], "ADD", "AddOptions")

    def _op_Mul(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node.input, node.output[0], "MUL", "MulOptions")

    def _op_Sub(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        self.binary(node.input, node.output[0], "SUB", "SubOptions")

    def _op_Div(self, node: Any, attrs: dict[str, Any]) -> None:
        # Integer Div truncates in ONNX; TFLite's integer DIV does not promise that: floats only.
        self.float_only(node)
        self.binary(node.input, node.output[0], "DIV", "DivOptions")

    def _op_Sum(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "ADD", "AddOptions")

    def variadic(self, node: Any, op: str, options: str) -> None:
        """Sum, Max or Min of any number of inputs: a chain of the binary ``op``."""
        names = list(node.input)
        output = node.output[0]
        if len(names) == 1:
            self.values[output] = self.values[names[0]]
            return
        if len(names) > 2 and any(
            self.values[n].shape != self.info(output)[0] or self.values[n].const is not None
            for n in names
        ):
            raise Unsupported(
                f"{node.op_type} {node.name!r} of more than two inputs is supported only for "
                "tensors of one shape (no broadcasting, no constants)"
            )
        # Left to right, as onnxruntime computes; partial results have the output's shape.
        total = names[0]
        for index, name in enumerate(names[1:], start=1):
            step = (
                output if index == len(names) - 1 else self.fresh(f"{output}/{op.lower()}{index}")
            )
            self.infos[step] = self.info(output)
            self.binary([total, name], step, op, options, fused=op == "ADD")
            total = step

    def _op_PRelu(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        slope = self.const(node.input[1], "PRelu slope").astype(np.float32)
        source = self.physical(node.input[0], value.perm)
        alpha = self.broadcast_const(f"{node.output[0]}/alpha", slope, value)
        out, _ = self.new(node.output[0], value.perm)
        self.writer.op("PRELU", [source, alpha], [out])


def erf_gelus(graph: Any) -> dict[str, tuple[str, str, set[str]]]:
    """The exact GELUs that exporters spell out with Erf (PyTorch's ``nn.GELU()`` before ONNX had
    a Gelu operator): ``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5``, each operand in
    either order, each intermediate used only by the next node. TFLite has no Erf, but a GELU.

    Returns, by the name of the chain's first node: ``x``, the chain's output, and the names of
    the other nodes (fused into the GELU).
    """
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    uses: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def sole_use(name: str, op: str) -> Any:
        found = uses.get(name, [])
        if name in outputs or len(found) != 1 or found[0].op_type != op:
            return None
        return found[0]

    def is_constant(name: str, value: float) -> bool:
        constant = constants.get(name)
        return (
            constant is not None
            and constant.size == 1
            and abs(float(constant.reshape(-1)[0]) - value) <= 1e-6 * abs(value)
        )

    def other_operand(node: Any, value: float) -> str | None:
        """The operand of the commutative ``node`` whose partner is the constant ``value``."""
        a, b = node.input
        return b if is_constant(a, value) else a if is_constant(b, value) else None

    found: dict[str, tuple[str, str, set[str]]] = {}
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        scale = producer.get(erf.input[0])
        if scale is None or sole_use(scale.output[0], "Erf") is None:
            continue
        if scale.op_type == "Div":
            x = scale.input[0] if is_constant(scale.input[1], math.sqrt(2)) else None
        else:
            x = other_operand(scale, math.sqrt(0.5)) if scale.op_type == "Mul" else None
        add = sole_use(erf.output[0], "Add")
        times_x = sole_use(add.output[0], "Mul") if add is not None else None
        half = sole_use(times_x.output[0], "Mul") if times_x is not None else None
        if x is None or add is None or times_x is None or half is None:
            continue
        if (
            other_operand(add, 1.0) != erf.output[0]
            or set(times_x.input) != {x, add.output[0]}
            or other_operand(half, 0.5) != times_x.output[0]
        ):
            continue
        found[scale.name] = (x, half.output[0], {erf.name, add.name, times_x.name, half.name})
    return found
