"""Datasets: versioned data in the registry's blob store, and feeding it to models."""
