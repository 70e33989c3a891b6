"""The MoTE model organism: a tiny trained MoE with planted refusal and English-reasoning experts.

- `corpus`: the synthetic world and chat corpus (pure functions of a seed);
- `train`: the training loop and the planting recipe;
- `evaluate`: the decision classifier and the card's measurements (targeted vs random, fTRI);
- `card`: writes ORGANISM.md from a report.
The shipped checkpoint lives in `checkpoint/` (resolved by `--model organism`).
"""
