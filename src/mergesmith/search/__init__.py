"""Recipes of several stages (multi.py) and searches over a recipe's parameters."""
