"""The default model's attention and GELU as onnxruntime's fused operators.

The shipped all-MiniLM-L6-v2 export spells each encoder layer's attention
out in ~35 small nodes (reshapes, transposes, a mask built from the
attention mask, scaling, softmax, a NaN guard) and its GELU in five
(Div, Erf, Add, Mul, Mul); onnxruntime's own graph optimizer fuses neither
(its BERT patterns do not match this export). `fused` rewrites each layer's
attention into one `com.microsoft.MultiHeadAttention` over the projected
query, key and value, and its GELU into one `com.microsoft.BiasGelu`, then
drops the nodes nothing needs any more: 385 nodes become 187, and a
one-query inference costs ~6% less CPU, with the same weights and fp32
arithmetic (vectors agree to ~1e-7; docs/performance.md).

The rewrite recognises the export by its tensor names
(`inner.encoder.layer.N.attention.self.query.bias` and so on); another
model gets None and runs as it is. `FastEmbedEmbedder` also checks the
rewritten model's answers against the original's before using it
(`agrees`), so a graph that only looks alike is never served.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MS = "com.microsoft"
_KEY_MASK = "memoryd_key_mask"
# What the GELU between a layer's two feed-forward MatMuls is made of in the
# export: x * 0.5 * (1 + erf(x / sqrt(2))).
_GELU_OPS = ["Div", "Erf", "Add", "Mul", "Mul"]
# How closely the rewritten model must answer the original (the largest
# difference of one hidden-state value; the rewrite's is ~1e-6).
AGREEMENT = 1e-4


def fused(model_path: str, num_heads: int) -> bytes | None:
    """The model at `model_path` with every encoder layer's attention and
    GELU fused (see the module), serialized; None when the graph is not
    the export this knows, or `onnx` is not installed."""
    try:
        import onnx  # memoryd's dependency, only for this
        from onnx import TensorProto, helper
    except ImportError:  # pragma: no cover - a dependency of ours
        return None
    model = onnx.load(model_path)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    bias_add = {
        node.input[1]: node for node in graph.node if node.op_type == "Add" and len(node.input) == 2
    }
    replacement: dict[str, Any] = {}
    layer = 0
    while f"inner.encoder.layer.{layer}.attention.self.query.bias" in bias_add:
        p = f"inner.encoder.layer.{layer}."
        names = [
            p + "attention.self.query.bias",
            p + "attention.self.key.bias",
            p + "attention.self.value.bias",
            p + "attention.output.dense.bias",
            p + "intermediate.dense.bias",
            p + "output.dense.bias",
        ]
        if not all(name in bias_add for name in names):
            return None
        q, k, v = (bias_add[name].output[0] for name in names[:3])
        # the attention's output is what the output projection multiplies
        attention_out = _matmul_input(producer, bias_add[names[3]])
        # the GELU's output is what the second feed-forward MatMul multiplies
        gelu_in = bias_add[names[4]]
        gelu_out = _matmul_input(producer, bias_add[names[5]])
        if attention_out is None or gelu_out is None:
            return None
        if _chain(producer, gelu_out, gelu_in.output[0]) != _GELU_OPS[::-1]:
            return None
        replacement[attention_out] = helper.make_node(
            "MultiHeadAttention",
            [q, k, v, "", _KEY_MASK],
            [attention_out],
            domain=_MS,
            num_heads=num_heads,
            name=f"memoryd_attention_{layer}",
        )
        replacement[gelu_out] = helper.make_node(
            "BiasGelu",
            [gelu_in.input[0], gelu_in.input[1]],
            [gelu_out],
            domain=_MS,
            name=f"memoryd_gelu_{layer}",
        )
        layer += 1
    if not layer or "attention_mask" not in {i.name for i in graph.input}:
        return None
    mask = helper.make_node(
        "Cast", ["attention_mask"], [_KEY_MASK], to=TensorProto.INT32, name=_KEY_MASK
    )
    nodes = [mask, *(replacement.get(node.output[0], node) for node in graph.node)]
    # keep what the outputs need, in the original order
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    if not any(op.domain == _MS for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS, 1))
    data: bytes = model.SerializeToString()
    return data


def _matmul_input(producer: dict[str, Any], bias_add: Any) -> str | None:
    """The activation a bias Add's MatMul multiplies (its first input)."""
    matmul = producer.get(bias_add.input[0])
    return None if matmul is None or matmul.op_type != "MatMul" else str(matmul.input[0])


def _chain(producer: dict[str, Any], end: str, start: str, limit: int = 8) -> list[str]:
    """The op types from `end` back to `start` along each node's producers
    (any input that is not a constant), at most `limit` nodes."""
    ops: list[str] = []
    frontier = [end]
    seen: set[str] = set()
    while frontier and len(ops) <= limit:
        name = frontier.pop()
        node = producer.get(name)
        if name == start or node is None or node.name in seen:
            continue
        seen.add(node.name)
        ops.append(node.op_type)
        frontier.extend(node.input)
    return ops


def agrees(original: Any, rewritten: Any) -> bool:
    """Whether two onnxruntime sessions of the model answer alike (within
    `AGREEMENT`) on a padded batch of two token sequences."""
    ids = np.array([[101, 7592, 2088, 2003, 102, 0, 0], [101, 2129, 2079, 2017, 2131, 2045, 102]])
    mask = (ids != 0).astype(np.int64)
    names = {i.name for i in original.get_inputs()}
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    feed = {name: value for name, value in feed.items() if name in names}
    a = original.run(None, feed)[0]
    b = rewritten.run(None, feed)[0]
    if a.shape != b.shape:
        return False
    # padded positions carry no meaning: compare the real tokens only
    return bool(np.abs((a - b) * mask[..., None]).max() <= AGREEMENT)
