"""Model sweeps: Assembly-of-Experts children (or a list of models) evaluated as conditions of one run.

- `children`: the sweep's models (a recipe's children across lambda, the parents, or model folders),
  checked before any model loads;
- `sample_metrics`: figures read off the samples themselves (reasoning trace, output tokens, degenerate
  output, the endpoints' match with their parents);
- `transitions`: where each metric crosses halfway between the endpoints, its 10-90% width, gradual or sharp;
- `report`: the sweep table, the transition table and the metric-against-lambda plots.
"""
