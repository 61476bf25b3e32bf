"""TIES and SLERP on real weights: SmolLM2-135M-Instruct and two short CPU fine-tunes of it.

    python benchmarks/real_merges.py [--workdir DIR] [--steps 12]

The fine-tunes train a few AdamW steps on two different licence texts (Apache-2.0, MPL-2.0 from
/usr/share/common-licenses), so each has a real task vector. The merges are then measured, with
the inputs, by perplexity on the first 2,048 tokens of the GPL-3 text (../shared/fixtures), and on
each fine-tune's own text.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from mergesmith.api import merge  # noqa: E402
from mergesmith.evaluate import perplexity  # noqa: E402
from mergesmith.execute import MergeOptions  # noqa: E402
from real_model import build_smollm2  # noqa: E402

TEXTS = {"apache": Path("/usr/share/common-licenses/Apache-2.0"), "mpl": Path("/usr/share/common-licenses/MPL-2.0")}
GPL3 = HERE.parent.parent / "shared" / "fixtures" / "gpl-3.txt"

RECIPES = {
    "ties": """models:
  - {model: ft-apache, parameters: {weight: 1.0, density: 0.5}}
  - {model: ft-mpl, parameters: {weight: 1.0, density: 0.5}}
base_model: smollm2
merge_method: ties
dtype: float32
out_dtype: bfloat16
""",
    "slerp": """models:
  - model: ft-apache
  - model: ft-mpl
base_model: ft-apache
merge_method: slerp
parameters: {t: 0.5}
""",
}


def fine_tune(base: Path, text: str, out: Path, steps: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.train()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    for step in range(steps):
        start = (step * 256) % max(1, ids.numel() - 257)
        batch = ids[start : start + 257].unsqueeze(0)
        loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mergesmith-real-"))
    smol = build_smollm2(work / "cache")
    texts = {name: path.read_text() for name, path in TEXTS.items()}
    models = {"smollm2": smol}
    for name, text in texts.items():
        models[f"ft-{name}"] = fine_tune(smol, text, work / f"ft-{name}", args.steps)
    for name, recipe in RECIPES.items():
        (work / f"{name}.yaml").write_text(recipe)
        merge(work / f"{name}.yaml", work / name, model_paths=models, options=MergeOptions(overwrite=True))
        models[name] = work / name
    eval_texts = {"GPL-3 (2,048 tokens)": GPL3.read_text(), **{f"{n} text": t for n, t in texts.items()}}
    print("| model | " + " | ".join(eval_texts) + " |")
    print("| --- |" + " ---: |" * len(eval_texts))
    for name, folder in models.items():
        values = [perplexity(folder, text).value for text in eval_texts.values()]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
