"""reformer_hf.training, and the Reformer heads under transformers' Trainer on real local text."""

import json
import math
import re
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from reformer_hf import ReformerForCausalLM, ReformerForSequenceClassification
from reformer_hf.attention_functions import normalize_keys
from reformer_hf.data import chunk_byte_stream
from reformer_hf.tokenization import ReformerByteTokenizer
from reformer_hf.training import (
    PRESETS,
    MetricsLog,
    bits_per_byte,
    dense_shared_qk_overrides,
    gather_state_dict,
    make_accelerator,
    parse_overrides,
    preset_config,
    read_metrics,
    run_folder_error,
    step_generator,
    stop_on_every_process,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_text(package, limit):
    """Real text: the first `limit` bytes of a standard-library package's sources."""
    data = b"\n".join(path.read_bytes() for path in sorted((STDLIB / package).glob("*.py")))
    assert len(data) >= limit
    return data[:limit]


def trainer_args(tmp_path, **overrides):
    fields = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=20,
                  logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                  dataloader_num_workers=0, disable_tqdm=True, warmup_steps=0, lr_scheduler_type="constant")
    fields.update(overrides)
    return TrainingArguments(**fields)


def logged_losses(trainer):
    return {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}


# ------------------------------------------------------------------------------ helpers


def test_bits_per_byte_converts_nats_per_byte_to_bits():
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256) * 3, 3) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="n_predicted_bytes=0"):
        bits_per_byte(1.0, 0)


def test_parse_overrides_reads_json_values_and_keeps_commas_inside_lists():
    parsed = parse_overrides('num_hashes=4,attn_layers=["lsh","local"],lsh_window_mode=chunk,hash_seed=null')
    assert parsed == {"num_hashes": 4, "attn_layers": ["lsh", "local"], "lsh_window_mode": "chunk", "hash_seed": None}
    assert parse_overrides(' hidden_act = gelu_new , axial_pos_shape=[16, 16] ,names=["a,b"]') == {
        "hidden_act": "gelu_new", "axial_pos_shape": [16, 16], "names": ["a,b"]}
    assert parse_overrides("") == {}


@pytest.mark.parametrize("text, message", [
    ("num_buckets=[4,", "the value of 'num_buckets' is not a JSON value"),  # used to drop the field silently
    ("num_buckets=[4,8", "the value of 'num_buckets' is not a JSON value"),
    ("num_hashes=4,num_buckets=[4,", "config override 'num_buckets=[4,'"),
    ("num_buckets=4]", "the value of 'num_buckets' is not a JSON value"),
    ('attn_layers=["lsh","local"', "the value of 'attn_layers' is not a JSON value"),
    ('lsh_window_mode="chunk', "the value of 'lsh_window_mode' is not a JSON value"),
    ("axial_pos_shape={16: 16}", "the value of 'axial_pos_shape' is not a JSON value"),
    ("num_hashes=", "the value of 'num_hashes' is not a JSON value"),
    ("num_hashes=4 8", "the value of 'num_hashes' is not a JSON value"),
    ("num_hashes", "is not key=value"),
    ("=4", "is not key=value"),
    ("num_hashes=4,", "end with a comma"),
    ("num_hashes=4,num_hashes=8", "'num_hashes' is given twice"),
])
def test_parse_overrides_refuses_what_does_not_parse_naming_it(text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        parse_overrides(text)
    assert repr(text) in str(error.value)


def test_every_preset_is_a_valid_config_and_the_paper_preset_matches_the_paper():
    for name in PRESETS:
        preset_config(name)
    paper = preset_config("enwik8-paper")
    assert (len(paper.attn_layers), paper.hidden_size, paper.feed_forward_size, paper.num_attention_heads) == (12, 1024, 4096, 8)
    assert paper.max_sequence_length == 65536 and paper.is_decoder
    with pytest.raises(ValueError, match="preset='nope' is unknown"):
        preset_config("nope")


def test_step_generator_depends_only_on_its_indices():
    first = torch.randint(0, 1000, (5,), generator=step_generator(3, 7, 1))
    again = torch.randint(0, 1000, (5,), generator=step_generator(3, 7, 1))
    other = torch.randint(0, 1000, (5,), generator=step_generator(3, 8, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_dense_shared_qk_overrides_make_an_lsh_layer_compute_dense_attention():
    """Reference: causal softmax(q k^T) v with unit keys, the self logit at -1e5, computed by hand."""
    config = preset_config("duplication", {"hidden_size": 32, "num_attention_heads": 2, "attention_head_size": 16,
                                           "feed_forward_size": 32,
                                           "axial_pos_embds_dim": [16, 16], "num_hashes": 4})
    for name, value in dense_shared_qk_overrides(64).items():
        setattr(config, name, value)
    model = ReformerForCausalLM(config).eval()
    attention = model.reformer.encoder.layers[0].attention.self_attention
    hidden = torch.randn(2, 64, 32)
    out = attention(hidden)

    heads, d_head = 2, 16
    qk = attention.query_key(hidden).view(2, 64, heads, d_head).transpose(1, 2)
    value = attention.value(hidden).view(2, 64, heads, d_head).transpose(1, 2)
    logits = qk @ normalize_keys(qk).transpose(-1, -2)
    logits = logits.masked_fill(torch.eye(64, dtype=torch.bool), -1e5)
    logits = logits.masked_fill(torch.ones(64, 64, dtype=torch.bool).triu(1), float("-inf"))
    expected = (logits.softmax(-1) @ value).transpose(1, 2).reshape(2, 64, heads * d_head)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_metrics_log_on_resume_drops_rows_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, {"loss": float(step)})
    resumed = MetricsLog(tmp_path, resume_step=3, tensorboard=False)
    resumed.log(4, {"loss": 40.0})
    assert [(row["step"], row["loss"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_make_accelerator_builds_no_fsdp_plugin_outside_an_fsdp_launch(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    from accelerate.utils import DistributedType

    accelerator = make_accelerator("no", cpu=True)
    assert accelerator.distributed_type == DistributedType.NO
    assert getattr(accelerator.state, "fsdp_plugin", None) is None
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"


def test_gather_state_dict_holds_every_weight_of_the_prepared_model():
    accelerator = make_accelerator("no", cpu=True)
    model = ReformerForCausalLM(preset_config("tiny"))
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prepared = accelerator.prepare(model)
    gathered = gather_state_dict(accelerator, prepared)
    assert sorted(gathered) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(gathered[name].cpu(), tensor)



def test_run_folder_error_names_what_keeps_a_run_out_of_a_folder(tmp_path):
    from reformer_hf.checkpointing import CHECKPOINT_INFO, CHECKPOINT_PREFIX

    missing = tmp_path / "missing"
    assert run_folder_error(missing, resume=False) is None
    assert "there is nothing to resume" in run_folder_error(missing, resume=True)
    (tmp_path / "a_file").write_text("x")
    assert "a_file" in run_folder_error(tmp_path / "a_file", resume=False)
    run = tmp_path / "run"
    (run / "checkpoints" / f"{CHECKPOINT_PREFIX}3").mkdir(parents=True)
    assert run_folder_error(run, resume=False) is None  # a save cut short holds no checkpoint.json
    assert run_folder_error(run, resume=True) == f"--resume: no complete checkpoint under {run / 'checkpoints'}"
    (run / "checkpoints" / f"{CHECKPOINT_PREFIX}3" / CHECKPOINT_INFO).write_text("{}")
    assert run_folder_error(run, resume=True) is None
    assert "already holds checkpoints; pass --resume" in run_folder_error(run, resume=False)


STOP_WISHES = [(False, True), (True, False), (False, False), (True, True)]  # (process 0, process 1) per step


def stop_answers(rank, world_size, init_file, answers):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        answers[rank] = [stop_on_every_process(wishes[rank], torch.device("cpu")) for wishes in STOP_WISHES]
    finally:
        torch.distributed.destroy_process_group()


def test_stop_on_every_process_gives_every_process_the_same_answer(tmp_path):
    # Two real gloo processes: one clock past its budget stops both at that step.
    import torch.multiprocessing as multiprocessing

    with multiprocessing.get_context("fork").Manager() as manager:
        answers = manager.dict()
        multiprocessing.start_processes(stop_answers, args=(2, tmp_path / "init", answers), nprocs=2,
                                        start_method="fork")
        expected = [any(wishes) for wishes in STOP_WISHES]
        assert dict(answers) == {0: expected, 1: expected}
    assert stop_on_every_process(True, torch.device("cpu")) is True
    assert stop_on_every_process(False, torch.device("cpu")) is False

# ------------------------------------------------------------------------------ Trainer


def lm_dataset(n_bytes=4096, seq_len=32):
    return chunk_byte_stream(stdlib_text("json", n_bytes), seq_len, remainder="drop")


def test_trainer_fine_tunes_the_causal_lm_and_its_loss_decreases(tmp_path):
    torch.manual_seed(0)
    model = ReformerForCausalLM(preset_config("tiny"))
    trainer = Trainer(model=model, args=trainer_args(tmp_path, max_steps=15), train_dataset=lm_dataset())
    trainer.train()
    losses = list(logged_losses(trainer).values())
    assert losses[0] == pytest.approx(math.log(260), abs=0.3)  # untrained: near uniform over 260 ids
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0


def variable_length_documents():
    """Eight real documents of different lengths (variable padding inside a batch)."""
    text = stdlib_text("json", 4000)
    lengths = [40, 17, 33, 25, 48, 9, 30, 21]
    starts = [0, 300, 700, 1100, 1500, 1900, 2300, 2700]
    return [{"input_ids": [byte + 4 for byte in text[start:start + length]]} for start, length in zip(starts, lengths)]


class GradientRecorder(TrainerCallback):
    def __init__(self):
        self.gradients = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients.append({name: p.grad.detach().clone() for name, p in model.named_parameters()})


def test_gradient_accumulation_of_four_single_rows_equals_one_batch_of_four(tmp_path):
    """Trainer passes num_items_in_batch (the padded batch's real targets) to the LM's forward, so
    4 micro-batches of 1 row give the gradient of 1 batch of 4 padded rows, not a mean of means."""
    from datasets import Dataset

    dataset = Dataset.from_list(variable_length_documents())
    collator = DataCollatorForLanguageModeling(ReformerByteTokenizer(), mlm=False)
    # Fixed hash rotations: each forward pass would otherwise draw its own.
    config = preset_config("tiny", {"hash_seed": 11})
    gradients = {}
    for name, batch, accumulation in (("batch", 4, 1), ("accumulated", 1, 4)):
        torch.manual_seed(0)
        recorder = GradientRecorder()
        args = trainer_args(tmp_path / name, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                            max_steps=2, max_grad_norm=0.0, learning_rate=1e-2)
        trainer = Trainer(model=ReformerForCausalLM(config), args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[recorder])
        trainer.train()
        gradients[name] = recorder.gradients
    for step in range(2):
        for name, grad in gradients["batch"][step].items():
            torch.testing.assert_close(gradients["accumulated"][step][name], grad, rtol=0, atol=1e-5)
    assert max(grad.abs().max().item() for grad in gradients["batch"][0].values()) > 1e-3


def test_resume_from_checkpoint_continues_with_exactly_the_same_losses(tmp_path):
    def make_trainer(output_dir):
        torch.manual_seed(0)  # same initial weights; the checkpoint then overrides them
        # Dropout and fresh hash rotations on every step: resuming must restore the RNG too.
        config = preset_config("tiny", {"hidden_dropout_prob": 0.1})
        args = trainer_args(output_dir, max_steps=8, save_strategy="steps", save_steps=4)
        return Trainer(model=ReformerForCausalLM(config), args=args, train_dataset=lm_dataset())

    uninterrupted = make_trainer(tmp_path / "full")
    uninterrupted.train()
    reference = logged_losses(uninterrupted)

    resumed = make_trainer(tmp_path / "resumed")
    resumed.args.max_steps = 4
    resumed.train()
    continued = make_trainer(tmp_path / "resumed")
    continued.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    losses = logged_losses(continued)  # steps 1-4 come back from the checkpoint's trainer_state.json
    assert sorted(losses) == list(range(1, 9))
    for step in (5, 6, 7, 8):
        assert losses[step] == pytest.approx(reference[step], rel=1e-6), step
    assert len(set(reference.values())) == len(reference)


def classification_dataset():
    """Real labelled documents: 64-byte pieces of the json (label 0) and email (label 1) packages."""
    from datasets import Dataset

    rows = []
    for label, package in enumerate(("json", "email")):
        text = stdlib_text(package, 64 * 24)
        rows += [{"input_ids": [byte + 4 for byte in text[i:i + 64]], "labels": label} for i in range(0, len(text), 64)]
    return Dataset.from_list(rows)


def test_trainer_fine_tunes_sequence_classification_and_its_loss_decreases(tmp_path):
    torch.manual_seed(0)
    config = preset_config("tiny", {"is_decoder": False, "num_labels": 2, "lsh_num_chunks_after": 1,
                                    "local_num_chunks_after": 1})
    model = ReformerForSequenceClassification(config)
    args = trainer_args(tmp_path, max_steps=30, per_device_train_batch_size=8)
    trainer = Trainer(model=model, args=args, train_dataset=classification_dataset(),
                      data_collator=DataCollatorWithPadding(ReformerByteTokenizer()))
    trainer.train()
    losses = list(logged_losses(trainer).values())
    assert sum(losses[:5]) / 5 > 0.6  # starts near log 2 = 0.69 for two balanced classes
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    json.dumps(trainer.state.log_history)  # the log stays JSON-able (Trainer writes it to trainer_state.json)
