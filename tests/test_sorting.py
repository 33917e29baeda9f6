"""minGPT's sorting task: the examples, the split, and a GPT that sorts every held-out sequence greedily."""

import torch

from pygpt.tasks.sorting import (SortSampler, all_sequences, greedy_sort, make_examples, sort_accuracy,
                                 split_sequences, train_sorter)


def test_examples_score_only_the_sorted_half():
    x, y = make_examples(torch.tensor([[2, 0, 1, 0, 2, 1]]))
    assert x.tolist() == [[2, 0, 1, 0, 2, 1, 0, 0, 1, 1, 2]]
    assert y.tolist() == [[-100] * 5 + [0, 0, 1, 1, 2, 2]]


def test_split_is_disjoint_complete_and_seeded():
    train, held_out = split_sequences()
    assert len(all_sequences()) == 3 ** 6 and (len(train), len(held_out)) == (547, 182)
    seen = {tuple(s) for s in train.tolist()}
    assert seen.isdisjoint(tuple(s) for s in held_out.tolist())
    assert len(seen | {tuple(s) for s in held_out.tolist()}) == 729
    again = split_sequences()
    assert torch.equal(again[1], held_out) and not torch.equal(split_sequences(seed=1)[1], held_out)


def test_sampler_is_seeded_and_draws_from_its_sequences():
    train, _ = split_sequences()
    sampler = SortSampler(train, batch_size=16, seed=4)
    state = sampler.state_dict()
    x, y = sampler.get_batch()
    assert x.shape == y.shape == (16, 11)
    seen = {tuple(s) for s in train.tolist()}
    assert all(tuple(row[:6]) in seen for row in x.tolist())
    sampler.load_state_dict(state)
    assert torch.equal(sampler.get_batch()[0], x)


def test_gpt_sorts_every_held_out_sequence(tmp_path):
    """800 of minGPT's 2000 steps are enough here for all 182 held-out sequences (never seen in training)."""
    run = train_sorter(tmp_path / "sort", max_iters=800)
    correct, total = sort_accuracy(run.model, run.held_out)
    assert (correct, total) == (182, 182)
    assert sort_accuracy(run.model, run.train) == (547, 547)
    assert run.result.full_val.loss < 0.01  # held-out loss on the sorted half
    assert torch.equal(greedy_sort(run.model, torch.tensor([[2, 1, 0, 2, 1, 0]])), torch.tensor([[0, 0, 1, 1, 2, 2]]))
