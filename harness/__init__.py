"""mote-harness: evaluate Mixture-of-Tunable-Experts interventions on MoE language models."""

__version__ = "0.1.0"
