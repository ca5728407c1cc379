"""A run_utils.py shaped like the known DR-Tulu fork's, for the patch-run-utils tests.

Written for these tests: the fork imports ``call_openrouter_async, call_openrouter`` from a
sibling ``openrouter_replacement`` module when USE_OPENROUTER_DIRECT is true (falling back to
LiteLLM when that import fails), and each function branches on the flag first.
"""
import logging
import os
from typing import Dict, List, Optional

import litellm

LOGGER = logging.getLogger(__name__)

USE_OPENROUTER_DIRECT = os.environ.get("USE_OPENROUTER_DIRECT", "false").lower() == "true"

if USE_OPENROUTER_DIRECT:
    try:
        from .openrouter_replacement import call_openrouter_async, call_openrouter
        LOGGER.info("Using direct OpenRouter API calls instead of litellm")
    except ImportError:
        LOGGER.warning("Failed to import OpenRouter replacement, falling back to litellm")
        USE_OPENROUTER_DIRECT = False


def run_litellm(model_name: str, user_prompt: str, system_prompt: Optional[str] = None,
                **chat_kwargs) -> str:
    if USE_OPENROUTER_DIRECT:
        try:
            return call_openrouter(model_name=model_name, user_prompt=user_prompt,
                                   system_prompt=system_prompt, **chat_kwargs)
        except Exception as e:
            print(f"Error in OpenRouter direct call: {e}")
            return ""
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = litellm.completion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception:
        return ""
    return response.choices[0].message.content


async def run_litellm_async(model_name: str, user_prompt: Optional[str] = None,
                            system_prompt: Optional[str] = None,
                            messages: Optional[List[Dict[str, str]]] = None,
                            **chat_kwargs) -> str:
    if USE_OPENROUTER_DIRECT:
        try:
            return await call_openrouter_async(model_name=model_name, user_prompt=user_prompt,
                                               system_prompt=system_prompt, messages=messages,
                                               **chat_kwargs)
        except Exception as e:
            print(f"Error in OpenRouter direct call: {e}")
            return ""
    msgs = messages or [{"role": "user", "content": user_prompt}]
    if messages is None and system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = await litellm.acompletion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception as e:
        print(f"Error in run_litellm_async: {e}")
        return ""
    return response.choices[0].message.content
