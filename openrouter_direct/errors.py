"""Exceptions raised in strict mode (``raise_on_error=True`` or ``OPENROUTER_RAISE_ON_ERROR=1``).

The tree follows openai-python's, so code written against it reads the same::

    OpenRouterError
    ├── APIStatusError          .status_code: the HTTP status (or the error object's code)
    │   ├── AuthenticationError 401, or no API key configured (status_code None)
    │   └── RateLimitError      429, or rate-limited past OPENROUTER_RATE_LIMIT_WAIT
    ├── BudgetExceededError     OPENROUTER_MAX_COST spent: the call was not sent
    └── APIConnectionError      refused, reset, TLS, truncated transfer
        └── APITimeoutError     an attempt ran past ``timeout``

Every instance carries ``reason`` (the short name also counted in ``stats()``), ``attempts``,
``model`` and ``request_id`` (the id in the log lines).
"""

from __future__ import annotations


class OpenRouterError(Exception):
    def __init__(self, message: str, *, reason: str = "", status_code: int | None = None,
                 attempts: int = 0, model: str = "", request_id: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status_code = status_code
        self.attempts = attempts
        self.model = model
        self.request_id = request_id


class APIStatusError(OpenRouterError):
    pass


class AuthenticationError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class BudgetExceededError(OpenRouterError):
    pass


class APIConnectionError(OpenRouterError):
    pass


class APITimeoutError(APIConnectionError):
    pass


__all__ = ["OpenRouterError", "APIStatusError", "AuthenticationError", "RateLimitError",
           "BudgetExceededError", "APIConnectionError", "APITimeoutError"]
