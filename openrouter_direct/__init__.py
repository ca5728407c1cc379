"""Direct OpenRouter chat-completion calls for RL training loops.

libcurl does the HTTP and cJSON the JSON in a native engine thread with the GIL released;
``run_openrouter_async`` / ``run_openrouter`` are drop-ins for DR-Tulu's ``run_litellm_async`` /
``run_litellm``. See README.md.
"""

from ._api import (call_openrouter, call_openrouter_async, configure, run_openrouter,
                   run_openrouter_async, stats)
from .errors import (APIConnectionError, APIStatusError, APITimeoutError, AuthenticationError,
                     BudgetExceededError, OpenRouterError, RateLimitError)

__version__ = "0.1.0"

__all__ = [
    "run_openrouter_async", "run_openrouter", "call_openrouter_async", "call_openrouter",
    "stats", "configure", "OpenRouterError", "APIStatusError", "AuthenticationError",
    "RateLimitError", "BudgetExceededError", "APIConnectionError", "APITimeoutError",
    "__version__",
]
