"""Model cards for Reformer checkpoints: metadata the Hub understands, text a reader can use.

`make_model_card` turns a config (a `PreTrainedConfig` or a plain dict), evaluation results and
a few publishing choices into a `huggingface_hub.ModelCard`; `write_model_card` does the same for a
saved model folder and writes its README.md.

This file imports only the standard library and huggingface_hub, so it also works when copied
next to a checkpoint.  The card is rendered with `string.Template` (`${name}` placeholders):
huggingface_hub's own `ModelCard.from_template` needs jinja2, which huggingface_hub does not
depend on.  `CARD_TEMPLATE` is the canonical template; model_cards/reformer_template.md is a copy
(regenerate it with `python -m reformer_hf.model_card > model_cards/reformer_template.md`) and a
test keeps the two identical.

Evaluation results (a dict, a list of such dicts, or the path of a JSON file holding either):

    {
      "task":    {"type": "text-generation", "name": "Language modeling"},   # optional
      "dataset": {"type": "enwik8", "name": "enwik8", "split": "test",       # type, split required
                  "config": "...", "revision": "..."},                       # optional
      "metrics": [{"type": "bpb", "value": 1.05, "name": "bits per byte"}]   # type, value required
    }

`task.type` defaults to the card's pipeline tag, `dataset.name` to `dataset.type`, `metric.name`
to `metric.type`.  Unknown keys are errors (a typo would otherwise drop a number silently).
Each block becomes one `EvalResult` per metric in the card's `model-index`, which the Hub shows
as the evaluation widget, and one row per metric in the card's results table.
"""

import json
import math
import re
import string
import struct
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .eval_results import _check_text, _invalid, load_eval_results

CARD_TEMPLATE = r"""---
${card_data}
---

# ${model_name}

${summary}

## Model description

The [Reformer](https://arxiv.org/abs/2001.04451) (Kitaev, Kaiser and Levskaya, ICLR 2020) is a
Transformer for long sequences.  Its LSH attention hashes queries and keys into buckets with
random rotations, sorts the sequence by bucket and attends within fixed-size chunks of the sorted
order, so the cost grows as `length * chunk_length` rather than `length ** 2`.  Local attention
layers attend within a sliding, chunk-aligned window.  Reversible residual layers recompute each
layer's input from its output during the backward pass, so activations are stored once for the
whole stack instead of once per layer.  This checkpoint is implemented by the `reformer_hf`
package and loads with `trust_remote_code=True`.

${architecture_table}

## Intended uses

${intended_use}

## How to use

```python
${usage_snippet}
```

## Training data

${training_data}

## Training procedure

${training_procedure}

## Evaluation results

${evaluation}

## Limitations

- **LSH attention is random.** Hash rotations are drawn at random; unless the config sets
  `hash_seed`, they are redrawn on every forward pass, so repeated runs on the same input give
  slightly different outputs and losses.  More hash rounds (`num_hashes`) bring LSH attention
  closer to full attention at a proportional cost; report the rounds used with any evaluation.
- **Chunk boundaries in causal models.** In the paper's `chunk` window mode a query attends to
  every key of its own and the neighbouring chunks of the bucket-sorted sequence.  In a causal
  model, tokens added later change the sorted order and can move the chunk boundaries, so which
  earlier keys a position sees can depend on later tokens (it never attends to them).  Scores of
  a prefix, and token-by-token generation, need not then match a forward pass over the full
  sequence exactly.  The `bucket_window` mode (only same-bucket keys within a fixed window of
  preceding sorted positions) has no such dependence.  ${window_mode_note}
- **Length.** ${length_note}  Local attention layers see only nearby positions.
- **Scope.** The model reflects its training data; it is a research checkpoint and has not been
  evaluated for safety, bias or factual accuracy.

## Citation

```bibtex
@inproceedings{kitaev2020reformer,
  title     = {Reformer: The Efficient Transformer},
  author    = {Kitaev, Nikita and Kaiser, {\L}ukasz and Levskaya, Anselm},
  booktitle = {International Conference on Learning Representations},
  year      = {2020},
  url       = {https://openreview.net/forum?id=rkgNKkHtvB}
}
```
"""

BASE_TAGS = ("reformer", "lsh-attention", "long-context", "reformer_hf", "custom_code")

# pipeline tag -> (Auto class, what the model is for, the lines of the snippet after loading it)
PIPELINES = {
    "text-generation": (
        "AutoModelForCausalLM",
        "Causal language modeling on long sequences: scoring text (bits per byte or perplexity) "
        "and generating continuations, and research on efficient attention.",
        'inputs = tokenizer("The Reformer is", return_tensors="pt")\n'
        "output_ids = model.generate(**inputs, max_new_tokens=64, do_sample=True)\n"
        "print(tokenizer.decode(output_ids[0], skip_special_tokens=True))",
    ),
    "fill-mask": (
        "AutoModelForMaskedLM",
        "Masked language modeling on long sequences, and a starting point for fine-tuning an encoder.",
        'inputs = tokenizer("The Reformer is a model for long sequences.", return_tensors="pt")\n'
        "logits = model(**inputs).logits  # (batch, length, vocab_size)",
    ),
    "text-classification": (
        "AutoModelForSequenceClassification",
        "Classifying long documents into the labels of `config.id2label`.",
        'inputs = tokenizer("A long document to classify.", return_tensors="pt")\n'
        "label_id = model(**inputs).logits.argmax(-1).item()\n"
        "print(model.config.id2label[label_id])",
    ),
    "question-answering": (
        "AutoModelForQuestionAnswering",
        "Extractive question answering over long contexts.",
        'question = "Who wrote the Reformer paper?"\n'
        'context = "The Reformer was written by Kitaev, Kaiser and Levskaya."\n'
        'inputs = tokenizer(question, context, return_tensors="pt")\n'
        "outputs = model(**inputs)\n"
        "start, end = outputs.start_logits.argmax(-1).item(), outputs.end_logits.argmax(-1).item()\n"
        'print(tokenizer.decode(inputs["input_ids"][0, start : end + 1]))',
    ),
    "translation": (
        "AutoModelForSeq2SeqLM",
        "Sequence-to-sequence translation between the languages it was trained on.",
        'inputs = tokenizer("The house is wonderful.", return_tensors="pt")\n'
        "output_ids = model.generate(**inputs, max_new_tokens=64)\n"
        "print(tokenizer.decode(output_ids[0], skip_special_tokens=True))",
    ),
}

# The task head named in config.json's "architectures" decides the pipeline tag of a saved folder.
ARCHITECTURE_SUFFIX_TO_PIPELINE = {
    "ForCausalLM": "text-generation",
    "WithLMHead": "text-generation",
    "LMHeadModel": "text-generation",
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForConditionalGeneration": "translation",
    "ForSeq2SeqLM": "translation",
}

LICENSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
LANGUAGE_PATTERN = re.compile(r"^(?:[a-z]{2,3}(?:-[A-Za-z0-9]+)*|multilingual)$")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?$")
TAG_PATTERN = re.compile(r"^\S+$")


# ---------------------------------------------------------------- argument checks


def _check_string_list(where, value, pattern, allowed):
    """A string or a list/tuple of strings matching `pattern`, returned as a list; None -> []."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _invalid(where, value, f"expected a string or a list of strings ({allowed})")
    for item in items:
        if not isinstance(item, str) or not pattern.match(item):
            raise _invalid(where, value, f"every entry must be {allowed}; {item!r} is not")
    return list(items)


def _check_pipeline_tag(pipeline_tag):
    if pipeline_tag not in PIPELINES:
        raise _invalid("pipeline_tag", pipeline_tag, f"expected one of {sorted(PIPELINES)}")
    return pipeline_tag


def _check_hyperparameters(training_hyperparameters):
    if training_hyperparameters is None:
        return {}
    if not isinstance(training_hyperparameters, Mapping):
        raise _invalid("training_hyperparameters", training_hyperparameters,
                       "expected a dict mapping names to numbers, strings, booleans or lists of them")
    scalar = (str, int, float, bool, type(None))
    for name, value in training_hyperparameters.items():
        if not isinstance(name, str) or not name:
            raise _invalid("training_hyperparameters key", name, "expected a non-empty string")
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, scalar) for item in values):
            raise _invalid(f"training_hyperparameters[{name!r}]", value,
                           "expected a number, string, boolean, None or a list of them")
    return dict(training_hyperparameters)


def _check_num_parameters(num_parameters):
    if num_parameters is None:
        return None
    if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters < 0:
        raise _invalid("num_parameters", num_parameters, "expected a non-negative integer or None")
    return num_parameters


# ---------------------------------------------------------------- evaluation results


def _eval_result_objects(blocks, pipeline_tag):
    results = []
    for block in blocks:
        task, dataset = block.get("task", {}), block["dataset"]
        for metric in block["metrics"]:
            results.append(EvalResult(
                task_type=task.get("type", pipeline_tag),
                task_name=task.get("name"),
                dataset_type=dataset["type"],
                dataset_name=dataset.get("name", dataset["type"]),
                dataset_split=dataset["split"],
                dataset_config=dataset.get("config"),
                dataset_revision=dataset.get("revision"),
                metric_type=metric["type"],
                metric_name=metric.get("name", metric["type"]),
                metric_value=metric["value"],
            ))
    return results


# ---------------------------------------------------------------- reading the config


def _config_reader(config):
    if isinstance(config, Mapping):
        return config.get
    if hasattr(config, "to_dict"):
        return lambda key: getattr(config, key, None)
    raise _invalid("config", config, "expected a transformers PreTrainedConfig or a dict of config fields")


def _max_length(get):
    max_positions = get("max_position_embeddings")
    shape = get("axial_pos_shape")
    if get("axial_pos_embds") and isinstance(shape, (list, tuple)) and shape:
        covered = math.prod(shape)
        return covered if max_positions is None else min(max_positions, covered)
    return max_positions


def _describe_buckets(num_buckets):
    if num_buckets is None:
        return "chosen per forward pass from the sequence length (about 2 * length / chunk length)"
    if isinstance(num_buckets, (list, tuple)):
        return f"{' x '.join(map(str, num_buckets))} = {math.prod(num_buckets)} (factorised)"
    return str(num_buckets)


def _describe_window(get, prefix):
    length, before, after = (get(f"{prefix}_attn_chunk_length"), get(f"{prefix}_num_chunks_before"),
                             get(f"{prefix}_num_chunks_after"))
    if length is None:
        return None
    if before is None and after is None:
        return str(length)
    return f"{length} (window: own chunk, {before or 0} before, {after or 0} after)"


def _format_count(count):
    for divisor, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= divisor:
            return f"{count:,} ({count / divisor:.1f}{unit})"
    return f"{count:,}"


def _architecture_rows(get, num_parameters):
    layers = get("attn_layers")
    layers = [str(kind) for kind in layers] if isinstance(layers, (list, tuple)) else []
    rows = [("Model type", get("model_type"))]
    if layers:
        counts = ", ".join(f"{layers.count(kind)} {kind}" for kind in dict.fromkeys(layers))
        rows.append(("Layers (attention kind of each)", f"{len(layers)} ({counts}): {', '.join(layers)}"))
    else:
        rows.append(("Layers", get("num_hidden_layers")))
    heads, hidden, head_size = get("num_attention_heads"), get("hidden_size"), get("attention_head_size")
    if head_size is None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0:
        head_size = hidden // heads
    rows += [
        ("Hidden size", hidden),
        ("Attention heads", heads if head_size is None or heads is None else f"{heads} (head size {head_size})"),
        ("Feed-forward size", get("feed_forward_size")),
        ("Vocabulary size", get("vocab_size")),
    ]
    if "lsh" in layers:
        hash_seed = get("hash_seed")
        rows += [
            ("LSH hash rounds", get("num_hashes")),
            ("LSH buckets", _describe_buckets(get("num_buckets"))),
            ("LSH chunk length", _describe_window(get, "lsh")),
            ("LSH window mode", get("lsh_window_mode")),
            ("LSH hash rotations",
             "random, redrawn every forward pass" if hash_seed is None else f"fixed (hash_seed={hash_seed})"),
        ]
    if "local" in layers:
        local_window = _describe_window(get, "local")
        if local_window and get("local_attn_wrap_around"):
            local_window += "; chunks wrap around as a ring"
        rows.append(("Local attention chunk length", local_window))
    if get("reversible") is not None:
        stored = get("reversible_stored_layers")
        reversible = "yes" if not stored else f"yes, but the top {stored} (reversible_stored_layers={stored})"
        rows.append(("Reversible residual layers", reversible if get("reversible") else "no"))
    if get("axial_pos_embds"):
        shape, dims = get("axial_pos_shape"), get("axial_pos_embds_dim")
        shape_text = " x ".join(map(str, shape)) if isinstance(shape, (list, tuple)) else shape
        dims_text = " + ".join(map(str, dims)) if isinstance(dims, (list, tuple)) else dims
        rows.append(("Axial position embeddings", f"shape {shape_text}, dimensions {dims_text}"))
    elif get("axial_pos_embds") is not None:
        rows.append(("Axial position embeddings", "no"))
    rows.append(("Maximum length", _max_length(get)))
    if get("is_decoder") is not None:
        rows.append(("Causal (decoder)", "yes" if get("is_decoder") else "no"))
    if num_parameters is not None:
        rows.append(("Parameters", _format_count(num_parameters)))
    return [(name, value) for name, value in rows if value is not None]


def _window_mode_note(get, layers):
    if not isinstance(layers, (list, tuple)) or "lsh" not in layers:
        return "This model has no LSH layers, so this does not apply to it."
    mode = get("lsh_window_mode")
    if mode is None and get("model_type") == "reformer":
        mode = "chunk"  # transformers' built-in Reformer has only the paper's chunk rule
    if mode is None:
        return "The config does not record which window mode this model uses."
    causal = " and it is causal" if get("is_decoder") else ""
    return f"This model uses `{mode}` mode{causal}."


# ---------------------------------------------------------------- rendering


def _cell(value):
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(item) for item in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _evaluation_section(blocks):
    if not blocks:
        return "No evaluation results were reported for this checkpoint."
    rows = []
    for block in blocks:
        dataset = block["dataset"]
        name = dataset.get("name", dataset["type"])
        if dataset.get("config"):
            name = f"{name} ({dataset['config']})"
        for metric in block["metrics"]:
            rows.append((metric.get("name", metric["type"]), metric["value"], name, dataset["split"]))
    return (_table(("Metric", "Value", "Dataset", "Split"), rows)
            + "\n\nThe same numbers are in this card's `model-index` metadata.  LSH attention is random, "
            "so a re-evaluation without a fixed `hash_seed` gives slightly different values.")


def make_model_card(
    config,
    eval_results=None,
    *,
    model_name,
    pipeline_tag="text-generation",
    datasets=None,
    license="apache-2.0",
    training_hyperparameters=None,
    training_data=None,
    language=None,
    extra_tags=(),
    num_parameters=None,
    repo_id=None,
):
    """Build a `huggingface_hub.ModelCard` for a Reformer checkpoint.

    config: a transformers `PreTrainedConfig` or a dict of its fields (missing fields are left out).
    eval_results: evaluation results (see the module docstring), a path to them as JSON, or None.
    model_name: the card's title and the model-index name.  pipeline_tag: one of `PIPELINES`; it
    picks the Auto class of the usage snippet.  datasets: Hub dataset ids of the training data.
    training_hyperparameters: a dict shown as a table.  training_data: free text on the data.
    language: ISO code(s).  extra_tags: tags added to `BASE_TAGS`.  num_parameters: the count to
    report.  repo_id: the id used in the snippet (defaults to model_name).
    Every argument is checked before anything is rendered; a bad one raises ValueError.
    """
    get = _config_reader(config)
    model_name = _check_text("model_name", model_name)
    repo_id = model_name if repo_id is None else _check_text("repo_id", repo_id)
    pipeline_tag = _check_pipeline_tag(pipeline_tag)
    datasets = _check_string_list("datasets", datasets, HUB_ID_PATTERN,
                                  "a Hub dataset id such as 'enwik8' or 'org/name'")
    if not isinstance(license, str) or not LICENSE_PATTERN.match(license):
        raise _invalid("license", license, "expected a Hub license id such as 'apache-2.0', 'mit' or 'cc-by-4.0'")
    languages = _check_string_list("language", language, LANGUAGE_PATTERN, "an ISO 639 code such as 'en' or 'de'")
    if isinstance(extra_tags, str):
        raise _invalid("extra_tags", extra_tags, "expected a list of tags, not a single string")
    extra_tags = _check_string_list("extra_tags", list(extra_tags or ()), TAG_PATTERN, "a tag without whitespace")
    hyperparameters = _check_hyperparameters(training_hyperparameters)
    if training_data is not None and (not isinstance(training_data, str) or not training_data.strip()):
        raise _invalid("training_data", training_data, "expected a non-empty string or None")
    num_parameters = _check_num_parameters(num_parameters)
    blocks = load_eval_results(eval_results)

    eval_objects = _eval_result_objects(blocks, pipeline_tag)
    card_data = ModelCardData(
        language=languages or None,
        license=license,
        library_name="transformers",
        tags=list(dict.fromkeys([*BASE_TAGS, *extra_tags])),
        datasets=datasets or None,
        metrics=list(dict.fromkeys(result.metric_type for result in eval_objects)) or None,
        pipeline_tag=pipeline_tag,
        model_name=model_name if eval_objects else None,
        eval_results=eval_objects or None,
    )

    auto_class, intended_use, usage = PIPELINES[pipeline_tag]
    snippet = (f"from transformers import {auto_class}, AutoTokenizer\n\n"
               f'repo_id = "{repo_id}"\n'
               "tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)\n"
               f"model = {auto_class}.from_pretrained(repo_id, trust_remote_code=True)\n\n{usage}")
    layers = get("attn_layers")
    layer_count = len(layers) if isinstance(layers, (list, tuple)) else get("num_hidden_layers")
    size = f" with {_format_count(num_parameters)} parameters" if num_parameters is not None else ""
    depth = f"{layer_count}-layer " if layer_count else ""
    summary = f"`{model_name}` is a {depth}Reformer for `{pipeline_tag}`{size}."
    data_lines = [training_data.strip()] if training_data else []
    if datasets:
        data_lines.append("Datasets:\n\n" + "\n".join(f"- `{dataset}`" for dataset in datasets))
    max_length = _max_length(get)
    length_note = (f"Position embeddings cover at most {max_length} positions; longer inputs are not supported."
                   if max_length is not None else "Inputs longer than the configured maximum are not supported.")

    content = string.Template(CARD_TEMPLATE).substitute(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        summary=summary,
        architecture_table=_table(("Setting", "Value"), _architecture_rows(get, num_parameters)),
        intended_use=intended_use,
        usage_snippet=snippet,
        training_data="\n\n".join(data_lines) or "Not documented.",
        training_procedure=(_table(("Hyper-parameter", "Value"), hyperparameters.items())
                            if hyperparameters else "Hyper-parameters were not documented."),
        evaluation=_evaluation_section(blocks),
        window_mode_note=_window_mode_note(get, layers),
        length_note=length_note,
    )
    return ModelCard(content)


# ---------------------------------------------------------------- saved folders


def count_safetensors_parameters(folder):
    """Number of parameters stored in a folder's model.safetensors (or its shards), read from the
    file headers alone; None when the folder has no safetensors weights."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shard_names = ["model.safetensors"]
    else:
        return None
    total = 0
    for name in shard_names:
        with open(folder / name, "rb") as handle:
            # safetensors layout: little-endian u64 header size, then a JSON header of tensor shapes
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def pipeline_tag_for_config(config_dict):
    """The pipeline tag of the first task head in `architectures`, else 'text-generation'."""
    for architecture in config_dict.get("architectures") or ():
        for suffix, pipeline_tag in ARCHITECTURE_SUFFIX_TO_PIPELINE.items():
            if architecture.endswith(suffix):
                return pipeline_tag
    return "text-generation"


def write_model_card(folder, eval_results=None, *, model_name=None, pipeline_tag=None, num_parameters=None, **options):
    """Build the card of a saved model folder from its config.json and write it as README.md.

    model_name defaults to the folder's name, pipeline_tag to the one of the saved task head,
    num_parameters to the count in the safetensors weights; `options` are the other keyword
    arguments of `make_model_card`.  Returns the path of the README.md written.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"folder={str(folder)!r} has no config.json: expected a folder written by "
                                "save_pretrained.")
    config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    card = make_model_card(
        config_dict,
        eval_results,
        model_name=folder.resolve().name if model_name is None else model_name,
        pipeline_tag=pipeline_tag_for_config(config_dict) if pipeline_tag is None else pipeline_tag,
        num_parameters=count_safetensors_parameters(folder) if num_parameters is None else num_parameters,
        **options,
    )
    readme = folder / "README.md"
    card.save(readme)
    return readme


if __name__ == "__main__":
    print(CARD_TEMPLATE, end="")
