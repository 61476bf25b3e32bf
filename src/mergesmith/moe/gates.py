"""Router weights of an MoE built from dense models, one vector per expert and layer, as
mergekit-moe documents its gate modes:

- `hidden`: the base model run on each expert's prompts (each after the BOS token); per layer, the
  hidden state entering that layer at the prompt's last token, averaged over the prompts; the
  negative prompts' average subtracted; scaled to unit length. Needs transformers (the `eval`
  extra). mergekit-moe runs the prompts as one right-padded batch, so for a prompt shorter than
  the longest it takes a padding position's state; mergesmith runs each prompt alone.
- `cheap_embed`: from token embeddings only, equal for every layer (no model run): the sum of the
  embeddings of every token of the prompts (each after the BOS token), scaled to unit length; the
  negative prompts' vector subtracted and the result scaled to unit length again.
- `random`: standard normal values; `uniform_random`: U(-1/sqrt(hidden), 1/sqrt(hidden)), as
  torch initialises a linear layer. Seeded: the same seed, the same router.
"""

from __future__ import annotations

from typing import Any

from mergesmith.checkpoints.checkpoint import Checkpoint
from mergesmith.dtypes import tensor_from_bytes
from mergesmith.errors import MergesmithError, RecipeError
from mergesmith.moe.config import Expert


def router_vectors(
    mode: str, experts: list[Expert], base: Checkpoint, layers: int, hidden: int, *, seed: int, what: str = "experts"
):
    """(experts, layers, hidden) float32: each expert's router row at each layer."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (len(experts), layers, hidden)
    if mode == "random":
        return torch.randn(shape, generator=generator)
    if mode == "uniform_random":
        bound = 1 / hidden**0.5
        return torch.rand(shape, generator=generator) * 2 * bound - bound
    for i, expert in enumerate(experts):
        if not expert.positive_prompts:
            raise RecipeError(
                f"{what}[{i}] ({expert.source_model}): gate_mode {mode} needs positive_prompts",
                hint="give each expert prompts of what it should receive, or gate_mode: random",
            )
    tokenizer = _tokenizer(base, mode)
    average = (
        _hidden_average(base, tokenizer, layers) if mode == "hidden" else _embedding_average(base, tokenizer, layers)
    )
    vectors = []
    for expert in experts:
        vector = average(expert.positive_prompts)
        if expert.negative_prompts:
            vector = vector - average(expert.negative_prompts)
        vectors.append(_unit(vector))
    return torch.stack(vectors)


def _tokenizer(base: Checkpoint, mode: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise MergesmithError(
            f"gate_mode {mode} tokenizes the experts' prompts, which needs transformers",
            hint="pip install 'mergesmith[eval]', or use gate_mode: random or uniform_random",
        ) from None
    return transformers.AutoTokenizer.from_pretrained(base.folder)


def _unit(vector):
    return vector / vector.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer((tokenizer.bos_token or "") + prompt, add_special_tokens=False).input_ids
    if not ids:
        raise RecipeError(f"prompt {prompt!r} has no tokens")
    return ids


def _embedding_average(base: Checkpoint, tokenizer: Any, layers: int):
    import torch

    name = next(n for n in base.weight_map if n.endswith("embed_tokens.weight"))
    info = base.tensor_info(name)
    embeddings = tensor_from_bytes(base.read_bytes(name), info.dtype).reshape(info.shape).float()

    def average(prompts: list[str]):
        total = torch.stack([embeddings[_ids(tokenizer, p)].sum(0) for p in prompts]).sum(0)  # (hidden,)
        return _unit(total).expand(layers, -1)  # (layers, hidden): the same at every layer

    return average


def _hidden_average(base: Checkpoint, tokenizer: Any, layers: int):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32).eval()

    def average(prompts: list[str]):
        states = []
        with torch.no_grad():
            for prompt in prompts:
                output = model(torch.tensor([_ids(tokenizer, prompt)]), output_hidden_states=True)
                # hidden_states[i] enters layer i (the last one is the final norm's input): (layers, hidden)
                states.append(torch.stack(output.hidden_states[:layers])[:, 0, -1, :].float())
        return torch.stack(states).mean(0)

    return average
