"""ListOps (Nangia & Bowman 2018) as the Long Range Arena uses it (Tay et al., ICLR 2021).

An example is a nested list expression such as `[MAX 2 9 [MIN 4 7 ] 0 ]`, its label the value
(0-9) of the expression.  The operators are MAX, MIN, MED (the median, rounded down as the public
generator's `int(np.median(...))` rounds the mean of the two middle values of an even count) and
SM (the sum modulo 10).  Trees are sampled as the public LRA generator samples them: from depth 1,
a node above the maximum depth is a digit with probability 0.75 and otherwise an operator of
2..max_args arguments drawn the same way (at the maximum depth it is a digit), the operator and
the digits uniform.  A tree is kept when its length, counting operators, digits and closing
brackets, lies strictly between min_length and max_length (500 and 2000 for LRA), and only once.

The published text gives each operator's arguments nested parentheses, e.g. `[MAX 2 9 ]` is
`( ( ( [MAX 2 ) 9 ) ] )`; LRA's input pipeline removes the parentheses before the model sees the
tokens, so `encode` drops them by default and the model reads exactly the counted length.

Generation is deterministic given the seed: candidates come in blocks, each from its own
`random.Random`, so several worker processes produce the same data set as one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import random
import shutil
from pathlib import Path

import datasets
import torch

MAX, MIN, MED, SUM_MOD = "[MAX", "[MIN", "[MED", "[SM"
OPERATORS = (MAX, MIN, MED, SUM_MOD)
CLOSE = "]"
OPEN_PAREN, CLOSE_PAREN = "(", ")"
DIGITS = tuple(str(value) for value in range(10))
PAD = "<pad>"
# Token ids: padding first (id 0), so a batch is padded with zeros.
VOCABULARY = (PAD, *OPERATORS, CLOSE, OPEN_PAREN, CLOSE_PAREN, *DIGITS)
TOKEN_IDS = {token: index for index, token in enumerate(VOCABULARY)}
PAD_ID = TOKEN_IDS[PAD]
NUM_CLASSES = 10
# Bump when the sampling changes, so cached data sets of the old generator are not reused.
GENERATOR_VERSION = 1
CANDIDATES_PER_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class ListOpsConfig:
    """The generator's parameters; the defaults are LRA's (lengths exclusive, as its generator)."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000
    leaf_probability: float = 0.75
    train_size: int = 96_000
    validation_size: int = 2_000
    test_size: int = 2_000
    seed: int = 0

    def __post_init__(self):
        for name in ("max_depth", "max_args", "min_length", "max_length", "train_size", "validation_size",
                     "test_size", "seed"):
            value = getattr(self, name)
            minimum = {"max_args": 2, "max_depth": 1}.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"ListOpsConfig.{name}={value!r} is invalid: expected an integer >= {minimum}.")
        if self.max_length <= self.min_length + 1:
            raise ValueError(f"ListOpsConfig.max_length={self.max_length} is invalid: lengths lie strictly between "
                             f"min_length={self.min_length} and max_length, so it must be >= min_length + 2.")
        if not 0.0 < self.leaf_probability < 1.0:
            raise ValueError(f"ListOpsConfig.leaf_probability={self.leaf_probability!r} is invalid: expected a "
                             "probability strictly between 0 and 1.")

    @property
    def total_size(self):
        return self.train_size + self.validation_size + self.test_size

    def cache_key(self):
        """A short name for the data set these parameters generate."""
        fields = json.dumps({**dataclasses.asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:16]


# A tree is a digit (int) or (operator, children tuple).


class _TooLong(Exception):
    """A tree under construction passed the length limit: it would be rejected anyway."""


def sample_tree(rng, config):
    """One tree drawn as the public generator draws them, and its length; None if it reaches
    max_length (its construction stops there: a longer tree would be rejected anyway)."""
    budget = [config.max_length]

    def node(depth):
        budget[0] -= 1
        if budget[0] <= 0:
            raise _TooLong
        if depth >= config.max_depth or rng.random() < config.leaf_probability:
            return rng.randrange(10)
        operator = rng.choice(OPERATORS)
        budget[0] -= 1  # the closing bracket
        n_args = rng.randint(2, config.max_args)
        return operator, tuple(node(depth + 1) for _ in range(n_args))

    try:
        tree = node(1)
    except _TooLong:
        return None
    return tree, config.max_length - budget[0]


def evaluate_tree(tree):
    """The value of a tree (0-9)."""
    if isinstance(tree, int):
        return tree
    operator, children = tree
    values = sorted(evaluate_tree(child) for child in children)
    if operator == MAX:
        return values[-1]
    if operator == MIN:
        return values[0]
    if operator == MED:
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) // 2
    return sum(values) % 10


def tree_tokens(tree, parentheses=False):
    """The tree's tokens: prefix order with a closing bracket per operator, and with `parentheses`
    the published nesting `( ( [OP a ) b ) ] )` around each operator's arguments."""
    tokens = []

    def visit(node):
        if isinstance(node, int):
            tokens.append(DIGITS[node])
            return
        operator, children = node
        if parentheses:
            tokens.extend([OPEN_PAREN] * (len(children) + 1))
        tokens.append(operator)
        for child in children:
            visit(child)
            if parentheses:
                tokens.append(CLOSE_PAREN)
        tokens.append(CLOSE)
        if parentheses:
            tokens.append(CLOSE_PAREN)

    visit(tree)
    return tokens


def tree_text(tree, parentheses=True):
    """The published text of a tree (space-separated tokens, with parentheses by default)."""
    return " ".join(tree_tokens(tree, parentheses))


def parse_tokens(tokens):
    """Tokens (with or without parentheses) -> tree; ValueError naming the problem if malformed."""
    tokens = [token for token in tokens if token not in (OPEN_PAREN, CLOSE_PAREN)]
    stack, root = [], None
    for index, token in enumerate(tokens):
        if root is not None:
            raise ValueError(f"ListOps tokens continue after the expression ends, at token {index} ({token!r}).")
        if token in OPERATORS:
            stack.append((token, []))
            continue
        if token in DIGITS:
            node = int(token)
        elif token == CLOSE:
            if not stack or len(stack[-1][1]) < 1:
                raise ValueError(f"ListOps token {index} ({CLOSE!r}) closes no operator with arguments.")
            operator, children = stack.pop()
            node = (operator, tuple(children))
        else:
            raise ValueError(f"ListOps token {index} ({token!r}) is not in the vocabulary {VOCABULARY[1:]}.")
        if stack:
            stack[-1][1].append(node)
        else:
            root = node
    if root is None:
        raise ValueError(f"ListOps tokens end inside {len(stack)} open operator(s)." if stack
                         else "ListOps tokens are empty.")
    return root


def encode(text, parentheses=False):
    """Text (tokens separated by whitespace) -> token ids; parentheses are dropped unless kept, as
    LRA's input pipeline drops them."""
    ids = []
    for token in text.split():
        if token not in TOKEN_IDS or token == PAD:
            raise ValueError(f"ListOps token {token!r} is not in the vocabulary {VOCABULARY[1:]}.")
        if parentheses or token not in (OPEN_PAREN, CLOSE_PAREN):
            ids.append(TOKEN_IDS[token])
    return ids


def decode(ids):
    """Token ids -> text; padding ids are skipped."""
    tokens = []
    for index in ids:
        index = int(index)
        if not 0 <= index < len(VOCABULARY):
            raise ValueError(f"ListOps token id {index} is outside the vocabulary of {len(VOCABULARY)} ids.")
        if index != PAD_ID:
            tokens.append(VOCABULARY[index])
    return " ".join(tokens)


# ------------------------------------------------------------------------------ the data set


def _block_rng(seed, block):
    return random.Random(seed * 1_000_003 + block)


def candidate_block(config, block):
    """The kept trees of candidate block `block`, as (token ids without parentheses, label): a pure
    function of (config, block).  Each block draws trees until CANDIDATES_PER_BLOCK are in range."""
    rng = _block_rng(config.seed, block)
    kept = []
    while len(kept) < CANDIDATES_PER_BLOCK:
        sampled = sample_tree(rng, config)
        if sampled is None or sampled[1] <= config.min_length:
            continue
        tree = sampled[0]
        kept.append((bytes(TOKEN_IDS[token] for token in tree_tokens(tree)), evaluate_tree(tree)))
    return kept


def _candidate_block_star(arguments):
    return candidate_block(*arguments)


def generate_examples(config, workers=1):
    """{"train", "validation", "test"} -> lists of (token ids as bytes, label): distinct sequences,
    the first train_size kept trees in block order for train, then validation, then test.  The
    result does not depend on `workers`."""
    seen, examples = set(), []
    next_block = 0
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        while len(examples) < config.total_size:
            missing = config.total_size - len(examples)
            blocks = range(next_block, next_block + math.ceil(missing / CANDIDATES_PER_BLOCK))
            next_block = blocks.stop
            jobs = [(config, block) for block in blocks]
            results = pool.imap(_candidate_block_star, jobs, chunksize=4) if pool else map(_candidate_block_star, jobs)
            for block_examples in results:
                for ids, label in block_examples:
                    if ids not in seen and len(examples) < config.total_size:
                        seen.add(ids)
                        examples.append((ids, label))
    finally:
        if pool is not None:
            pool.terminate()
    first_test = config.train_size + config.validation_size
    return {"train": examples[: config.train_size], "validation": examples[config.train_size : first_test],
            "test": examples[first_test:]}


FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("uint8")),
    "label": datasets.ClassLabel(names=list(DIGITS)),
    "length": datasets.Value("int32"),
})


def build_dataset(config, workers=1):
    """A DatasetDict of train/validation/test with input_ids (no parentheses), label and length."""
    splits = generate_examples(config, workers)
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict(
            {"input_ids": [list(ids) for ids, _ in rows], "label": [label for _, label in rows],
             "length": [len(ids) for ids, _ in rows]},
            features=FEATURES,
        )
        for name, rows in splits.items()
    })


def load_or_build(cache_dir, config, workers=1):
    """The data set of `config` from cache_dir/listops-<key> (Arrow files written by save_to_disk),
    generated and saved there first when absent.  The folder is written under a temporary name and
    renamed, so a killed generation leaves no half data set behind."""
    folder = Path(cache_dir) / f"listops-{config.cache_key()}"
    if not (folder / "dataset_dict.json").is_file():
        building = folder.with_name(folder.name + ".partial")
        shutil.rmtree(building, ignore_errors=True)
        build_dataset(config, workers).save_to_disk(str(building))
        (building / "listops_config.json").write_text(
            json.dumps({**dataclasses.asdict(config), "version": GENERATOR_VERSION}, indent=2), encoding="utf-8")
        building.rename(folder)
    return datasets.load_from_disk(str(folder))


def collate(rows, pad_to_multiple_of=1):
    """Rows of {"input_ids", "label"} -> a batch: input_ids padded with PAD_ID on the right to the
    longest row (rounded up to a multiple), attention_mask, labels."""
    longest = max(len(row["input_ids"]) for row in rows)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        input_ids[index, :length] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        attention_mask[index, :length] = 1
    labels = torch.tensor([row["label"] for row in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
