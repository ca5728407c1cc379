"""A module that is not run_utils.py (no run_litellm_async), for the patch-run-utils tests."""
import litellm


def run_litellm(model_name, user_prompt, system_prompt=None, **chat_kwargs):
    return litellm.completion(model=model_name, messages=[{"role": "user", "content": user_prompt}])
