"""A run_utils.py shaped like DR-Tulu's (no OpenRouter branch), for the patch-run-utils tests.

Written for these tests: only the parts the patch cares about (imports, a module logger, the two
LiteLLM functions with DR-Tulu's signatures and defaults, a ``__main__`` block after them).
"""
import asyncio
import logging
import os
from typing import Dict, List, Optional

import litellm

LOGGER = logging.getLogger(__name__)


def extract_json_from_response(response: str):
    start, end = response.find("{"), response.rfind("}") + 1
    return response[start:end] if start != -1 else None


def run_litellm(
    model_name: str,
    user_prompt: str,
    system_prompt: Optional[str] = None,
    **chat_kwargs,
) -> str:
    chat_kwargs["temperature"] = chat_kwargs.get("temperature", 0)
    chat_kwargs["max_tokens"] = chat_kwargs.get("max_tokens", 800)
    chat_kwargs["num_retries"] = chat_kwargs.get("num_retries", 5)
    chat_kwargs["fallbacks"] = chat_kwargs.get("fallbacks", ["gpt-4.1-mini"])
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = litellm.completion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception:
        return ""
    return response.choices[0].message.content


async def run_litellm_async(
    model_name: str,
    user_prompt: Optional[str] = None,
    system_prompt: Optional[str] = None,
    messages: Optional[List[Dict[str, str]]] = None,
    **chat_kwargs,
) -> str:
    chat_kwargs["max_tokens"] = chat_kwargs.get("max_tokens", 16384)
    chat_kwargs["timeout"] = chat_kwargs.get(
        "timeout", float(os.environ.get("LITELLM_DEFAULT_TIMEOUT", "600")))
    if messages is not None:
        msgs = messages
    else:
        msgs = [{"role": "user", "content": user_prompt}]
        if system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = await litellm.acompletion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception as e:
        print(f"Error in run_litellm_async: {e}")
        return ""
    return response.choices[0].message.content


if __name__ == "__main__":
    print(asyncio.run(run_litellm_async("gpt-4.1", "What is 2 + 2?")))
