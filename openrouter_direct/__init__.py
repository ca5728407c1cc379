"""Direct OpenRouter chat-completion calls for RL training loops.

A C extension does the work: it writes the request's JSON at the call, and a native engine thread,
with the GIL released, does the HTTP with libcurl and reads the usual reply in one pass (cJSON
reads errors and odd shapes). ``run_openrouter_async`` / ``run_openrouter`` are drop-ins for
DR-Tulu's ``run_litellm_async`` / ``run_litellm``. See README.md.
"""

from ._api import (call_openrouter, call_openrouter_async, call_openrouter_async_raw,
                   call_openrouter_raw, configure, metrics, run_openrouter, run_openrouter_async,
                   run_openrouter_async_raw, run_openrouter_raw, stats)
from ._response import ChatObject, ChatResponse
from .errors import (APIConnectionError, APIStatusError, APITimeoutError, AuthenticationError,
                     BudgetExceededError, OpenRouterError, RateLimitError)

__version__ = "0.1.0"

__all__ = [
    "run_openrouter_async", "run_openrouter", "call_openrouter_async", "call_openrouter",
    "run_openrouter_async_raw", "run_openrouter_raw", "call_openrouter_async_raw",
    "call_openrouter_raw", "ChatResponse", "ChatObject",
    "stats", "metrics", "configure", "OpenRouterError", "APIStatusError", "AuthenticationError",
    "RateLimitError", "BudgetExceededError", "APIConnectionError", "APITimeoutError",
    "__version__",
]
