"""The multi-turn benchmark's conversations resend their history, and later turns report it
as cached."""

from __future__ import annotations

from nanochat_gateway.bench.multiturn import drive_conversations, ratios, special_token_ids


async def test_later_turns_resend_the_history_and_find_it_cached(gateway, tiny_model_dir):
    result = await drive_conversations(gateway.url, gateway.model_id, conversations=2, turns=3, words=20,
                                       reply_tokens=4, ignore_ids=special_token_ids(str(tiny_model_dir)))
    first, *later = result["turns"]
    assert result["errors"] == [] and all(t["completed"] == 2 for t in result["turns"])
    assert first["cached_tokens"] == 0 and first["ttft_p50_s"] > 0
    for before, turn in zip(result["turns"], later, strict=False):
        # the whole earlier prompt at least: the new turn appends to it
        assert turn["prompt_tokens"] > before["prompt_tokens"] and turn["cached_tokens"] >= before["prompt_tokens"]
    assert result["prefix_cache"][0]["hit_tokens"] > 0


def test_ratios_compare_the_last_turn_with_the_first_and_with_the_cache_off():
    def run(*ttft):
        return {"turns": [{"ttft_p50_s": t} for t in ttft]}

    assert ratios(run(1.0, 1.2), run(1.0, 6.0), 0.97) == {
        "ttft_last_vs_first_turn_cache_on": 1.2, "ttft_last_turn_off_vs_on": 5.0, "distinct_throughput_on_vs_off": 0.97}
