"""Does the MoTE hook path keep its contract on this model? Five checks, each with its evidence:
no intervention leaves the model exactly as it was (logits or logprobs, then greedy tokens), dropped
experts get weight 0, suppressed experts never reach the top-k, forced experts are on every token.
`hf` checks the transformers backend, `vllm` the vLLM engine; `harness check` runs either."""
