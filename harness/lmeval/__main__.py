"""`python -m harness.lmeval ...`: lm-eval's command line with `mote-hf` / `mote-vllm` registered."""

from __future__ import annotations

import harness.lmeval  # noqa: F401  (registers the models)


def main() -> None:
    import sys

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as err:
        print(
            f"mote-lm-eval: error: lm-eval is not installed ({err}); pip install 'mote-harness[lmeval]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    cli_evaluate()


if __name__ == "__main__":
    main()
