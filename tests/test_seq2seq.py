"""The reversible encoder-decoder: gradients, the decoder's attention against a dense reference,
cached generation, save/load, the translation pipeline and Seq2SeqTrainer."""

import copy
import json
import math
import subprocess
import sys

import datasets
import pytest
import torch
from package_refusal import REFUSE_REFORMER_HF
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    pipeline,
)

from reformer_hf import ReformerConfig, ReformerForConditionalGeneration, train_bpe_tokenizer, translation_config
from reformer_hf.seq2seq import ReformerSeq2SeqCache, decoder_config, shift_tokens_right
from reformer_hf.translation_pipeline import TranslationPipeline


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: more threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_seq2seq_config(**overrides):
    """Two encoder layers and three decoder layers of every kind, small enough for float64 checks."""
    fields = dict(
        vocab_size=50, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=32,
        attn_layers=["local", "lsh"], decoder_attn_layers=["full", "local", "lsh"], num_hashes=2, num_buckets=4,
        lsh_attn_chunk_length=4, lsh_num_chunks_after=1, local_attn_chunk_length=6, local_num_chunks_after=1,
        axial_pos_embds=False, max_position_embeddings=64, is_encoder_decoder=True, tie_word_embeddings=True,
        hidden_dropout_prob=0.0, local_attention_probs_dropout=0.0, lsh_attention_probs_dropout=0.0,
        full_attention_probs_dropout=0.0, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
    )
    return ReformerConfig(**{**fields, **overrides})


def token_ids(shape, seed, low=3, high=50):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def plain_copy(model):
    """The same weights with plain residual layers (ordinary autograd keeps every activation)."""
    plain = copy.deepcopy(model)
    plain.encoder.encoder.reversible = False
    plain.decoder.layers.reversible = False
    return plain


# ------------------------------------------------------------------------------------ gradients


def gradients(model, source, labels, seed):
    model.train()
    torch.manual_seed(seed)  # per-layer seeds (dropout masks, hash rotations) come from the global generator
    loss = model(input_ids=source, attention_mask=(source != 0).long(), labels=labels).loss
    model.zero_grad()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype,atol,stored", [(torch.float64, 1e-10, 0), (torch.float32, 1e-5, 0),
                                                (torch.float64, 1e-10, 1)])
def test_reversible_encoder_decoder_gradients_equal_plain_autograd(dtype, atol, stored):
    """stored: the top layers of both stacks that keep their activations (reversible_stored_layers)."""
    dropout = dict(hidden_dropout_prob=0.1, local_attention_probs_dropout=0.1, lsh_attention_probs_dropout=0.1,
                   full_attention_probs_dropout=0.1, hash_seed=None)
    torch.manual_seed(0)
    reversible = ReformerForConditionalGeneration(tiny_seq2seq_config(**dropout, reversible_stored_layers=stored))
    reversible = reversible.to(dtype)
    assert reversible.decoder.layers.stored_layers == stored
    plain = plain_copy(reversible)
    source = token_ids((2, 13), seed=1)
    source[1, 10:] = 0  # source padding, masked in both the encoder and the cross attention
    labels = token_ids((2, 9), seed=2)
    labels[0, 7:] = -100

    loss_rev, grads_rev = gradients(reversible, source, labels, seed=5)
    loss_plain, grads_plain = gradients(plain, source, labels, seed=5)
    torch.testing.assert_close(loss_rev, loss_plain, atol=atol, rtol=0)
    assert grads_rev.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_rev[name], grads_plain[name], atol=atol, rtol=0, msg=name)
    # The encoder learns only through the decoder's cross attention: its gradients crossed the context.
    encoder_grads = [g for name, g in grads_rev.items() if name.startswith("encoder.encoder.layers")]
    assert encoder_grads and all(g.abs().sum() > 0 for g in encoder_grads)
    assert grads_rev["decoder.layers.layers.0.attention.cross_attention.key.weight"].abs().sum() > 0


# ------------------------------------------------------------------------------------ the decoder layer


def test_decoder_attention_half_equals_dense_reference():
    """F(x) = a + CrossAttention(x + a), a = causal SelfAttention(x), against torch's own attention."""
    torch.manual_seed(0)
    config = tiny_seq2seq_config(decoder_attn_layers=["full"])
    model = ReformerForConditionalGeneration(config).double().eval()
    block = model.decoder.layers.layers[0].attention
    hidden = torch.randn(2, 7, 16, dtype=torch.float64)
    context = torch.randn(2, 5, 32, dtype=torch.float64)
    context_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])

    def heads(x):
        return x.view(x.shape[0], x.shape[1], 2, 8).transpose(1, 2)

    def merged(x):
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], 16)

    sa = block.self_attention
    normed = sa.layer_norm(hidden)
    q, k, v = (heads(proj(normed)) for proj in (sa.self_attention.query, sa.self_attention.key, sa.self_attention.value))
    attended = sa.output(merged(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)))
    ca = block.cross_attention
    query = heads(ca.query(ca.layer_norm(hidden + attended)))
    keys, values = heads(ca.key(context)), heads(ca.value(context))
    visible = ~context_mask[:, None, None, :]
    crossed = ca.output(merged(torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible)))

    torch.testing.assert_close(block(hidden, None, None, context=context, context_mask=context_mask),
                               attended + crossed, atol=1e-12, rtol=0)


def test_decoder_is_causal_and_source_padding_is_invisible():
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(tiny_seq2seq_config(hash_seed=7)).eval()
    source = token_ids((2, 9), seed=1)
    decoder_ids = token_ids((2, 11), seed=2)
    logits = model(input_ids=source, decoder_input_ids=decoder_ids).logits

    changed = decoder_ids.clone()
    changed[:, 6:] = token_ids((2, 5), seed=3)
    torch.testing.assert_close(model(input_ids=source, decoder_input_ids=changed).logits[:, :6], logits[:, :6])

    padded = torch.cat([source, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 4)], dim=1).long()
    padded_logits = model(input_ids=padded, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(padded_logits, logits, atol=1e-5, rtol=0)


def test_labels_are_shifted_right_into_decoder_inputs_and_give_token_mean_cross_entropy():
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(tiny_seq2seq_config(hash_seed=7)).eval()
    source, labels = token_ids((2, 9), seed=1), token_ids((2, 6), seed=2)
    labels[1, 4:] = -100
    decoder_ids = torch.tensor([[0, *labels[0, :-1].tolist()], [0, *labels[1, :4].tolist(), 0]])
    assert torch.equal(shift_tokens_right(labels, 0, 0), decoder_ids)

    output = model(input_ids=source, labels=labels)
    logits = model(input_ids=source, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(output.logits, logits)
    kept = labels != -100
    manual = -torch.log_softmax(logits, -1)[kept].gather(-1, labels[kept][:, None]).mean()
    torch.testing.assert_close(output.loss, manual)


def test_chunked_feed_forward_gives_the_unchunked_outputs():
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(tiny_seq2seq_config(hash_seed=7)).eval()
    chunked = ReformerForConditionalGeneration(tiny_seq2seq_config(hash_seed=7, chunk_size_feed_forward=3)).eval()
    chunked.load_state_dict(model.state_dict())
    source, labels = token_ids((2, 9), seed=1), token_ids((2, 8), seed=2)
    assert chunked.decoder.layers.layers[0].feed_forward.chunk_size == 3
    torch.testing.assert_close(chunked(input_ids=source, labels=labels).logits,
                               model(input_ids=source, labels=labels).logits, atol=1e-6, rtol=0)


def test_tied_output_layer_is_the_shared_embedding_and_untied_is_not():
    tied = ReformerForConditionalGeneration(tiny_seq2seq_config(tie_word_embeddings=True))
    untied = ReformerForConditionalGeneration(tiny_seq2seq_config(tie_word_embeddings=False))
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    # Source and target share one embedding: the decoder owns positions only.
    assert not any("word_embeddings" in name for name, _ in tied.decoder.named_parameters())


# ------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize("decoder_layers, extra", [
    (["full", "full"], {}),
    (["local", "local"], {}),
    (["lsh", "full"], {}),  # per-bucket decoding from the cache
    (["lsh"], dict(lsh_window_mode="chunk")),  # the cache recomputes the decoder
])
def test_cached_beam_search_equals_uncached(decoder_layers, extra):
    """hash_seed: the two generate() calls encode the source once each and must hash it alike."""
    torch.manual_seed(0)
    config = tiny_seq2seq_config(decoder_attn_layers=decoder_layers, local_attn_chunk_length=4, hash_seed=3, **extra)
    model = ReformerForConditionalGeneration(config).eval()
    source = token_ids((3, 11), seed=1)
    mask = torch.ones_like(source)
    mask[0, 8:] = 0
    kwargs = dict(attention_mask=mask, num_beams=4, num_return_sequences=2, max_new_tokens=14, length_penalty=0.6,
                  output_scores=True, return_dict_in_generate=True)
    cached = model.generate(source, use_cache=True, **kwargs)
    uncached = model.generate(source, use_cache=False, **kwargs)
    assert cached.sequences.shape == (6, 15)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=0)
    assert isinstance(cached.past_key_values, ReformerSeq2SeqCache)


def test_cache_keeps_cross_attention_keys_of_the_encoder_and_continues_exactly():
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(tiny_seq2seq_config(hash_seed=3)).eval()
    source, decoder_ids = token_ids((2, 9), seed=1), token_ids((2, 8), seed=2)
    full = model(input_ids=source, decoder_input_ids=decoder_ids, use_cache=False).logits
    encoder_outputs = model.get_encoder()(input_ids=source)
    first = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, :5], use_cache=True)
    cache = first.past_key_values
    assert cache.get_seq_length() == 5
    assert all(layer.keys.shape == (2, 2, 9, 8) for layer in cache.layers)
    steps = [first.logits]
    for t in range(5, 8):
        steps.append(model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_ids[:, t : t + 1],
                           past_key_values=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ save, load, pipeline


@pytest.fixture(scope="module")
def bpe_tokenizer(en_de_pairs):
    return train_bpe_tokenizer([text for pair in en_de_pairs for text in pair], vocab_size=300)


def test_save_load_auto_class_and_translation_pipeline(tmp_path, bpe_tokenizer):
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(translation_config("tiny", vocab_size=len(bpe_tokenizer))).eval()
    model.save_pretrained(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ReformerForConditionalGeneration
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight

    batch = bpe_tokenizer(["The file could not be saved.", "Page size"], return_tensors="pt", padding=True)
    labels = bpe_tokenizer(["Die Datei konnte nicht gespeichert werden.", "Seitengröße"], return_tensors="pt",
                           padding=True).input_ids
    for a, b in zip(model(**batch, labels=labels).to_tuple()[:2], loaded(**batch, labels=labels).to_tuple()[:2]):
        assert torch.equal(a, b)
    generated = model.generate(**batch, num_beams=3, max_new_tokens=10)
    assert torch.equal(loaded.generate(**batch, num_beams=3, max_new_tokens=10), generated)

    expected = bpe_tokenizer.batch_decode(generated, skip_special_tokens=True)
    translator = pipeline("translation", model=str(tmp_path), trust_remote_code=True)
    result = translator(["The file could not be saved.", "Page size"], num_beams=3, max_new_tokens=10)
    # One at a time, so without padding: the same translations as the padded batch.
    assert [row["translation_text"] for row in result] == expected
    text2text = pipeline("text2text-generation", model=str(tmp_path), pipeline_class=TranslationPipeline)
    assert text2text("Page size", num_beams=3, max_new_tokens=10) == [{"translation_text": expected[1]}]


# A fresh interpreter whose import system refuses `reformer_hf`: the folder's own code must do everything.
REMOTE_SCRIPT = REFUSE_REFORMER_HF + r'''
import json
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

folder, sources = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
batch = tokenizer(sources, return_tensors="pt", padding=True)
generated = model.generate(**batch, num_beams=3, max_new_tokens=10).tolist()
translated = pipeline("translation", model=folder, trust_remote_code=True)(sources, num_beams=3, max_new_tokens=10)
print(json.dumps({"model_class": type(model).__module__, "generated": generated,
                  "translated": [row["translation_text"] for row in translated],
                  "reformer_hf_loaded": any(name.startswith("reformer_hf") for name in sys.modules)}))
'''


def test_saved_folder_translates_where_the_package_cannot_be_imported(tmp_path, bpe_tokenizer):
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(translation_config("tiny", vocab_size=len(bpe_tokenizer))).eval()
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSeq2SeqLM"] == "seq2seq.ReformerForConditionalGeneration"
    assert (folder / "translation_pipeline.py").is_file()

    sources = ["The file could not be saved.", "Page size"]
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-I", "-c", REMOTE_SCRIPT, str(folder), json.dumps(sources)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["model_class"].startswith("transformers_modules.") and not report["reformer_hf_loaded"]
    expected = model.generate(**bpe_tokenizer(sources, return_tensors="pt", padding=True), num_beams=3,
                              max_new_tokens=10)
    assert report["generated"] == expected.tolist()
    assert report["translated"] == bpe_tokenizer.batch_decode(expected, skip_special_tokens=True)


def test_seq2seq_trainer_trains_and_predicts_with_generate(tmp_path, bpe_tokenizer, en_de_pairs):
    torch.manual_seed(0)
    model = ReformerForConditionalGeneration(translation_config("tiny", vocab_size=len(bpe_tokenizer)))
    rows = [{"input_ids": bpe_tokenizer(en).input_ids, "labels": bpe_tokenizer(de).input_ids} for en, de in en_de_pairs]
    dataset = datasets.Dataset.from_list(rows)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=3e-3, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        predict_with_generate=True, generation_max_length=12, generation_num_beams=2, disable_tqdm=True,
        log_level="error",
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                             data_collator=DataCollatorForSeq2Seq(bpe_tokenizer, model=model),
                             processing_class=bpe_tokenizer)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    uniform = math.log(len(bpe_tokenizer))  # the loss of a model that has learnt nothing
    assert losses[0] > uniform - 0.1 and sum(losses[-5:]) / 5 < uniform - 1.0
    prediction = trainer.predict(dataset.select(range(4)))
    generated = torch.as_tensor(prediction.predictions)
    # Seq2SeqTrainer pads the generated rows to the generation config's max_length (20), beyond the 12 asked for.
    assert generated.shape[0] == 4 and (generated[:, 12:] == bpe_tokenizer.pad_token_id).all()
    assert (generated[:, 0] == model.config.decoder_start_token_id).all() and (generated[:, 1:12] > 3).any()
    assert math.isfinite(prediction.metrics["test_loss"])


# ------------------------------------------------------------------------------------ config and errors


def test_translation_presets_have_the_papers_sizes():
    base, big = translation_config("wmt14-base"), translation_config("wmt14-big")
    assert (base.hidden_size, base.feed_forward_size, base.num_attention_heads) == (512, 2048, 8)
    assert (big.hidden_size, big.feed_forward_size, big.num_attention_heads) == (1024, 4096, 16)
    for config in (base, big):
        assert config.attn_layers == ["full"] * 6 and config.decoder_attn_layers == ["full"] * 6
        assert config.is_encoder_decoder and config.reversible
    assert base.tie_word_embeddings and not big.tie_word_embeddings
    assert (base.hidden_dropout_prob, big.hidden_dropout_prob) == (0.1, 0.3)

    with torch.device("meta"):
        model = ReformerForConditionalGeneration(base)
    d, ff, vocab, positions = 512, 2048, 32000, 1024
    attention = 4 * d * d
    cross = 2 * d * d + 2 * (2 * d) * d  # queries and output from d, keys and values from the 2d encoder output
    feed_forward = 2 * d * ff + ff + d
    norms = 2 * d
    expected = (vocab * d + 2 * positions * d
                + 6 * (attention + feed_forward + 2 * norms)
                + 6 * (attention + cross + feed_forward + 3 * norms)
                + 2 * (2 * 2 * d) + 2 * d * d)  # final norms over 2d, output projection 2d -> d (head tied)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("fields, message", [
    (dict(decoder_attn_layers=["full"]), "ReformerConfig.decoder_attn_layers=['full'] is invalid: only an encoder-decoder"),
    (dict(is_encoder_decoder=True, is_decoder=True), "ReformerConfig.is_decoder=True is invalid"),
    (dict(is_encoder_decoder=True, decoder_attn_layers=["dense"]), "ReformerConfig.decoder_attn_layers=['dense'] is invalid"),
    (dict(is_encoder_decoder=True, decoder_attn_layers=[]), "ReformerConfig.decoder_attn_layers=[] is invalid"),
    (dict(is_encoder_decoder=True, pad_token_id=None), "ReformerConfig.decoder_start_token_id=None is invalid"),
    (dict(is_encoder_decoder=True, decoder_start_token_id=260), "decoder_start_token_id=260 is invalid: expected None or a token id in [0, vocab_size=260)"),
    (dict(is_encoder_decoder="yes"), "ReformerConfig.is_encoder_decoder='yes' is invalid"),
    (dict(tie_word_embeddings=True), "ReformerConfig.tie_word_embeddings=True is invalid"),
])
def test_encoder_decoder_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=None) as error:
        ReformerConfig(**fields)
    assert message in str(error.value)


def test_encoder_decoder_defaults_and_decoder_config():
    config = ReformerConfig(is_encoder_decoder=True, attn_layers=["lsh", "local"], lsh_num_chunks_after=1,
                            local_attn_wrap_around=True)
    assert config.decoder_attn_layers == ["lsh", "local"] and config.decoder_start_token_id == config.pad_token_id
    decoder = decoder_config(config)
    assert decoder.is_decoder and not decoder.is_encoder_decoder
    assert (decoder.lsh_num_chunks_after, decoder.local_attn_wrap_around) == (0, False)
    assert ReformerConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_bad_model_inputs_fail_with_clear_errors():
    model = ReformerForConditionalGeneration(tiny_seq2seq_config()).eval()
    source, target = token_ids((2, 9), seed=1), token_ids((2, 5), seed=2)
    with pytest.raises(ValueError, match="needs an encoder-decoder config"):
        ReformerForConditionalGeneration(ReformerConfig())
    with pytest.raises(ValueError, match="pass exactly one of decoder_input_ids and decoder_inputs_embeds"):
        model(input_ids=source)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\); expected \(2, 9\)"):
        model(encoder_outputs=model.get_encoder()(input_ids=source), attention_mask=torch.ones(2, 4),
              decoder_input_ids=target)
    with pytest.raises(ValueError, match=r"labels has shape \(2, 4\); expected \(2, 5\)"):
        model(input_ids=source, decoder_input_ids=target, labels=target[:, :4])
    with pytest.raises(ValueError, match="past_key_values must be a ReformerSeq2SeqCache"):
        model(input_ids=source, decoder_input_ids=target, past_key_values=object())
    with pytest.raises(ValueError, match="decoder position 69 is beyond the model's maximum of 64 positions"):
        model(input_ids=source, decoder_input_ids=token_ids((2, 70), seed=3))
    with pytest.raises(ValueError, match="name='wmt15' is not a translation preset"):
        translation_config("wmt15")
    with pytest.raises(ValueError, match=r"overrides \['hidden_sise'\] are not ReformerConfig fields"):
        translation_config("tiny", hidden_sise=8)


@pytest.mark.parametrize("inputs, message", [
    (dict(input_ids=(2, 9), decoder_input_ids=(3, 5)),
     r"decoder_input_ids has 3 rows but input_ids has 2; every input needs one row per example"),
    (dict(input_ids=(2, 9), labels=(3, 5)), r"labels has 3 rows but input_ids has 2"),
    (dict(inputs_embeds=(2, 9), decoder_input_ids=(1, 5)), r"decoder_input_ids has 1 rows but inputs_embeds has 2"),
    (dict(encoder_outputs=(2, 9), decoder_input_ids=(3, 5)), r"decoder_input_ids has 3 rows but encoder_outputs has 2"),
    (dict(input_ids=(2, 9), decoder_input_ids=(2, 5), labels=(3, 5)), r"labels has 3 rows but input_ids has 2"),
    (dict(input_ids=(0, 9), decoder_input_ids=(0, 5)), r"input_ids has batch size 0; expected at least one row"),
    (dict(input_ids=(2, 9), labels=(0, 5)), r"labels has batch size 0; expected at least one row"),
    (dict(input_ids=(2, 9), decoder_input_ids=(2, 5), position_ids=(2, 5)),
     r"got unexpected keyword argument\(s\) \['position_ids'\]; it takes \['input_ids', 'attention_mask', "
     r"'decoder_input_ids', 'decoder_attention_mask', 'decoder_position_ids',"),
    (dict(input_ids=(2, 9), decoder_input_ids=(2, 5), attention_maks=(2, 9)),
     r"unexpected keyword argument\(s\) \['attention_maks'\]"),
])
def test_inputs_of_different_batch_sizes_and_unknown_keywords_are_refused_before_any_work(inputs, message):
    """A source of 2 rows with 3 decoder rows silently dropped one (the cross attention broadcast),
    labels of another batch size or an empty batch gave raw shape errors, and keywords the model does
    not take (position_ids: the decoder's are decoder_position_ids; a misspelt attention_mask) were
    swallowed.  Each is refused naming the argument, before the encoder runs."""
    model = ReformerForConditionalGeneration(tiny_seq2seq_config()).eval()
    encoder_calls = []
    model.encoder.register_forward_pre_hook(lambda *args: encoder_calls.append(1))
    arguments = {}
    for name, shape in inputs.items():
        if name in ("inputs_embeds", "encoder_outputs"):
            tensor = torch.randn(*shape, 16 if name == "inputs_embeds" else 32)
            arguments[name] = (tensor,) if name == "encoder_outputs" else tensor
        else:
            arguments[name] = token_ids(shape, seed=1)
    with pytest.raises(ValueError, match=message):
        model(**arguments)
    assert not encoder_calls
