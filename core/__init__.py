"""The domain core: labels and class codes, the data contract and its errors, label
corrections, person-level folds, the crop manifest, the workspace and atomic writes.

The bottom layer: it imports nothing of ours, so every other package (trainables,
search_spaces, results, orchestrator) may import it."""
