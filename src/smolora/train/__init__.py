"""Training: the recipe (`recipe.py`, read top to bottom) and what it uses along the way."""
