"""`python -m harness`: the `harness` command line.

Guarded so that processes which import this module without running it (vLLM engine and worker
processes started with multiprocessing's spawn method re-import `__main__`) do not run the CLI.
"""

from harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
