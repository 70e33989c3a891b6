"""`python -m harness.lmeval ...`: lm-eval's command line with `mote-hf` / `mote-vllm` registered."""

from __future__ import annotations

import harness.lmeval  # noqa: F401  (registers the models)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
