"""vaeflow core library."""
