"""The model card (README.md) of a merged model, in the format mergekit's cards use."""

from __future__ import annotations

import yaml

from mergesmith.plan import Plan

PROJECT_URL = "https://github.com/mergesmith/mergesmith"


def model_card(plan: Plan, *, random_seed: int | None = None) -> str:
    """Front matter (base_model: hub ids only), then Merge Details and the recipe verbatim."""
    front = {"base_model": list(plan.hub_ids), "library_name": "transformers", "tags": ["merge", "mergesmith"]}
    if not plan.hub_ids:
        del front["base_model"]
    models = "\n".join(f"* {_model_link(m, m in plan.hub_ids)}" for m in plan.models)
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n"
        "# merge\n\n"
        f"This is a merge of pre-trained language models created using [mergesmith]({PROJECT_URL}).\n\n"
        "## Merge Details\n"
        "### Merge Method\n\n"
        f"This model was {plan.method_line or 'merged using the ' + _method_line(plan)}.\n\n"
        + (
            f"The method draws random numbers; they came from `--random-seed {random_seed}`.\n\n"
            if random_seed is not None
            else ""
        )
        + "### Models Merged\n\n"
        f"The following models were included in the merge:\n{models}\n\n"
        "### Configuration\n\n"
        "The following YAML configuration was used to produce this model:\n\n"
        f"```yaml\n{plan.recipe_text.rstrip()}\n```\n"
    )


def _method_line(plan: Plan) -> str:
    from mergesmith.methods import get_method

    spec = get_method(plan.method)[0]
    name = f"[{spec.pretty_name or spec.name}]({spec.reference})" if spec.reference else spec.pretty_name or spec.name
    line = f"{name} merge method"
    if spec.inputs.uses_base and plan.base_model:
        line += f" using {_model_link(plan.base_model, plan.base_model in plan.hub_ids)} as a base"
    return line


def _model_link(reference: str, is_hub_id: bool) -> str:
    if not is_hub_id:
        return reference
    repo_id = reference.rpartition("@")[0] if "@" in reference else reference
    return f"[{reference}](https://huggingface.co/{repo_id})"
