"""A run_utils.py shaped like open-instruct's older one, for the patch-run-utils tests.

Written for these tests: ``system_prompt`` comes before ``user_prompt`` in both functions, there
is no module logger (errors are printed), and the async function is not the last definition.
(The tests also try it with CRLF line endings and no final newline.)
"""
import litellm


def run_litellm(model_name, system_prompt, user_prompt, **chat_kwargs):
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return litellm.completion(messages=msgs, model=model_name, **chat_kwargs).choices[0].message.content


async def run_litellm_async(model_name, system_prompt, user_prompt, **chat_kwargs):
    msgs = [{"role": "user", "content": user_prompt}]
    if system_prompt is not None:
        msgs.insert(0, {"role": "system", "content": system_prompt})
    try:
        response = await litellm.acompletion(messages=msgs, model=model_name, **chat_kwargs)
    except Exception as e:
        print(f"Error in run_litellm_async: {e}")
        return ""
    return response.choices[0].message.content


def save_file_jsonl(data, fp):
    print("not used here", data, fp)
