"""Replaying a sub-layer's random draws, eagerly and under torch.compile.

The reference is the eager path: the global generators reseeded from the sub-layer's seed.
Under torch.compile the draws go through replay.py's operators on explicit generator states
(`ReplayedDraws`); they must give the same numbers, compile without a graph break, and leave a
compiled model's outputs and gradients those of the eager model.  The compiled runs use the
"aot_eager" backend (dynamo and AOT autograd, eager kernels): what is tested is the capture,
which inductor shares; bench/compile_check.py measures inductor on the GPU.
"""

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_config
from torch.nn import functional as F

import reformer_hf
from reformer_hf import ReformerForCausalLM, replay


def draws(x, seed):
    """A sub-layer's worth of draws: rotations (torch.randn, and replay.randn as attention.py draws
    them) and two dropouts, one of them on a transposed view."""
    with replay.seeded(seed, x.device):
        rotation = torch.randn(3, 4, device=x.device)
        rotation_like = replay.randn((2, 5), device=x.device, dtype=torch.float32)
        first = F.dropout(x * 2.0, 0.3, training=True)
        second = F.dropout(first.t(), 0.5, training=True)
    return rotation, rotation_like, second


def draws_and_gradient(function, seed):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rotation, rotation_like, out = function(x, seed)
    (grad,) = torch.autograd.grad((out * torch.arange(30.0).view(5, 6)).sum(), x)
    return rotation, rotation_like, out, grad


def replayed_draws(x, seed):
    with replay.ReplayedDraws(seed, x.device):
        rotation = torch.randn(3, 4, device=x.device)
        rotation_like = replay.randn((2, 5), device=x.device, dtype=torch.float32)
        first = F.dropout(x * 2.0, 0.3, training=True)
        second = F.dropout(first.t(), 0.5, training=True)
    return rotation, rotation_like, second


def test_replayed_draws_equal_the_reseeded_generators():
    expected = draws_and_gradient(draws, 1234)
    for actual, wanted in zip(draws_and_gradient(replayed_draws, torch.tensor(1234)), expected):
        assert torch.equal(actual, wanted)
    other_seed = draws_and_gradient(draws, 1235)
    assert not torch.equal(other_seed[2], expected[2])


def test_compiled_draws_equal_eager_draws_in_one_graph():
    torch._dynamo.reset()
    compiled = torch.compile(draws, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    expected = draws_and_gradient(draws, 77)
    for actual, wanted in zip(draws_and_gradient(compiled, torch.tensor(77)), expected):
        assert torch.equal(actual, wanted)


def test_compiled_seeds_are_the_eager_seeds():
    """The same numbers, and the global generator left where the eager draw leaves it."""
    torch.manual_seed(3)
    eager = replay.draw_seeds(4)
    eager_next = torch.randint(0, 2**62, (2,))
    torch.manual_seed(3)
    compiled = torch.compile(lambda: replay.draw_seeds(4), backend="aot_eager", fullgraph=True)()
    assert isinstance(eager, list) and compiled.dtype == torch.int64
    assert compiled.tolist() == eager
    assert torch.equal(torch.randint(0, 2**62, (2,)), eager_next)


def test_an_unreplayed_draw_is_refused():
    with (pytest.raises(RuntimeError, match="rand draws from the global generator inside a reversible layer"),
          replay.ReplayedDraws(torch.tensor(1), torch.device("cpu"))):
        torch.rand(3)
    with replay.ReplayedDraws(torch.tensor(1), torch.device("cpu")):  # its own generator: not the replay's business
        torch.rand(3, generator=torch.Generator().manual_seed(0))


def compile_config(reversible, **overrides):
    """Two layers (LSH, local) with every dropout on, 48 positions (a multiple of both chunks: no padding)."""
    fields = dict(attn_layers=["lsh", "local"], hidden_dropout_prob=0.1, lsh_attention_probs_dropout=0.1,
                  local_attention_probs_dropout=0.1, hash_seed=None, axial_pos_shape=[4, 12],
                  max_position_embeddings=48, reversible=reversible)
    return tiny_config(**{**fields, **overrides})


INPUT_IDS = torch.randint(0, 40, (2, 48), generator=torch.Generator().manual_seed(1))
OWN_FILES = ("replay.py", "reversible.py", "fused_stack.py", "attention.py", "attention_functions.py",
             "attention_dispatch.py", "attention_rules.py", "kernel_ops.py",
             *(path.name for path in Path(reformer_hf.__file__).parent.glob("kernels*.py")))


@pytest.mark.parametrize("reversible, mode", [(False, "train"), (True, "no_grad"), (True, "train")])
def test_no_graph_break_comes_from_the_layers(reversible, mode):
    """Plain layers and a reversible stack without gradients compile as one graph; a reversible
    stack in training is one call that runs eagerly (its backward pass rebuilds the layers
    eagerly), and nothing inside the layers ends a graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ReformerForCausalLM(compile_config(reversible)).train(mode == "train")
    with torch.no_grad() if mode == "no_grad" else contextlib.nullcontext():
        explanation = torch._dynamo.explain(model)(input_ids=INPUT_IDS, labels=INPUT_IDS)
    places = [(reason.reason.splitlines()[0], [frame.filename.rsplit("/", 1)[-1] for frame in reason.user_stack])
              for reason in explanation.break_reasons]
    for message, files in places:
        if reversible and mode == "train" and "torch.compiler.disable" in message:
            assert "reversible.py" in files  # the reversible stack's function
            continue
        assert not set(files) & set(OWN_FILES), (message, files)


def step(model, seed):
    embeds = model.reformer.embeddings.word_embeddings(INPUT_IDS).detach().requires_grad_(True)
    torch.manual_seed(seed)
    loss = model(inputs_embeds=embeds, labels=INPUT_IDS).loss
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, embeds.grad.clone()


@pytest.mark.parametrize("reversible", [False, True])
def test_compiled_training_step_equals_eager(reversible):
    """Every dropout and fresh hash rotations: a compiled step draws what the eager step draws,
    so its loss and gradients are the eager ones (float64)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ReformerForCausalLM(compile_config(reversible)).to(torch.float64).train()
    compiled = torch.compile(copy.deepcopy(model), backend="aot_eager")
    loss, grads, embeds_grad = step(model, seed=5)
    compiled_loss, compiled_grads, compiled_embeds_grad = step(compiled, seed=5)
    torch.testing.assert_close(compiled_loss, loss, atol=1e-12, rtol=0)
    torch.testing.assert_close(compiled_embeds_grad, embeds_grad, atol=1e-12, rtol=0)
    assert compiled_grads.keys() == {"_orig_mod." + name for name in grads}
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads["_orig_mod." + name], grad, atol=1e-12, rtol=0, msg=name)
    other_loss = step(model, seed=6)[0]
    assert abs(other_loss - loss) > 1e-6  # the seed matters: dropout is on
