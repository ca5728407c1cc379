"""A run_utils.py shaped like today's open-instruct open_instruct/rubrics/run_utils.py, for the
patch-run-utils tests.

Written for these tests: LiteLLM is imported lazily inside the helpers, the module logger comes
from ``logger_utils.setup_logger`` (the tests put a stand-in ``open_instruct.logger_utils`` in
sys.modules), and there are three helpers: ``run_litellm`` (sync, "" on failure),
``run_litellm_async_raw`` (the response object, exceptions kept) and ``run_litellm_async`` (the
text, through the raw helper, with its defaults applied first).
"""

import asyncio
import os
import weakref
from typing import Any

from open_instruct import logger_utils

logger = logger_utils.setup_logger(__name__)

_SEMAPHORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_litellm = None


def _get_litellm():
    global _litellm
    if _litellm is None:
        import litellm

        litellm.drop_params = True
        _litellm = litellm
    return _litellm


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _SEMAPHORES:
        _SEMAPHORES[loop] = asyncio.Semaphore(int(os.environ.get("LITELLM_MAX_CONCURRENT_CALLS", "256")))
    return _SEMAPHORES[loop]


def run_litellm(model_name: str, user_prompt: str, system_prompt: str | None = None, **chat_kwargs) -> str:
    litellm = _get_litellm()
    chat_kwargs.setdefault("temperature", 0)
    chat_kwargs.setdefault("max_tokens", 800)
    chat_kwargs.setdefault("num_retries", 5)
    chat_kwargs.setdefault("fallbacks", ["gpt-4.1-mini"])
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = litellm.completion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception:
        return ""
    return response.choices[0].message.content


def _messages(user_prompt=None, system_prompt=None, messages=None):
    if messages is not None:
        return messages
    if user_prompt is None:
        raise ValueError("Either messages or user_prompt must be provided.")
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def _async_defaults(chat_kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(chat_kwargs)
    out.setdefault("temperature", 0)
    if "max_tokens" not in out and "max_completion_tokens" not in out:
        out["max_tokens"] = 16384
    out.setdefault("num_retries", 5)
    out.setdefault("fallbacks", [])
    out.setdefault("timeout", float(os.environ.get("LITELLM_DEFAULT_TIMEOUT", "600")))
    return out


async def run_litellm_async_raw(
    model_name: str,
    user_prompt: str | None = None,
    system_prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    **chat_kwargs,
) -> Any:
    litellm = _get_litellm()
    msgs = _messages(user_prompt, system_prompt, messages)
    async with _semaphore():
        return await litellm.acompletion(messages=msgs, model=model_name, **chat_kwargs)


async def run_litellm_async(
    model_name: str,
    user_prompt: str | None = None,
    system_prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    **chat_kwargs,
) -> str:
    try:
        response = await run_litellm_async_raw(model_name, user_prompt, system_prompt, messages,
                                               **_async_defaults(chat_kwargs))
    except Exception as e:
        logger.warning(f"Error in run_litellm_async: {e}")
        return ""
    return response.choices[0].message.content
