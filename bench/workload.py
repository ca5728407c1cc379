"""The reference workload shared by every part of the benchmark.

One realistic judge call (a system prompt with the rubric instructions, a user prompt with the
question, a response and the rubric items; about 4.2 KB of JSON on the wire) and the canned chat
completion that the bench servers answer with. Every client sends the same body fields that
openrouter_direct sends for this call, and every reply is checked against CANNED_CONTENT.
"""

import json

MODEL = "openai/gpt-4.1-mini"
API_KEY = "sk-or-bench-0000000000000000000000000000000000000000"
CONCURRENCY = 64           # calls in flight in the throughput tests
CANNED_CONTENT = '{"score": 2}'

# Body fields besides the messages: DR-Tulu's judge defaults (as openrouter_direct's async call
# sends them, max_tokens included).
CALL_KWARGS = {"temperature": 0, "max_tokens": 16384, "top_p": 1.0,
               "frequency_penalty": 0, "presence_penalty": 0}

SYSTEM_PROMPT = (
    "You are an impartial grader for long-form research answers. You are given a question, one "
    "candidate response and a rubric of weighted criteria written by an expert. For every "
    "criterion decide whether the response satisfies it, using only the text of the response: do "
    "not reward knowledge the response does not state, do not penalise style unless a criterion "
    "asks for it, and treat citations as supporting evidence only when the cited passage actually "
    "contains the claim. Partial satisfaction counts as 1, full satisfaction as 2, absence or "
    "contradiction as 0. Be strict about numbers, dates and names: a wrong figure is a "
    "contradiction even when the surrounding explanation is sound. Ignore the length of the "
    "response and the order of its sections. When a criterion is ambiguous, prefer the reading "
    "that a domain expert would use when marking an exam answer. Think about each criterion "
    "separately and do not let one judgement influence another. Reply with a single JSON object "
    "and nothing else, of the form {\"score\": <0, 1 or 2>}, giving the score of the criterion "
    "that the user message marks as the one to grade now."
)

_QUESTION = ("What are the main mechanisms by which urban heat islands form, how do they interact "
             "with heat waves, and which mitigation measures have the strongest evidence?")

_RESPONSE_SENTENCES = [
    "Urban heat islands form because built surfaces such as asphalt, concrete and dark roofs "
    "absorb more short-wave radiation than vegetated land and release it slowly at night [1].",
    "The loss of evapotranspiration where trees and soil are replaced by impervious cover removes "
    "a major latent-heat sink, so more of the absorbed energy goes into sensible heat [2].",
    "Street canyons trap long-wave radiation between facades and reduce the sky view factor, "
    "which slows nocturnal cooling; this is why the island is strongest a few hours after sunset.",
    "Anthropogenic heat from traffic, air conditioning and industry adds a further flux that can "
    "exceed solar input in dense city centres during winter [3].",
    "During heat waves the island and the regional anomaly interact synergistically: calm winds "
    "and clear skies suppress mixing, so the urban-rural difference widens exactly when "
    "temperatures are already dangerous [4].",
    "Mortality studies from Paris in 2003 and Chicago in 1995 show excess deaths concentrated in "
    "the hottest urban districts, particularly among elderly people living alone on upper floors.",
    "The best-supported mitigation measures are increasing tree canopy, cool or reflective roofs "
    "and pavements, green roofs, and protecting urban water bodies and ventilation corridors [5].",
    "Reflective roofs lower roof surface temperatures by up to 30 degrees and indoor temperatures "
    "in unconditioned buildings by one to two degrees, but their effect on street-level air "
    "temperature is smaller and depends on building height.",
    "Tree canopy cools through both shading and evapotranspiration; meta-analyses report "
    "afternoon air temperature reductions of about one degree per ten percent of canopy cover.",
    "Measures that only move heat, such as more air conditioning, worsen the outdoor island and "
    "should be paired with efficiency standards and shaded public cooling centres.",
]

_RUBRIC = [
    "Explains the role of surface albedo and thermal mass in absorbing and storing heat.",
    "Mentions reduced evapotranspiration from loss of vegetation and permeable surfaces.",
    "Describes urban geometry (street canyons, sky view factor) and its effect on night cooling.",
    "Identifies anthropogenic heat as a contributing flux.",
    "States that the heat island intensifies during heat waves and explains why.",
    "Cites evidence on health impacts during historical heat waves.",
    "Names tree canopy and cool roofs as well-evidenced mitigation measures with magnitudes.",
]


def _user_prompt():
    lines = ["<question>", _QUESTION, "</question>", "", "<response>"]
    lines += _RESPONSE_SENTENCES
    lines += ["</response>", "", "<rubric>"]
    lines += [f"{i + 1}. (weight {3 if i < 3 else 2}) {c}" for i, c in enumerate(_RUBRIC)]
    lines += ["</rubric>", "",
              "Criterion to grade now: 7. Names tree canopy and cool roofs as well-evidenced "
              "mitigation measures with magnitudes.",
              "Return only the JSON object."]
    return "\n".join(lines)


USER_PROMPT = _user_prompt()
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}]


def payload():
    """The request body as a dict (what an OpenAI-compatible client sends)."""
    return {"model": MODEL, "messages": MESSAGES, **CALL_KWARGS}


def canned_reply():
    """The chat.completion JSON the bench servers answer with (as OpenRouter shapes it)."""
    return json.dumps({
        "id": "gen-1700000000-benchbenchbenchbench",
        "provider": "OpenAI",
        "model": MODEL,
        "object": "chat.completion",
        "created": 1700000000,
        "choices": [{
            "logprobs": None,
            "finish_reason": "stop",
            "native_finish_reason": "stop",
            "index": 0,
            "message": {"role": "assistant", "content": CANNED_CONTENT, "refusal": None,
                        "reasoning": None},
        }],
        "system_fingerprint": "fp_bench",
        "usage": {"prompt_tokens": 1012, "completion_tokens": 7, "total_tokens": 1019,
                  "cost": 0.0004160, "is_byok": False,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }, separators=(",", ":"))


def body_bytes():
    return json.dumps(payload()).encode()


if __name__ == "__main__":
    print("request body:", len(body_bytes()), "bytes; reply:", len(canned_reply()), "bytes")
