"""Llama-family model definitions, named shapes and weight loading."""
