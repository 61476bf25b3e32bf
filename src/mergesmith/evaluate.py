"""Measuring what a merge did, on real text: perplexity, divergence from a base, per-layer profiles,
greedy completions, plots. Needs transformers (and matplotlib for plots): `pip install mergesmith[eval]`.

The per-layer profile records, after every decoder layer, the mean L2 norm of the residual stream
and the layer's update relative to its input (||h_out - h_in|| / ||h_in||). The logit-lens KL reads
every layer's residual stream through the model's final norm and head, and measures how far that
prediction is from the base model's final one: where along the depth the model arrives at the
base's answer, or how far it ends up from it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mergesmith.errors import MergesmithError

SAMPLE_TEXT = "sample-english.txt"  # the Declaration of Independence and the Gettysburg Address
PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three prime numbers.",
)


@dataclass(frozen=True)
class Perplexity:
    tokens: int
    mean_nll: float  # nats per predicted token

    @property
    def value(self) -> float:
        return math.exp(self.mean_nll)


@dataclass(frozen=True)
class Profile:
    residual_norm: tuple[float, ...]  # after each layer, mean over tokens
    update_ratio: tuple[float, ...]  # ||out - in|| / ||in|| of each layer, mean over tokens


@dataclass(frozen=True)
class ModelReport:
    name: str
    perplexity: float
    tokens: int
    profile: Profile
    completions: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    model: ModelReport
    base: ModelReport | None = None
    kl_mean: float | None = None  # mean over tokens of KL(base || model), nats
    top1_agreement: float | None = None  # share of tokens where both predict the same next token
    logit_lens_kl: tuple[float, ...] = ()  # per model layer: KL(base final || model layer read-out)
    prompts: tuple[str, ...] = field(default=PROMPTS)


def sample_text() -> str:
    """A few thousand tokens of public-domain English prose, shipped with mergesmith."""
    return resources.files("mergesmith.data").joinpath(SAMPLE_TEXT).read_text(encoding="utf-8")


def perplexity(
    model_dir: str | os.PathLike[str], text: str, *, max_tokens: int = 2048, dtype: str = "bfloat16"
) -> Perplexity:
    """Perplexity of a causal LM folder on the first `max_tokens` tokens of `text` (no BOS added).

    Example:
        >>> perplexity("merged", Path("gpl-3.txt").read_text()).value
    """
    torch, _ = _imports()
    loaded = _Loaded(model_dir, dtype)
    ids = loaded.encode(text, max_tokens)
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, :-1].float()
    return Perplexity(ids.shape[1] - 1, torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def evaluate(
    model_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    text: str | None = None,
    max_tokens: int = 2048,
    lens_tokens: int = 256,
) -> Evaluation:
    """Measure a model, and compare it with a base when one is given.

    Example:
        >>> result = evaluate("merged", base_dir="original")
        >>> result.kl_mean, result.model.perplexity
    """
    torch, _ = _imports()
    text = text if text is not None else sample_text()
    model = _Loaded(model_dir, None)
    ids = model.encode(text, max_tokens)
    model_logits, model_report = model.measure(ids)
    if base_dir is None:
        return Evaluation(model_report)
    base = _Loaded(base_dir, None)
    base_logits, base_report = base.measure(ids)
    base_logp = torch.log_softmax(base_logits, dim=-1)  # (T, V)
    model_logp = torch.log_softmax(model_logits, dim=-1)
    kl = _kl(base_logp, model_logp)
    agree = (base_logits.argmax(-1) == model_logits.argmax(-1)).float().mean().item()
    lens = model.logit_lens(ids[:, :lens_tokens], base_logp[: lens_tokens - 1])
    del base, model
    return Evaluation(model_report, base_report, kl.mean().item(), agree, lens)


def _kl(p_log: Any, q_log: Any) -> Any:
    """KL(P || Q) per row, from log-probabilities (T, V) -> (T,)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0)


def _imports():
    try:
        import torch
        import transformers
    except ImportError as err:
        raise MergesmithError("measuring a model needs transformers", hint="pip install 'mergesmith[eval]'") from err
    return torch, transformers


def _with_adapter(model: Any, adapter: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as err:
        raise MergesmithError(
            f"measuring a model with the adapter {adapter!r} needs PEFT", hint="pip install peft"
        ) from err
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


class _Loaded:
    """A causal LM with hooks on its decoder layers."""

    def __init__(self, folder: str | os.PathLike[str], dtype: str | None) -> None:
        torch, transformers = _imports()
        self.name = str(folder)
        # CPUs without bf16 units run a float32 forward pass about 4x faster than a bf16 one.
        dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
        base, _, adapter = str(folder).partition("+") if not os.path.isdir(folder) else (str(folder), "", "")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(base)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
            if adapter:  # base+adapter: the adapter applied, as a merge with that reference would
                self.model = _with_adapter(self.model, adapter)
            if torch.cuda.is_available():
                self.model.to("cuda")
        except (OSError, ValueError) as err:
            raise MergesmithError(f"{folder}: cannot load the model ({err})") from None
        self.model.eval()
        self.layers = _decoder_layers(self.model)

    def encode(self, text: str, max_tokens: int) -> Any:
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_tokens]
        if ids.shape[1] < 2:
            raise MergesmithError("the text is shorter than two tokens")
        return ids.to(self.model.device)

    def measure(self, ids: Any) -> tuple[Any, ModelReport]:
        torch, _ = _imports()
        norms: list[float] = []
        ratios: list[float] = []

        def record(module: Any, args: tuple, output: Any) -> None:
            before = args[0] if args else None
            after = output[0] if isinstance(output, tuple) else output
            after = after.float()
            norms.append(after.norm(dim=-1).mean().item())
            if before is not None:
                before = before.float()
                ratios.append(((after - before).norm(dim=-1) / before.norm(dim=-1).clamp(min=1e-6)).mean().item())

        handles = [layer.register_forward_hook(record) for layer in self.layers]
        try:
            with torch.no_grad():
                logits = self.model(ids).logits[0, :-1].float()  # (T-1, V)
        finally:
            for handle in handles:
                handle.remove()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
        report = ModelReport(
            self.name, math.exp(nll), ids.shape[1] - 1, Profile(tuple(norms), tuple(ratios)), self.complete(PROMPTS)
        )
        return logits, report

    def logit_lens(self, ids: Any, reference_logp: Any) -> tuple[float, ...]:
        """Per layer: mean KL(reference || this layer's residual stream read through norm and head)."""
        torch, _ = _imports()
        norm, head = _final_norm(self.model), self.model.get_output_embeddings()
        values: list[float] = []

        def read_out(module: Any, args: tuple, output: Any) -> None:
            hidden = (output[0] if isinstance(output, tuple) else output)[0, :-1]  # (T-1, H)
            logp = torch.log_softmax(head(norm(hidden)).float(), dim=-1)
            values.append(_kl(reference_logp, logp).mean().item())

        handles = [layer.register_forward_hook(read_out) for layer in self.layers]
        try:
            with torch.no_grad():
                self.model(ids)
        finally:
            for handle in handles:
                handle.remove()
        return tuple(values)

    def complete(self, prompts: tuple[str, ...], new_tokens: int = 24) -> tuple[str, ...]:
        torch, _ = _imports()
        answers = []
        for prompt in prompts:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
            else:
                text = prompt
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(self.model.device)
            with torch.no_grad():
                out = self.model.generate(
                    ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=self.tokenizer.eos_token_id
                )
            answers.append(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
        return tuple(answers)


def _decoder_layers(model: Any) -> Any:
    """The ModuleList of decoder layers, whatever the architecture calls it."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise MergesmithError(f"cannot find the {count} decoder layers of {type(model).__name__}")


def _final_norm(model: Any) -> Any:
    base = getattr(model, model.base_model_prefix, model)
    for name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise MergesmithError(f"cannot find the final norm of {type(model).__name__}")


def read_texts(paths: list[Path]) -> str:
    """The user's texts, joined; a missing file is a clear error."""
    parts = []
    for path in paths:
        try:
            parts.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise MergesmithError(f"--text {path}: cannot read ({err})") from None
    return "\n\n".join(parts)
