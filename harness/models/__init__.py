"""Model helpers: tiny random models of each MoE family (tests, smoke runs) and their tokenizer."""
