"""`mergesmith evolve`: CMA-ES (the `cma` package) over a genome's parameters, each candidate
merged in memory and scored (search/fitness.py), a generation's candidates in parallel on Ray
actors (a local instance, or a cluster), or in this process with `workers=0`.

The search state (the CMA-ES object, numpy's random state that it draws from, every evaluation) is
saved in STORAGE/state.pkl after each generation, so a killed search resumes at the generation it
was in and ends where an uninterrupted one ends: the draws are seeded, and every candidate is
scored with one torch thread (a sum split across threads rounds differently).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergesmith.errors import MergesmithError, RecipeError
from mergesmith.search.genome import EvolveConfig, Genome

log = logging.getLogger(__name__)

STATE = "state.pkl"
BEST_RECIPE = "best.yaml"
EVALUATIONS = "evaluations.jsonl"


@dataclass
class SearchState:
    genome_digest: str
    es: Any  # cma.CMAEvolutionStrategy
    random_state: Any  # numpy.random.get_state(): what es draws candidates from
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # generation, genotype, fitness, terms
    generation: int = 0

    @property
    def best(self) -> dict[str, Any]:
        return max(self.evaluations, key=lambda e: e["fitness"])


@dataclass(frozen=True)
class SearchSettings:
    max_evaluations: int = 100
    population: int | None = None  # cma's default: 4 + 3 ln(dimensions)
    sigma: float = 0.2
    seed: int = 1
    workers: int = 2  # Ray actors; 0 scores in this process
    ray_address: str | None = None


def run_search(
    config: EvolveConfig,
    source_text: str,
    genome: Genome,
    storage: Path,
    settings: SearchSettings,
    make_scorer: Callable[[], Any],
    to_loaded: Callable[[dict[str, Any]], Any],
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Search until `settings.max_evaluations`, resuming from STORAGE's saved state if it holds one
    of the same genome and settings. `make_scorer()` builds a Scorer (in each worker); `to_loaded`
    turns a recipe dict into a LoadedRecipe."""
    try:
        import cma
    except ImportError:
        hint = "pip install 'mergesmith[search]'"
        raise MergesmithError("mergesmith evolve needs the cma package", hint=hint) from None
    import numpy as np

    # what decides the search's path; more evaluations, other workers or another cluster continue it
    decides = (settings.population, settings.sigma, settings.seed)
    digest = hashlib.sha256(f"{source_text}\n{decides!r}".encode()).hexdigest()
    state = _load_state(storage, digest)
    if state is None:
        options = {"seed": settings.seed, "verbose": -9, "popsize": settings.population} if settings.population else {
            "seed": settings.seed, "verbose": -9}  # fmt: skip
        es = cma.CMAEvolutionStrategy(genome.initial(), settings.sigma, options)
        state = SearchState(digest, es, np.random.get_state())
    pool = _Pool(make_scorer, settings)
    try:
        while len(state.evaluations) < settings.max_evaluations and not state.es.stop():
            np.random.set_state(state.random_state)
            candidates = state.es.ask()
            left = settings.max_evaluations - len(state.evaluations)
            scores = pool.score([to_loaded(genome.recipe(list(x))) for x in candidates[:left]])
            fitness = [-s.fitness for s in scores]  # cma minimises
            if len(scores) == len(candidates):
                state.es.tell(candidates, fitness)
            state.random_state = np.random.get_state()
            state.generation += 1
            for x, s in zip(candidates, scores):
                state.evaluations.append(
                    {
                        "generation": state.generation,
                        "genotype": [float(v) for v in x],
                        "fitness": s.fitness,
                        "terms": s.terms,
                        "node": s.node,
                    }  # fmt: skip
                )
            _save_state(storage, state)
            if on_generation is not None:
                on_generation(state)
    finally:
        pool.close()
    return state


def write_results(state: SearchState, genome: Genome, storage: Path) -> Path:
    """The best recipe (STORAGE/best.yaml), every evaluation (evaluations.jsonl); returns the recipe's path."""
    best = state.best
    recipe = genome.recipe(best["genotype"])
    header = f"# mergesmith evolve: best of {len(state.evaluations)} evaluations, fitness {best['fitness']:.6g}\n"
    path = storage / BEST_RECIPE
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False))
    with open(storage / EVALUATIONS, "w") as file:
        for evaluation in state.evaluations:
            file.write(json.dumps(evaluation) + "\n")
    return path


class _Pool:
    """Scores candidates: on Ray actors (each with its own Scorer), or here when workers is 0."""

    def __init__(self, make_scorer: Callable[[], Any], settings: SearchSettings) -> None:
        self.local = make_scorer() if settings.workers == 0 else None
        self.actors: list[Any] = []
        if self.local is None:
            try:
                import ray
            except ImportError:
                raise MergesmithError(
                    f"--workers {settings.workers} scores candidates on Ray actors, and Ray is not installed",
                    hint="pip install 'mergesmith[ray]', or --workers 0 to score them in this process",
                ) from None

            if not ray.is_initialized():
                ray.init(address=settings.ray_address, log_to_driver=False, include_dashboard=False)
            worker = ray.remote(num_cpus=1)(_Worker)
            self.actors = [worker.remote(make_scorer) for _ in range(settings.workers)]

    def score(self, candidates: list[Any]) -> list[Any]:
        if self.local is not None:
            return [self.local.score(c) for c in candidates]
        import ray
        from ray.util import ActorPool

        try:
            return list(ActorPool(self.actors).map(lambda actor, c: actor.score.remote(c), candidates))
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, MergesmithError):
                raise cause from None
            raise

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor)


class _Worker:
    def __init__(self, make_scorer: Callable[[], Any]) -> None:
        self.scorer = make_scorer()

    def score(self, loaded: Any) -> Any:
        import dataclasses

        import ray

        return dataclasses.replace(self.scorer.score(loaded), node=ray.get_runtime_context().get_node_id())


def _load_state(storage: Path, digest: str) -> SearchState | None:
    path = storage / STATE
    if not path.is_file():
        return None
    with open(path, "rb") as file:
        state = pickle.load(file)  # our own file, written below: never a file from elsewhere
    if not isinstance(state, SearchState) or state.genome_digest != digest:
        raise RecipeError(
            f"{path}: a search of another genome or other settings is stored here",
            hint="give another --storage, or remove this one to start over (the genome, --population, "
            "--sigma and --seed must be those of the stored search to continue it)",
        )
    return state


def _save_state(storage: Path, state: SearchState) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    partial = storage / f".{STATE}.partial"
    with open(partial, "wb") as file:
        pickle.dump(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, storage / STATE)


def plot_fitness(state: SearchState, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [e["fitness"] for e in state.evaluations]
    best = [max(values[: i + 1]) for i in range(len(values))]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.scatter(range(1, len(values) + 1), values, s=10, label="evaluation")
    axes.plot(range(1, len(values) + 1), best, color="C1", label="best so far")
    axes.set_xlabel("evaluation")
    axes.set_ylabel("fitness (higher is better)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def summary(state: SearchState) -> Mapping[str, Any]:
    best = state.best
    return {"generation": state.generation, "evaluations": len(state.evaluations), "best_fitness": best["fitness"]}
