"""Recipes: the YAML schema (mergekit 0.1.5's), loading with clear errors, parameter settings.

recipe/ is the pipeline's first stage and imports no later one (methods/, plan, execute, write):
what loading must know of the methods arrives as plain data (MethodNames).
"""

from mergesmith.recipe.load import LoadedRecipe, load_recipe, parse_recipe
from mergesmith.recipe.method_names import MethodNames
from mergesmith.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "MethodNames", "Recipe", "load_recipe", "parse_recipe"]
