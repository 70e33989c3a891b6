"""One minimal call to a judge endpoint before a run, so that a wrong URL, key or model name is found
in a second, not after an hour of generation: reachable, key accepted, model served."""

from __future__ import annotations

import os

import openai

from judges.client import EndpointConfig

MESSAGE = "Reply with OK."  # the one call's user message


def endpoint_problem(config: EndpointConfig, timeout_s: float = 20.0) -> str | None:
    """None when a one-token chat call works; else what the server (or the network) answered."""
    key = os.environ.get(config.api_key_env)
    if not key:
        return (
            f"no API key: the environment variable {config.api_key_env} is not set (any value, e.g. EMPTY, for "
            "a server that needs none)"
        )
    client = openai.OpenAI(base_url=config.base_url, api_key=key, max_retries=0, timeout=timeout_s)
    try:
        response = client.chat.completions.create(
            model=config.model,
            messages=[{"role": "user", "content": MESSAGE}],
            max_tokens=1,
            temperature=0.0,
        )
    except openai.APITimeoutError:
        return f"no answer within {timeout_s:g} s"
    except openai.APIConnectionError as err:
        cause = err.__cause__ or err
        return f"cannot connect ({type(cause).__name__}: {_short(str(cause))})"
    except openai.AuthenticationError as err:
        return f"http 401: the key in {config.api_key_env} was refused ({_short(err.message)})"
    except openai.NotFoundError as err:
        return f"http 404: {_short(err.message)} (is the model '{config.model}' served there, and the URL's /v1 right?)"
    except openai.APIStatusError as err:
        return f"http {err.status_code}: {_short(err.message)}"
    except openai.OpenAIError as err:
        return f"{type(err).__name__}: {_short(str(err))}"
    finally:
        client.close()
    if not getattr(response, "choices", None):
        return "the reply is not a chat completion (is this an OpenAI-compatible /v1 endpoint?)"
    return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
