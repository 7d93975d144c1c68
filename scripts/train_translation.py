"""Train the reversible encoder-decoder Reformer for translation with accelerate; report SacreBLEU.

    # WMT14 En-De from the Hub (where it is reachable), the paper's base model
    python scripts/train_translation.py --dataset wmt14 --preset wmt14-base --vocab-size 32000 \
        --max-tokens 8192 --max-steps 100000 --mixed-precision bf16 --output-dir runs/wmt14-base
    # a local WMT14-format data set (save_to_disk folder, .json or .jsonl rows
    # {"translation": {"en": ..., "de": ...}}), for a few minutes, and the same model without
    # reversible layers for comparison
    python scripts/train_translation.py --dataset pairs.jsonl --preset small --time-budget 240 \
        --mixed-precision bf16 --output-dir runs/rev
    python scripts/train_translation.py --dataset pairs.jsonl --preset small --max-steps N \
        --tokenizer runs/rev/final --no-reversible --mixed-precision bf16 --output-dir runs/plain
    # gettext catalogs (.mo files under a folder) instead of a data set
    python scripts/train_translation.py --gettext-dir DIR --preset small ...

A data set without validation and test splits is split by source sentence
(`split_translation_dataset`).  One byte-level BPE vocabulary is trained on both languages of the
training split (or loaded with --tokenizer).  Batches hold pairs of similar length up to
--max-tokens (padded) tokens and are shuffled per epoch as a function of --seed.  The validation
loss picks the best weights; the end of training translates the test split with beam search
and scores it with SacreBLEU (evaluate, through the offline metric script
scripts/metrics/sacrebleu), next to the copy-the-source baseline.  OUTPUT_DIR gets metrics.jsonl,
results.json, test translations and final/ (save_pretrained model, tokenizer, model card).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

PRESET_NAMES = ("tiny", "small", "wmt14-base", "wmt14-base-untied", "wmt14-big")
SCHEDULERS = ("inverse_sqrt", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("no", "bf16", "fp16")
SACREBLEU_METRIC = Path(__file__).resolve().parent / "metrics" / "sacrebleu"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (exactly one of --dataset and --gettext-dir)")
    data.add_argument("--dataset", help="WMT14-format data: a save_to_disk folder, a .json/.jsonl file, or a Hub name")
    data.add_argument("--dataset-config", help="Hub config name (default: derived from the languages, e.g. de-en)")
    data.add_argument("--gettext-dir", help="folder of gettext .mo catalogs (English msgid -> translated msgstr)")
    data.add_argument("--source-lang", default="en")
    data.add_argument("--target-lang", default="de")
    data.add_argument("--validation-size", type=float, default=0.05,
                      help="held-out share (or row count when >= 1) where the data has no validation split")
    data.add_argument("--test-size", type=float, default=0.05, help="the same for the test split")
    data.add_argument("--max-length", type=int, default=128,
                      help="training pairs with more tokens on either side are left out (and counted)")
    tokenizer = parser.add_argument_group("tokenizer")
    tokenizer.add_argument("--tokenizer", help="a saved tokenizer folder instead of training one")
    tokenizer.add_argument("--vocab-size", type=int, default=8000, help="shared BPE vocabulary size")
    tokenizer.add_argument("--bpe-min-frequency", type=int, default=2)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="small", choices=PRESET_NAMES, help="named encoder-decoder configuration")
    model.add_argument("--config-overrides", default="",
                       help='ReformerConfig fields, e.g. "hidden_dropout_prob=0.2,decoder_attn_layers=[\\"local\\"]"')
    model.add_argument("--no-reversible", action="store_true", help="plain residual layers (the comparison model)")
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--max-tokens", type=int, default=4096, help="padded tokens (per side) in a batch, per process")
    train.add_argument("--max-steps", type=int, default=100000, help="optimizer steps at most")
    train.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lr-scheduler", default="inverse_sqrt", choices=SCHEDULERS)
    train.add_argument("--warmup-steps", type=int, default=400)
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument("--mixed-precision", default="no", choices=PRECISIONS)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    evaluation = parser.add_argument_group("evaluation and logs")
    evaluation.add_argument("--eval-steps", type=int, default=200,
                            help="validation loss every N steps, keeping the best weights (0: only at the end)")
    evaluation.add_argument("--num-beams", type=int, default=4)
    evaluation.add_argument("--length-penalty", type=float, default=0.6)
    evaluation.add_argument("--max-new-tokens", type=int, default=128, help="longest generated translation")
    evaluation.add_argument("--eval-batch-size", type=int, default=64, help="sentences per generation batch")
    evaluation.add_argument("--max-eval-pairs", type=int, default=None,
                            help="translate at most this many test pairs (default: all)")
    evaluation.add_argument("--log-steps", type=int, default=50)
    evaluation.add_argument("--no-final-model", action="store_true", help="skip the save_pretrained folder")
    return parser


def check_args(parser, args):
    """Every argument error, raised through the parser before anything is loaded."""
    if (args.dataset is None) == (args.gettext_dir is None):
        parser.error("give exactly one of --dataset PATH_OR_NAME and --gettext-dir DIR")
    if args.gettext_dir is not None and not Path(args.gettext_dir).is_dir():
        parser.error(f"--gettext-dir={args.gettext_dir!r} is not a folder")
    if args.tokenizer is not None and not (Path(args.tokenizer) / "tokenizer_config.json").is_file():
        parser.error(f"--tokenizer={args.tokenizer!r} is not a saved tokenizer folder (no tokenizer_config.json)")
    for name in ("max_tokens", "max_steps", "num_beams", "max_new_tokens", "eval_batch_size", "log_steps",
                 "bpe_min_frequency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    for name in ("warmup_steps", "eval_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    if args.max_length < 2:
        parser.error(f"--max-length={args.max_length} must be >= 2 (a token and the end of sentence)")
    if args.max_tokens < args.max_length:
        parser.error(f"--max-tokens={args.max_tokens} must be >= --max-length={args.max_length}: "
                     "a batch must hold the longest pair")
    if args.vocab_size < 260:
        parser.error(f"--vocab-size={args.vocab_size} must be >= 260 (4 specials + 256 byte symbols)")
    for name in ("validation_size", "test_size"):
        value = getattr(args, name)
        if value <= 0 or (value >= 1 and value != int(value)):
            parser.error(f"--{name.replace('_', '-')}={value} must be a fraction in (0, 1) or a row count >= 1")
    if args.lr <= 0:
        parser.error(f"--lr={args.lr} must be > 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing={args.label_smoothing} must lie in [0, 1)")
    if args.max_grad_norm < 0 or args.weight_decay < 0:
        parser.error("--max-grad-norm and --weight-decay must be >= 0")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget={args.time_budget} must be > 0 seconds")
    if args.max_eval_pairs is not None and args.max_eval_pairs < 1:
        parser.error(f"--max-eval-pairs={args.max_eval_pairs} must be >= 1")
    from reformer_hf.output_lock import OutputDirLocked, check_output_dir

    output = Path(args.output_dir)
    try:
        check_output_dir(output)
    except (NotADirectoryError, OutputDirLocked) as error:
        parser.error(str(error))
    if output.is_dir() and any(output.iterdir()):
        parser.error(f"--output-dir={args.output_dir!r} is not empty; choose a new folder")


def build_config(parser, args, tokenizer=None):
    """The model's config for `tokenizer`'s vocabulary; without one (the check before any work),
    for --vocab-size and the BPE tokenizer's special ids (pad 0, bos 1, eos 2)."""
    from reformer_hf.seq2seq import translation_config
    from reformer_hf.training import parse_overrides

    try:
        overrides = parse_overrides(args.config_overrides)
        if tokenizer is None:
            token_ids = dict(vocab_size=args.vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             decoder_start_token_id=0)
        else:
            token_ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             decoder_start_token_id=tokenizer.pad_token_id)
        config = translation_config(args.preset, **{**token_ids, **overrides})
    except ValueError as error:
        parser.error(str(error))
    if args.no_reversible:
        config.reversible = False
    longest = max(args.max_length, args.max_new_tokens + 1)
    if longest > config.max_sequence_length:
        parser.error(f"--max-length/--max-new-tokens need {longest} positions but preset {args.preset!r} has "
                     f"{config.max_sequence_length}; lower them or raise max_position_embeddings")
    return config


def load_splits(parser, args):
    """{"train", "validation", "test"} Datasets of WMT14-format rows."""
    import datasets

    from reformer_hf.data import load_gettext_pairs, load_translation_dataset, split_translation_dataset

    try:
        if args.gettext_dir is not None:
            loaded = datasets.DatasetDict({"train": load_gettext_pairs(args.gettext_dir, args.source_lang,
                                                                       args.target_lang)})
        else:
            loaded = load_translation_dataset(args.dataset, args.source_lang, args.target_lang,
                                              config_name=args.dataset_config)
        if "train" not in loaded:
            parser.error(f"the data set has no 'train' split (splits: {list(loaded)})")
        if "validation" in loaded and "test" in loaded:
            return datasets.DatasetDict({name: loaded[name] for name in ("train", "validation", "test")})
        sizes = [int(size) if size >= 1 else size for size in (args.validation_size, args.test_size)]
        return split_translation_dataset(loaded["train"], validation_size=sizes[0], test_size=sizes[1],
                                         seed=args.seed, source_lang=args.source_lang)
    except (OSError, ValueError) as error:
        parser.error(str(error))


def build_tokenizer(args, train_split):
    from transformers import AutoTokenizer

    from reformer_hf.data import translation_texts
    from reformer_hf.tokenization import train_bpe_tokenizer

    if args.tokenizer is not None:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    texts = translation_texts(train_split, (args.source_lang, args.target_lang))
    return train_bpe_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.bpe_min_frequency)


def encode_pairs(tokenizer, split, args):
    """[(source_ids, target_ids)] of a split; both end with the end-of-sentence token."""
    pairs = split["translation"]
    sources = tokenizer([pair[args.source_lang] for pair in pairs]).input_ids
    targets = tokenizer([pair[args.target_lang] for pair in pairs]).input_ids
    return list(zip(sources, targets))


def length_batches(pairs, max_tokens, seed):
    """Index lists of pairs of similar length, each at most `max_tokens` padded tokens per side, in
    a random order drawn from `seed`.  Ties in length are broken at random too, so every epoch
    (a new seed) groups pairs differently."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.array([max(len(source), len(target)) for source, target in pairs])
    order = np.lexsort((rng.random(len(pairs)), lengths))
    batches, current, longest = [], [], 0
    for index in order.tolist():
        new_longest = max(longest, int(lengths[index]))
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], int(lengths[index])
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(pairs, indices, pad_token_id, device):
    """Right-padded input_ids, attention_mask and labels (-100 on padding) of the pairs `indices`."""
    import torch

    sources = [pairs[i][0] for i in indices]
    targets = [pairs[i][1] for i in indices]
    source_length, target_length = max(map(len, sources)), max(map(len, targets))
    input_ids = torch.full((len(indices), source_length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(indices), target_length), -100, dtype=torch.long)
    for row, (source, target) in enumerate(zip(sources, targets)):
        input_ids[row, : len(source)] = torch.tensor(source)
        labels[row, : len(target)] = torch.tensor(target)
    # From the lengths, not from comparing with pad_token_id: a source may contain that token as text.
    source_lengths = torch.tensor([len(source) for source in sources])
    attention_mask = (torch.arange(source_length)[None, :] < source_lengths[:, None]).long()
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


def smoothed_loss(logits, labels, label_smoothing):
    """Token-mean cross-entropy (float32) with label smoothing; -100 labels are ignored."""
    import torch

    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100, label_smoothing=label_smoothing)


def validation_loss(accelerator, model, pairs, args, pad_token_id):
    """Token-mean cross-entropy (no smoothing) over a split, batched by length; dropout off."""
    import torch

    from reformer_hf.training import evaluating

    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    batches = length_batches(pairs, args.max_tokens, seed=0)
    with evaluating(accelerator, model) as unwrapped:
        for indices in batches[accelerator.process_index :: accelerator.num_processes]:
            batch = collate(pairs, indices, pad_token_id, accelerator.device)
            with accelerator.autocast():
                logits = unwrapped(**batch, use_cache=False).logits
            n_tokens = (batch["labels"] != -100).sum()
            loss_sum += smoothed_loss(logits, batch["labels"], 0.0).double() * n_tokens
            count += n_tokens
    loss_sum, count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(count, "sum")
    return (loss_sum / count.clamp(min=1)).item()


def translate(accelerator, model, tokenizer, sources, args):
    """Beam-search translations of `sources` (list of str), in their order; shared among the processes."""
    from accelerate.utils import gather_object

    from reformer_hf.training import evaluating

    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    mine = order[accelerator.process_index :: accelerator.num_processes]
    results = []
    with evaluating(accelerator, model) as unwrapped:
        for start in range(0, len(mine), args.eval_batch_size):
            indices = mine[start : start + args.eval_batch_size]
            batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True).to(accelerator.device)
            with accelerator.autocast():
                generated = unwrapped.generate(**batch, num_beams=args.num_beams, length_penalty=args.length_penalty,
                                               max_new_tokens=args.max_new_tokens)
            results.extend(zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)))
    translations = [None] * len(sources)
    for index, text in gather_object(results):
        translations[index] = text
    return translations


def sacrebleu_score(predictions, references):
    import evaluate

    metric = evaluate.load(str(SACREBLEU_METRIC))
    return metric.compute(predictions=predictions, references=[[reference] for reference in references])["score"]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    build_config(parser, args)
    splits = load_splits(parser, args)

    import torch

    from reformer_hf.output_lock import OutputDirLocked
    from reformer_hf.training import make_accelerator, output_dir_lock

    accelerator = make_accelerator(args.mixed_precision, cpu=args.cpu or not torch.cuda.is_available())
    try:
        with output_dir_lock(accelerator, args.output_dir):
            return train(parser, args, accelerator, splits)
    except OutputDirLocked as error:
        parser.error(str(error))


def train(parser, args, accelerator, splits):
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from reformer_hf.seq2seq import ReformerForConditionalGeneration
    from reformer_hf.training import MetricsLog, optimizer_step, stop_on_every_process

    torch.backends.cuda.matmul.allow_tf32 = True
    output_dir = Path(args.output_dir)
    set_seed(args.seed)

    tokenizer = build_tokenizer(args, splits["train"])
    config = build_config(parser, args, tokenizer)
    encoded = {name: encode_pairs(tokenizer, split, args) for name, split in splits.items()}
    train_pairs = [pair for pair in encoded["train"] if max(map(len, pair)) <= args.max_length]
    dropped = len(encoded["train"]) - len(train_pairs)
    accelerator.print(f"pairs: {len(train_pairs)} train ({dropped} longer than --max-length={args.max_length} left "
                      f"out), {len(encoded['validation'])} validation, {len(encoded['test'])} test; "
                      f"vocabulary {len(tokenizer)}; reversible={config.reversible}")

    model = ReformerForConditionalGeneration(config)
    num_parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9,
                                  weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = MetricsLog(output_dir, enabled=accelerator.is_main_process, tensorboard=False)
    if accelerator.is_main_process:
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2), encoding="utf-8")
    pad_token_id = tokenizer.pad_token_id

    step, epoch, elapsed, tokens = 0, 0, 0.0, 0
    best = {"loss": math.inf, "step": 0, "state": None}

    def keep_if_best(loss):
        if loss < best["loss"]:
            state = accelerator.unwrap_model(model).state_dict()
            best.update(loss=loss, step=step, state={key: value.detach().cpu().clone() for key, value in state.items()})

    model.train()
    session_start = time.perf_counter()
    out_of_time = False
    while step < args.max_steps and not out_of_time:
        batches = length_batches(train_pairs, args.max_tokens, seed=args.seed * 100003 + epoch)
        # Every process takes the same number of batches, so that DDP's collective calls line up.
        usable = len(batches) - len(batches) % accelerator.num_processes
        for indices in batches[accelerator.process_index : usable : accelerator.num_processes]:
            step_start = time.perf_counter()
            batch = collate(train_pairs, indices, pad_token_id, accelerator.device)
            decoder_input_ids = accelerator.unwrap_model(model).prepare_decoder_input_ids_from_labels(batch["labels"])
            with accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               decoder_input_ids=decoder_input_ids, use_cache=False).logits
                loss = smoothed_loss(logits, batch["labels"], args.label_smoothing)
            accelerator.backward(loss)
            optimizer_step(accelerator, model, optimizer, scheduler, args.max_grad_norm)
            step += 1
            tokens += int((batch["labels"] != -100).sum()) * accelerator.num_processes
            step_loss = accelerator.reduce(loss.detach(), "mean").item()
            elapsed += time.perf_counter() - step_start

            values = {}
            if step % args.log_steps == 0:
                values.update(loss=step_loss, lr=scheduler.get_last_lr()[0], epoch=epoch, target_tokens=tokens,
                              elapsed_seconds=elapsed, target_tokens_per_second=tokens / elapsed)
            if args.eval_steps and step % args.eval_steps == 0:
                values["validation_loss"] = validation_loss(accelerator, model, encoded["validation"], args,
                                                            pad_token_id)
                keep_if_best(values["validation_loss"])
                accelerator.print(f"step {step} (epoch {epoch}, {elapsed:.0f}s): train loss {step_loss:.3f}, "
                                  f"validation loss {values['validation_loss']:.3f}")
            if values:
                metrics.log(step, values)
            out_of_time = args.time_budget is not None and stop_on_every_process(
                time.perf_counter() - session_start >= args.time_budget, accelerator.device)
            if step >= args.max_steps or out_of_time:
                break
        epoch += 1

    final_loss = validation_loss(accelerator, model, encoded["validation"], args, pad_token_id)
    keep_if_best(final_loss)
    accelerator.unwrap_model(model).load_state_dict(best["state"])
    accelerator.print(f"trained {step} steps ({epoch} epochs started) in {elapsed:.1f}s; best validation loss "
                      f"{best['loss']:.4f} at step {best['step']}")
    finish(args, accelerator, model, tokenizer, splits, metrics, dict(
        steps=step, epochs_started=epoch, train_seconds=round(elapsed, 2), target_tokens=tokens,
        best_step=best["step"], best_validation_loss=best["loss"], reversible=config.reversible,
        num_parameters=num_parameters, train_pairs=len(train_pairs), dropped_long_pairs=dropped,
        vocab_size=len(tokenizer), processes=accelerator.num_processes, mixed_precision=args.mixed_precision,
        device=torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu",
    ))
    metrics.close()
    accelerator.end_training()
    return 0


def finish(args, accelerator, model, tokenizer, splits, metrics, summary):
    """Test BLEU (beam search) and the copy-source baseline; results.json; the final model folder."""
    test = splits["test"]
    if args.max_eval_pairs is not None:
        test = test.select(range(min(args.max_eval_pairs, len(test))))
    sources = [pair[args.source_lang] for pair in test["translation"]]
    references = [pair[args.target_lang] for pair in test["translation"]]
    eval_start = time.perf_counter()
    hypotheses = translate(accelerator, model, tokenizer, sources, args)
    results = {
        **summary,
        "test_pairs": len(sources),
        "test_bleu": sacrebleu_score(hypotheses, references),
        "copy_source_test_bleu": sacrebleu_score(sources, references),
        "decoding": {"num_beams": args.num_beams, "length_penalty": args.length_penalty,
                     "max_new_tokens": args.max_new_tokens},
        "eval_seconds": round(time.perf_counter() - eval_start, 2),
    }
    metrics.log(summary["steps"], {key: results[key] for key in ("test_bleu", "copy_source_test_bleu")})
    accelerator.print(f"test BLEU {results['test_bleu']:.2f} (copying the source: "
                      f"{results['copy_source_test_bleu']:.2f}) on {len(sources)} pairs")
    from reformer_hf.training import gather_state_dict

    state_dict = None if args.no_final_model else gather_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    output_dir = Path(args.output_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with open(output_dir / "test_translations.jsonl", "w", encoding="utf-8") as handle:
        for source, reference, hypothesis in zip(sources, references, hypotheses):
            handle.write(json.dumps({"source": source, "reference": reference, "hypothesis": hypothesis},
                                    ensure_ascii=False) + "\n")
    if not args.no_final_model:
        save_final_model(args, accelerator, model, state_dict, tokenizer, results)
    accelerator.wait_for_everyone()


def save_final_model(args, accelerator, model, state_dict, tokenizer, results):
    from reformer_hf.model_card import write_model_card

    final_dir = Path(args.output_dir) / "final"
    unwrapped = accelerator.unwrap_model(model)
    # The pipeline and generate() then decode as the reported BLEU was decoded.
    unwrapped.generation_config.update(num_beams=args.num_beams, length_penalty=args.length_penalty,
                                       max_new_tokens=args.max_new_tokens)
    unwrapped.save_pretrained(final_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(final_dir)
    dataset_name = args.dataset if args.dataset is not None else "gettext catalogs"
    from_hub = args.dataset is not None and not Path(args.dataset).exists()
    dataset = {"type": args.dataset if from_hub else "translation-pairs", "name": str(dataset_name),
               "split": "test"}
    task = {"type": "translation", "name": f"Translation {args.source_lang}-{args.target_lang}"}
    eval_results = [
        {"task": task, "dataset": dataset, "metrics": [{"type": "bleu", "value": round(results["test_bleu"], 2),
                                                        "name": "SacreBLEU"}]},
    ]
    (final_dir / "eval_results.json").write_text(json.dumps(eval_results, indent=2), encoding="utf-8")
    write_model_card(
        final_dir, eval_results, model_name=final_dir.parent.resolve().name, pipeline_tag="translation",
        datasets=[args.dataset] if from_hub else None, language=[args.source_lang, args.target_lang],
        training_data=(f"{results['train_pairs']} {args.source_lang}-{args.target_lang} sentence pairs from "
                       f"{dataset_name}; SacreBLEU on {results['test_pairs']} held-out test pairs with beam search "
                       f"({args.num_beams} beams, length penalty {args.length_penalty}).  Copying the source "
                       f"scores {results['copy_source_test_bleu']:.2f} BLEU on the same pairs."),
        training_hyperparameters={
            "preset": args.preset, "reversible": results["reversible"], "steps": results["steps"],
            "tokens per batch (per side)": args.max_tokens, "learning rate": args.lr,
            "scheduler": args.lr_scheduler, "warmup steps": args.warmup_steps,
            "label smoothing": args.label_smoothing, "mixed precision": args.mixed_precision,
            "processes": accelerator.num_processes, "training seconds": results["train_seconds"],
        },
    )
    accelerator.print(f"saved {final_dir}")


if __name__ == "__main__":
    sys.exit(main())
