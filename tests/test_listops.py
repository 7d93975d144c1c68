"""The ListOps generator against independent evaluators, its length rule, splits, seed and tokens."""

import math
import random
import statistics

import numpy as np
import pytest

from reformer_hf import listops
from reformer_hf.listops import (
    PAD_ID,
    VOCABULARY,
    ListOpsConfig,
    build_dataset,
    candidate_block,
    collate,
    decode,
    encode,
    evaluate_tree,
    generate_examples,
    load_or_build,
    parse_tokens,
    sample_tree,
    tree_text,
    tree_tokens,
)

SMALL = ListOpsConfig(max_depth=6, max_args=5, min_length=20, max_length=120, train_size=200, validation_size=40,
                      test_size=40, seed=3)


def apply_operator(name, values):
    """The operators from their definitions, through the statistics module."""
    if name == "[MAX":
        return max(values)
    if name == "[MIN":
        return min(values)
    if name == "[MED":
        return math.floor(statistics.median(values))
    assert name == "[SM"
    return sum(values) % 10


def evaluate_prefix_text(text):
    """Evaluate paren-free prefix text right to left with one stack of values (no tree is built)."""
    stack = []
    for token in reversed(text.split()):
        if token == "]":
            stack.append("]")
        elif token.isdigit():
            stack.append(int(token))
        else:
            arguments = []
            while stack[-1] != "]":
                arguments.append(stack.pop())
            stack.pop()
            stack.append(apply_operator(token, arguments))
    assert len(stack) == 1
    return stack[0]


def evaluate_published_text(text):
    """Evaluate the published parenthesised text as the public generator's structure reads it:
    each `( A B )` is a pair, an operator pair starts a partial application, `]` completes it."""
    tokens = text.split()

    def pair(position):
        if tokens[position] != "(":
            return tokens[position], position + 1
        left, position = pair(position + 1)
        right, position = pair(position)
        assert tokens[position] == ")"
        return (left, right), position + 1

    def value(node):
        if isinstance(node, str):
            return int(node) if node.isdigit() else node
        left, right = value(node[0]), value(node[1])
        if isinstance(left, str):  # an operator takes its first argument
            return (left, [right])
        if right == "]":
            return apply_operator(*left)
        return (left[0], left[1] + [right])

    tree, end = pair(0)
    assert end == len(tokens)
    return value(tree)


def public_sampler_lengths(rng, config, n):
    """The public generator's process written out plainly (whole trees, no early stop): the
    lengths of n trees, counted as it counts them."""
    def length(depth):
        if depth < config.max_depth and rng.random() <= 1 - config.leaf_probability:
            return 2 + sum(length(depth + 1) for _ in range(rng.randint(2, config.max_args)))
        return 1
    return [length(1) for _ in range(n)]


def test_every_generated_label_is_the_value_an_independent_evaluator_finds():
    data = build_dataset(SMALL)
    for split in data.values():
        for row in split:
            assert row["label"] == evaluate_prefix_text(decode(row["input_ids"]))
    labels = data["train"]["label"]
    assert len(set(labels)) >= 8  # every kind of value occurs, not one constant


def test_published_text_evaluates_to_the_tree_value_both_ways():
    rng = random.Random(11)
    checked = 0
    while checked < 200:
        sampled = sample_tree(rng, SMALL)
        if sampled is None:
            continue
        tree = sampled[0]
        expected = evaluate_tree(tree)
        assert evaluate_published_text(tree_text(tree)) == expected
        assert evaluate_prefix_text(tree_text(tree, parentheses=False)) == expected
        checked += 1


def test_operators_hand_computed():
    # MED of an even count: the public generator's int(np.median(...)) floors the mean of the middle two.
    cases = [("[MED 1 4 ]", 2), ("[MED 3 3 8 9 ]", 5), ("[MED 7 1 5 ]", 5), ("[SM 9 8 7 ]", 4),
             ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9), ("[MIN [SM 5 5 ] 3 ]", 0), ("[MED 0 9 ]", 4)]
    for text, value in cases:
        tree = parse_tokens(text.split())
        assert evaluate_tree(tree) == value
        if tree[0] == "[MED":
            assert value == int(np.median([int(token) for token in text.split()[1:-1]]))


def test_published_format_nests_each_argument_in_parentheses():
    tree = parse_tokens("[MAX 2 9 [MIN 4 7 ] 0 ]".split())
    assert tree_text(tree) == "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    assert tree_text(tree, parentheses=False) == "[MAX 2 9 [MIN 4 7 ] 0 ]"


def test_lengths_lie_strictly_inside_the_range_and_count_the_model_tokens():
    data = build_dataset(SMALL)
    for split in data.values():
        lengths = split["length"]
        assert all(SMALL.min_length < length < SMALL.max_length for length in lengths)
        assert lengths == [len(ids) for ids in split["input_ids"]]
    lra = ListOpsConfig()
    lengths = [len(ids) for block in range(3) for ids, _ in candidate_block(lra, block)]
    assert all(500 < length < 2000 for length in lengths)
    assert min(lengths) < 800 and max(lengths) > 1500  # the whole range is used


def test_length_distribution_is_the_public_processes():
    """Accepted lengths of the early-stopping sampler against the public process run whole and
    filtered afterwards: same acceptance rate and mean length within sampling error."""
    config = ListOpsConfig(max_depth=5, max_args=4, min_length=10, max_length=60)
    n = 6000
    rng = random.Random(0)
    ours = [s[1] for s in (sample_tree(rng, config) for _ in range(n)) if s is not None and s[1] > 10]
    theirs = [length for length in public_sampler_lengths(random.Random(1), config, n) if 10 < length < 60]
    rate_error = 3 * math.sqrt(0.25 / n) * math.sqrt(2)
    assert abs(len(ours) - len(theirs)) / n < rate_error
    spread = statistics.pstdev(theirs) * math.sqrt(1 / len(ours) + 1 / len(theirs))
    assert abs(statistics.mean(ours) - statistics.mean(theirs)) < 4 * spread


def test_no_sequence_repeats_within_or_across_splits():
    data = build_dataset(SMALL)
    sequences = [tuple(ids) for split in data.values() for ids in split["input_ids"]]
    assert len(sequences) == SMALL.total_size == len(set(sequences))
    sizes = {name: len(split) for name, split in data.items()}
    assert sizes == {"train": 200, "validation": 40, "test": 40}


def test_duplicate_candidates_are_skipped_not_repeated():
    """A tiny tree space (depth 2, two arguments: [OP a b]) makes repeats certain."""
    config = ListOpsConfig(max_depth=2, max_args=2, min_length=3, max_length=5, train_size=100, validation_size=50,
                           test_size=50)
    examples = [ids for split in generate_examples(config).values() for ids, _ in split]
    assert len(examples) == 200 == len(set(examples))


def test_generation_is_deterministic_given_the_seed_and_independent_of_workers():
    first = generate_examples(SMALL)
    assert generate_examples(SMALL) == first
    assert generate_examples(SMALL, workers=2) == first
    other = generate_examples(ListOpsConfig(**{**SMALL.__dict__, "seed": 4}))
    assert other["train"] != first["train"]


def test_tokenizer_round_trip():
    tree = parse_tokens("[SM 1 [MED 4 4 2 ] 9 ]".split())
    published = tree_text(tree)
    with_parentheses = encode(published, parentheses=True)
    assert decode(with_parentheses) == published
    ids = encode(published)
    assert ids == [VOCABULARY.index(token) for token in tree_tokens(tree)]
    assert decode(ids) == "[SM 1 [MED 4 4 2 ] 9 ]"
    assert parse_tokens(decode(ids + [PAD_ID, PAD_ID]).split()) == tree
    data = build_dataset(SMALL)
    for ids in data["test"]["input_ids"]:
        assert encode(decode(ids)) == list(ids)


@pytest.mark.parametrize("call, message", [
    (lambda: encode("[MAX 1 2 ] [FIRST"), "'\\[FIRST' is not in the vocabulary"),
    (lambda: encode("<pad> 1"), "'<pad>' is not in the vocabulary"),
    (lambda: decode([3, 99]), "token id 99 is outside the vocabulary of 18 ids"),
    (lambda: parse_tokens("[MAX 1 2".split()), "end inside 1 open operator"),
    (lambda: parse_tokens("[MAX 1 ] 2".split()), "continue after the expression ends, at token 3"),
    (lambda: parse_tokens("]".split()), "closes no operator"),
    (lambda: parse_tokens([]), "empty"),
    (lambda: ListOpsConfig(max_args=1), "max_args=1 is invalid"),
    (lambda: ListOpsConfig(min_length=10, max_length=11), "max_length=11 is invalid"),
    (lambda: ListOpsConfig(leaf_probability=1.0), "leaf_probability=1.0 is invalid"),
    (lambda: ListOpsConfig(seed=-1), "seed=-1 is invalid"),
])
def test_bad_input_is_refused_naming_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_dataset_is_cached_on_disk_by_its_parameters(tmp_path, monkeypatch):
    first = load_or_build(tmp_path, SMALL)
    assert [path.name for path in tmp_path.iterdir()] == [f"listops-{SMALL.cache_key()}"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached data set was generated again")

    monkeypatch.setattr(listops, "build_dataset", refuse)
    again = load_or_build(tmp_path, SMALL)
    assert again["train"]["input_ids"] == first["train"]["input_ids"]
    assert again["test"]["label"] == first["test"]["label"]
    other = ListOpsConfig(**{**SMALL.__dict__, "seed": 9})
    assert other.cache_key() != SMALL.cache_key()
    with pytest.raises(AssertionError, match="generated again"):
        load_or_build(tmp_path, other)


def test_collate_pads_right_and_masks():
    rows = [{"input_ids": [1, 11, 12, 5], "label": 2}, {"input_ids": [3, 14, 13, 14, 5, 9], "label": 7}]
    batch = collate(rows, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 11, 12, 5, 0, 0, 0, 0], [3, 14, 13, 14, 5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [2, 7]
