"""all-MiniLM-L6-v2 (or another fastembed model) run locally with onnxruntime."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from memoryd.domain.errors import Unavailable
from memoryd.embeddings import fusion
from memoryd.embeddings.batcher import MicroBatcher

log = logging.getLogger("memoryd.embeddings")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DIMENSION = 384
# Model calls of this many texts or fewer run on one inference thread.
LONE_MAX_TEXTS = 2
# What `make models` puts in the directory and fastembed reads from it.
MODEL_FILES = (
    "model.onnx",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
)


def check_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """`model_dir` as a Path; raises `ValueError` naming what is missing."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(
            f"the embedding model directory {str(path)!r} does not exist: "
            "run `make models` (or point the model directory setting at one it made)"
        )
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"the embedding model directory {str(path)!r} lacks {', '.join(missing)}: "
            "run `make models` to assemble it"
        )
    return path


class FastEmbedEmbedder:
    """A fastembed `TextEmbedding` loaded from a local directory, never the network.

    Contract:
    - The constructor loads the model (a fraction of a second; blocking, so
      call it at start-up) and raises `ValueError` when `model_dir` is missing
      or incomplete (the message says to run `make models`).
    - `embed` runs inference in one dedicated thread, never on the event loop,
      and answers unit-norm vectors of `dimension` floats. Calls that arrive
      while the model is busy are micro-batched into its next call (see
      `MicroBatcher`; `batch_wait_s` adds a gathering window when idle, and
      None turns batching off so that calls run one by one). One model call
      holds at most `max_batch_texts` texts and `max_batch_chars` characters
      (or one longer text), taken in turn from the `fairness_key`s waiting, so
      a large call cannot hold the model from other keys for more than one
      such call; a key with `max_queued_texts` texts waiting is refused more
      with `ResourceExhausted`. A cancelled call's remaining texts are dropped.

    Measured on a 2-core box (int8 model, threads=2): one short text takes
    ~3.8 ms; 4 concurrent single-text callers get ~1.4x the throughput and
    ~30% lower median latency with batching (no window) than without, while a
    2 ms window is slower than none (it only adds latency), hence the default
    `batch_wait_s=0.0`.
    - onnxruntime uses `threads` threads (intra- and inter-op) for a model
      call of more than `LONE_MAX_TEXTS` texts and one thread for a smaller
      one (a lone query: a second thread there costs a third more CPU and
      saves no time; see `_sessions`); texts are sorted by length into
      model batches of `model_batch_size` (2.5x faster on mixed lengths
      than padding short texts to long ones).
    - Inputs longer than 512 tokens are truncated (fastembed takes the limit
      from tokenizer_config.json; sentence-transformers would cut at 256).
    - After `close`, `embed` raises `Unavailable`.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        model_name: str = DEFAULT_MODEL,
        dimension: int = DEFAULT_DIMENSION,
        threads: int = 2,
        batch_wait_s: float | None = 0.0,
        max_batch_texts: int = 64,
        max_batch_chars: int = 16384,
        max_queued_texts: int = 4096,
        model_batch_size: int = 32,
    ) -> None:
        path = check_model_dir(model_dir)
        if threads < 1:
            raise ValueError(f"the embedding model needs threads >= 1, got {threads}")
        # Belt and braces: with `specific_model_path` fastembed does not ask the
        # hub, and this keeps huggingface_hub from trying should that change.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from fastembed import TextEmbedding  # heavy import: only when this provider is used

        self._model: Any = TextEmbedding(
            model_name=model_name,
            cache_dir=str(path),
            threads=threads,
            specific_model_path=str(path),
            local_files_only=True,
            providers=["CPUExecutionProvider"],
        )
        # The session for model calls of `LONE_MAX_TEXTS` texts or fewer, and
        # the one for larger batches (the same one when `threads` is 1).
        self._sessions = _sessions(self._model, threads)
        actual = int(self._model.embedding_size)
        if actual != dimension:
            raise ValueError(
                f"the model {model_name} makes {actual}-d vectors, "
                f"but the configured dimension is {dimension}"
            )
        self._model_name = model_name
        self._dimension = dimension
        self._model_batch_size = model_batch_size
        # One thread: model calls never overlap, so `threads` bounds the CPU use.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memoryd-embed")
        self._batcher = MicroBatcher(
            self._embed_sync,
            self._executor,
            max_wait_s=batch_wait_s or 0.0,
            max_texts=max_batch_texts if batch_wait_s is not None else 1,
            max_chars=max_batch_chars,
            max_queued_texts=max_queued_texts,
        )
        self._closed = False

    @property
    def model_id(self) -> str:
        return f"fastembed:{self._model_name}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """One unit-norm vector per text, in order."""
        if self._closed:
            raise Unavailable("the embedding model is shut down", reason="EMBEDDER_CLOSED")
        return await self._batcher.submit(texts, fairness_key)

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        """Blocking inference; texts are sorted by length so that a model batch
        pads little, then the vectors are put back in order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        if self._sessions is not None:
            # The server calls this from its one inference thread; a script's
            # concurrent `embed_sync` could only change which of the two
            # sessions, both answering the same vectors, runs a call.
            lone, batch = self._sessions
            self._model.model.model = lone if len(texts) <= LONE_MAX_TEXTS else batch
        sorted_vectors = self._model.embed(
            [texts[i] for i in order], batch_size=self._model_batch_size
        )
        vectors: list[list[float]] = [[] for _ in texts]
        for i, vector in zip(order, sorted_vectors, strict=True):
            vectors[i] = vector.tolist()
        return vectors

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """Blocking `embed` for scripts and benchmarks (not for the event loop)."""
        return self._embed_sync(list(texts))

    async def close(self) -> None:
        """Stops batching and releases the inference thread. Idempotent."""
        self._closed = True
        await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _sessions(model: Any, threads: int) -> tuple[Any, Any] | None:
    """Replaces the model's onnxruntime session with two built to our
    options: (one thread, `threads` threads), the same one twice when
    `threads` is 1. None (the session kept as fastembed built it, and a
    warning) if fastembed's internals ever differ.

    Why two: a small call gains nothing from a second intra-op thread, which
    only adds synchronisation. Measured on a 2-core box, int8 model, short
    texts, CPU per text / wall per call, one thread vs two: a lone text
    7.3-7.6 vs 9.8-10.3 ms / 7.5-7.7 vs 7.4-8.4 ms; 2 texts 6.5-6.8 vs
    8.6-9.0 / 13.4-14.5 vs 11.5-14.1 ms; 4 texts 5.7-5.9 vs 7.2-7.4 /
    23.9 vs 18.0-18.3 ms (so from there on, two threads).

    Both run the model with each layer's attention and GELU fused when
    that answers as the file does (`_fused`, embeddings/fusion.py).

    Both sessions have their thread pools' spinning turned off. By default
    onnxruntime keeps its intra-op worker threads busy-waiting between
    calls, which on a small box costs as much CPU as the inference itself
    (measured on 2 cores: 10 short texts every 20 ms cost 129 ms of CPU per
    call spinning, 74 ms not; a server's AddMessages loop did a third more
    work). fastembed exposes no option for it, hence our own sessions, with
    the same model and providers."""
    import onnxruntime as ort  # with fastembed only

    inner: Any = getattr(model, "model", None)
    session = getattr(inner, "model", None)
    path = getattr(session, "_model_path", None)
    if not isinstance(session, ort.InferenceSession) or not isinstance(path, str):
        log.warning("fastembed's onnxruntime session not found; its threads keep spinning")
        return None
    providers = session.get_providers()

    def build(n: int, graph: str | bytes) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = n
        options.inter_op_num_threads = n
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(graph, providers=providers, sess_options=options)

    # each layer's attention and GELU as fused operators, when it can be
    graph, lone = _fused(session, path, build) or (path, None)
    if lone is None:
        lone = build(1, graph)
    batch = lone if threads == 1 else build(threads, graph)
    inner.model = batch
    return lone, batch


def _fused(session: Any, path: str, build: Callable[[int, bytes], Any]) -> tuple[bytes, Any] | None:
    """The model at `path` rewritten with fused attention and GELU
    (embeddings/fusion.py) and a one-thread session of it, when the graph is
    the export that rewrite knows and the session answers as `session` (the
    file's) does; else None, and the file runs as it is."""
    try:
        rewritten = fusion.fused(path, _attention_heads(Path(path).parent))
        if rewritten is None:
            return None
        candidate = build(1, rewritten)
        if fusion.agrees(session, candidate):
            return rewritten, candidate
        log.warning("the fused embedding model answers differently; running it unfused")
    except Exception:  # an unexpected graph, an onnxruntime without the operators
        log.warning("the embedding model could not be fused; running it unfused", exc_info=True)
    return None


def _attention_heads(model_dir: Path) -> int:
    """The model's attention heads, from its config.json (12 for MiniLM)."""
    try:
        return int(json.loads((model_dir / "config.json").read_text())["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return 12
