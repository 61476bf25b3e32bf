"""Recipes: the YAML schema (mergekit 0.1.5's), loading with clear errors, parameter resolution."""

from mergesmith.recipe.load import LoadedRecipe, load_recipe, parse_recipe
from mergesmith.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "load_recipe", "parse_recipe"]
