"""Packing a step and planning decode attention groups."""

from __future__ import annotations

from nanochat_gateway.model.step import StepBatch, plan_decode_groups


def test_groups_cover_every_row_in_slot_order():
    slots = list(range(16))
    positions = [60 + 32 * i for i in range(16)]
    groups = plan_decode_groups(slots, positions)
    assert groups[0].first == 0 and groups[-1].last == 16
    assert all(a.last == b.first for a, b in zip(groups, groups[1:], strict=False))
    assert len(groups) > 1  # a wide spread of positions is worth splitting
    assert all(g.dense for g in groups)


def test_rows_at_the_same_position_stay_in_one_group():
    groups = plan_decode_groups(list(range(16)), [300] * 16)
    assert len(groups) == 1 and groups[0].dense and groups[0].min_pos == groups[0].max_pos == 300


def test_idle_slots_inside_a_group_are_not_dense():
    groups = plan_decode_groups([0, 2, 3], [10, 11, 12])
    assert len(groups) == 1 and not groups[0].dense and (groups[0].slot_lo, groups[0].slot_hi) == (0, 4)


def test_build_sorts_decode_rows_by_slot_and_maps_logits_back():
    batch = StepBatch.build(decode=[(5, 7, 11), (1, 3, 22)], prefill=[(2, 0, [1, 2, 3])], logits_for=[2, 0, 1])
    assert batch.tokens.tolist() == [22, 11, 1, 2, 3]
    assert batch.slots.tolist() == [1, 5, 2, 2, 2]
    # prefill segment's last token, then the row given first (slot 5), then slot 1
    assert batch.logit_index.tolist() == [4, 1, 0]
    assert batch.segment_first_has_prev.tolist() == [True, True, False]


def test_every_position_of_a_scored_chunk_follows_the_last_token_rows():
    batch = StepBatch.build(decode=[(0, 9, 5)], prefill=[(1, 0, [7, 8]), (2, 4, [1, 2, 3])], logits_for=[0, 2],
                            every_position=[1])
    assert batch.tokens.tolist() == [5, 7, 8, 1, 2, 3]
    assert batch.logit_index.tolist() == [0, 5, 3, 4, 5]
