"""The real model's attention and GELU fused (embeddings/fusion.py): the
embedder serves the rewritten graph, which answers as the shipped file does,
and falls back to the file when the rewrite would answer differently."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers.real_model import real_model_dir as model_dir
from tokenizers import Tokenizer

from memoryd.embeddings import FastEmbedEmbedder, fusion
from memoryd.embeddings.fastembed_local import MODEL_FILES

pytestmark = pytest.mark.slow

TEXTS = [
    "what does Ana like to drink",
    "Ana prefers green tea over coffee",
    "The team meeting moved to Tuesday, and the agenda now covers the budget for next year",
    "ok",
    "Water the plants on the balcony twice a week, unless it rained the day before",
]


def session(graph: str | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def file_vectors(texts: list[str]) -> np.ndarray:
    """Mean-pooled unit vectors from the shipped file, run as it is."""
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = session(str(model_dir() / "model.onnx")).run(None, feed)[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def embedder() -> Iterator[FastEmbedEmbedder]:
    loaded = FastEmbedEmbedder(model_dir(), threads=2)
    yield loaded
    asyncio.run(loaded.close())


def test_every_layer_is_rewritten_into_fused_operators() -> None:
    rewritten = fusion.fused(str(model_dir() / "model.onnx"), 12)
    assert rewritten is not None
    ops = [node.op_type for node in onnx.load_from_string(rewritten).graph.node]
    assert ops.count("MultiHeadAttention") == 6
    assert ops.count("BiasGelu") == 6
    assert "Softmax" not in ops and "Erf" not in ops
    assert len(ops) < len(onnx.load(str(model_dir() / "model.onnx")).graph.node) / 2


def test_the_embedder_serves_the_fused_graph_with_the_files_vectors(
    embedder: FastEmbedEmbedder,
) -> None:
    assert embedder._sessions is not None
    lone, batch = embedder._sessions
    # built from the rewritten bytes, not from the file
    assert lone._model_path is None and batch._model_path is None
    expected = file_vectors(TEXTS)
    alone = np.array([embedder.embed_sync([t])[0] for t in TEXTS])  # the one-thread session
    together = np.array(embedder.embed_sync(TEXTS))  # the batch session, padded
    for got in (alone, together):
        assert np.abs(got - expected).max() < 1e-5
        assert (got * expected).sum(1).min() > 0.99999


def test_a_rewrite_that_answers_differently_is_refused() -> None:
    original = session(str(model_dir() / "model.onnx"))
    right = fusion.fused(str(model_dir() / "model.onnx"), 12)
    wrong = fusion.fused(str(model_dir() / "model.onnx"), 6)  # heads of the wrong size
    assert right is not None and wrong is not None
    assert fusion.agrees(original, session(right))
    assert not fusion.agrees(original, session(wrong))


def test_a_graph_it_does_not_know_is_left_alone(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert fusion.fused(str(path), 12) is None


def test_the_embedder_runs_the_file_when_the_rewrite_disagrees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the same model, but its config claims 6 heads: the rewrite's attention
    # is then wrong, and the check before serving it catches that
    for name in MODEL_FILES:
        if name != "config.json":
            (tmp_path / name).symlink_to(model_dir() / name)
    config = json.loads((model_dir() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 6}))
    with caplog.at_level(logging.WARNING, logger="memoryd.embeddings"):
        plain = FastEmbedEmbedder(tmp_path, threads=1)
    try:
        assert "answers differently" in caplog.text
        assert plain._sessions is not None
        assert plain._sessions[0]._model_path is not None  # the file
        got = np.array(plain.embed_sync(TEXTS))
        assert np.abs(got - file_vectors(TEXTS)).max() < 1e-5
    finally:
        asyncio.run(plain.close())
