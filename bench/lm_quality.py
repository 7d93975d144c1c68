"""Byte-level LM quality per GPU-second: this package's Reformer against a dense model of the same size.

    # on the GPU: each model trains --budget seconds, back to back, on the same byte stream in the same order
    PYTHONPATH=. python bench/lm_quality.py --corpus-archive data_cache/lm_quality/corpus.tar.xz \\
        --seq-len 16384 --models reformer,llama --budget 480 --out DIR
    # or one model a call (RUN1 with --models reformer, RUN2 with --models llama), merged without a GPU
    PYTHONPATH=. python bench/lm_quality.py --report-only --models reformer,llama --from RUN1 RUN2 --out DIR
    PYTHONPATH=. python bench/lm_quality.py --smoke --out DIR     # toy sizes on the CPU (tests this script)

Data: the documents of a corpus archive (tar, any compression) or folder: Debian's python3.11-doc
HTML and the Python standard library's sources, made once where the package mirror is reachable:

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/doc
    mkdir -p corpus/docs corpus/stdlib data_cache/lm_quality
    (cd /tmp/doc/usr/share/doc/python3.11/html && find . -name '*.html' -exec cp --parents {} "$OLDPWD/corpus/docs" \\;)
    (cd "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" && \
        find . -name '*.py' -not -path './site-packages/*' -exec cp --parents {} "$OLDPWD/corpus/stdlib" \\;)
    tar -C corpus -cJf data_cache/lm_quality/corpus.tar.xz docs stdlib   # 8.6 MB; 2320 documents, 82 MB

Each document goes to training or held out by a hash of its name (--held-out
per mille), so no document is in both; the held-out documents must hold --min-held-out-bytes (2M by
default).  Training windows are drawn from the training stream as a pure function of (--seed,
index) (`reformer_hf.data.RandomByteWindows`): every model sees the same windows in the same order.

Models (--models, in the order given):
  reformer  the `lm-6layer-16k` preset (6 layers, d_model 512, 4 heads of 128, d_ff 2048, local and
            LSH layers alternating), axial positions sized for --seq-len; --reformer-overrides on top
  full      the same with every layer "full" (SDPA)
  llama     LlamaForCausalLM with SDPA: 6 layers, d_model 512, 4 heads of 128, SwiGLU MLP of 1376
            (the same matrix parameters within 1%), rotary positions, untied embeddings

Recipe, the same for every model: AdamW (betas 0.9, 0.98, weight decay --weight-decay), --lr with
--warmup-steps of linear warm-up then constant, gradient clipping at 1, --tokens-per-step tokens per
step (batch = tokens / seq-len), bf16 autocast over float32 weights, dropout off.  Each model trains
for --budget seconds of training steps (evaluation excluded).  Every --eval-every-tokens tokens it is
evaluated on the first --curve-eval-bytes held-out bytes (the same bytes for every model and every
point, so points at equal tokens compare directly); at the end on every held-out window.

Writes DIR/lm_quality.jsonl (a first row with the environment, the arguments and the data split,
then every log row: model, step, tokens, seconds, loss, evaluations), DIR/lm_quality.md (budget,
parameters, steps/s, tokens/s, held-out bpb at equal time and at equal tokens, the models' ratios,
the command) and DIR/lm_quality.png (held-out bpb against tokens and against seconds).  A run
writes to a folder of its own.  Runs made apart (one model each, where one call cannot hold two
budgets) are merged and reported by --report-only, without a corpus or a GPU; runs that differ in
an argument the comparison rests on (--seq-len, --tokens-per-step, --budget, ..., the data split,
the device) are refused.
"""

import argparse
import hashlib
import math
import os
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import JsonLines, environment  # noqa: E402
from lm_quality_report import merge_runs, write_report  # noqa: E402

from reformer_hf import ReformerForCausalLM  # noqa: E402
from reformer_hf.data import RandomByteWindows  # noqa: E402
from reformer_hf.tokenization import BYTE_ID_OFFSET  # noqa: E402
from reformer_hf.training import bits_per_byte, preset_config  # noqa: E402

MODEL_KINDS = ("reformer", "full", "llama")
DOCUMENT_SUFFIXES = (".html", ".py")
LLAMA_MLP = 1376  # 3 x 512 x 1376 = 2.11M matrix parameters per layer against the Reformer's 2 x 512 x 2048 = 2.10M


# ------------------------------------------------------------------------------------- data


def read_documents(source):
    """{name: bytes} of every .html and .py document in a tar archive or under a folder."""
    source = Path(source)
    documents = {}
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.suffix in DOCUMENT_SUFFIXES:
                documents[str(path.relative_to(source))] = path.read_bytes()
    else:
        with tarfile.open(source) as archive:  # members are read as data, never extracted
            for member in archive:
                if member.isfile() and member.name.endswith(DOCUMENT_SUFFIXES):
                    documents[member.name] = archive.extractfile(member).read()
    if not documents:
        raise ValueError(f"{source} holds no {DOCUMENT_SUFFIXES} documents")
    return documents


def corpus_digest(documents):
    """SHA-1 over the documents' names and bytes, in name order: two runs on the same corpus share it."""
    digest = hashlib.sha1()
    for name in sorted(documents):
        digest.update(f"{name}\0{len(documents[name])}\0".encode())
        digest.update(documents[name])
    return digest.hexdigest()


def is_held_out(name, per_mille):
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000 < per_mille


def split_documents(documents, per_mille):
    """(training stream, held-out stream): documents in name order, joined by newlines."""
    train = [documents[name] for name in sorted(documents) if not is_held_out(name, per_mille)]
    held_out = [documents[name] for name in sorted(documents) if is_held_out(name, per_mille)]
    return b"\n".join(train), b"\n".join(held_out)


# ------------------------------------------------------------------------------------ models


def axial_shape(length):
    power = int(math.log2(length))
    return [2 ** (power - power // 2), 2 ** (power // 2)]


def reformer_config(seq_len, every_layer=None, overrides=None):
    """The lm-6layer-16k preset at seq_len with overrides; with `every_layer`, that kind in every layer."""
    fields = {"axial_pos_shape": axial_shape(seq_len), "max_position_embeddings": seq_len, **(overrides or {})}
    config = preset_config("lm-6layer-16k", fields)
    if every_layer:
        config = preset_config("lm-6layer-16k", {**fields, "attn_layers": [every_layer] * len(config.attn_layers)})
    return config


def llama_model(seq_len, size):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["d_model"], intermediate_size=size["llama_mlp"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], head_dim=size["d_model"] // size["heads"],
                         max_position_embeddings=seq_len, tie_word_embeddings=False, use_cache=False,
                         attention_dropout=0.0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def build_model(kind, seq_len, size, reformer_overrides):
    if kind == "llama":
        return llama_model(seq_len, size)
    overrides = {**size.get("reformer_overrides", {}), **reformer_overrides}
    return ReformerForCausalLM(reformer_config(seq_len, "full" if kind == "full" else None, overrides))


def matrix_parameters(model):
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


# ---------------------------------------------------------------------------------- training


def held_out_windows(held_out, seq_len):
    """(n_windows, seq_len) token ids of consecutive held-out windows (the tail shorter than a window left out)."""
    values = np.frombuffer(held_out, dtype=np.uint8)
    n_windows = len(values) // seq_len
    return torch.from_numpy(values[: n_windows * seq_len].astype(np.int64) + BYTE_ID_OFFSET).view(n_windows, seq_len)


@torch.no_grad()
def evaluate_bpb(model, windows, batch, device, seed):
    """Bits per byte over `windows`, hashing from a fixed seed (the same rotations at every evaluation)."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(windows), batch):
            input_ids = windows[start : start + batch].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, labels=input_ids).loss
            predicted = input_ids.shape[0] * (input_ids.shape[1] - 1)
            nll += loss.double().item() * predicted
            count += predicted
    model.train(was_training)
    return bits_per_byte(nll, count)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(kind, args, size, train_stream, curve_windows, final_windows, device, log):
    from transformers import get_scheduler

    torch.manual_seed(args.seed)
    model = build_model(kind, args.seq_len, size, args.reformer_overrides).to(device).train()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
                                  weight_decay=args.weight_decay)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=args.warmup_steps)
    batch = args.tokens_per_step // args.seq_len
    windows = RandomByteWindows(train_stream, args.seq_len, num_samples=2**62, seed=args.seed)
    log.write(model=kind, event="start", parameters=parameters, matrix_parameters=matrix_parameters(model),
              batch=batch, seq_len=args.seq_len, attn_layers=getattr(model.config, "attn_layers", None))
    print(f"{kind}: {parameters / 1e6:.2f}M parameters, batch {batch} x {args.seq_len}", flush=True)

    step, seconds, next_eval = 0, 0.0, args.eval_every_tokens
    synchronize(device)
    segment_start = time.perf_counter()
    while True:
        input_ids = torch.stack([windows[step * batch + row]["input_ids"] for row in range(batch)]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens = step * batch * args.seq_len
        evaluate_now = tokens >= next_eval
        if step % args.log_every == 0 or evaluate_now:
            synchronize(device)
            seconds += time.perf_counter() - segment_start
            out_of_time = seconds >= args.budget
            row = dict(model=kind, step=step, tokens=tokens, seconds=round(seconds, 3), loss=loss.item(),
                       lr=scheduler.get_last_lr()[0])
            if evaluate_now or out_of_time:
                evaluation_start = time.perf_counter()
                row["eval_bpb"] = evaluate_bpb(model, curve_windows, batch, device, args.seed)
                row["eval_bytes"] = curve_windows.numel()
                row["eval_seconds"] = round(time.perf_counter() - evaluation_start, 3)
                while next_eval <= tokens:
                    next_eval += args.eval_every_tokens
            log.write(**row)
            if out_of_time:
                break
            segment_start = time.perf_counter()
    final_start = time.perf_counter()
    final_bpb = evaluate_bpb(model, final_windows, batch, device, args.seed)
    summary = log.write(model=kind, event="end", step=step, tokens=tokens, seconds=round(seconds, 3),
                        steps_per_s=step / seconds, tokens_per_s=tokens / seconds, final_eval_bpb=final_bpb,
                        final_eval_bytes=final_windows.numel(),
                        final_eval_seconds=round(time.perf_counter() - final_start, 3),
                        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0)
    print(f"{kind}: {step} steps in {seconds:.0f}s ({summary['tokens_per_s']:.0f} tokens/s), held-out "
          f"{final_bpb:.4f} bpb on {final_windows.numel()} bytes", flush=True)
    model = optimizer = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -------------------------------------------------------------------------------------- main

SMOKE_SIZE = dict(vocab=260, d_model=32, heads=2, layers=2, llama_mlp=44,
                  reformer_overrides=dict(hidden_size=32, num_attention_heads=2, attention_head_size=16,
                                          feed_forward_size=64, attn_layers=["local", "lsh"], lsh_attn_chunk_length=16,
                                          local_attn_chunk_length=16, axial_pos_embds_dim=[16, 16]))
GPU_SIZE = dict(vocab=260, d_model=512, heads=4, layers=6, llama_mlp=LLAMA_MLP)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus-archive", type=Path, help="tar archive (or folder) of .html and .py documents")
    parser.add_argument("--models", default="reformer,llama", help=f"comma-separated, from {MODEL_KINDS}")
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds of training steps per model")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--eval-every-tokens", type=int, default=2**24)
    parser.add_argument("--curve-eval-bytes", type=int, default=2**19)
    parser.add_argument("--held-out", type=int, default=50, help="per mille of documents held out")
    parser.add_argument("--min-held-out-bytes", type=int, default=2_000_000)
    parser.add_argument("--reformer-overrides", default="",
                        help="ReformerConfig fields for the reformer and full models")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU from the stdlib's json and email")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: merge the runs of --from into DIR/lm_quality.jsonl (or take the one there) "
                             "and write DIR/lm_quality.md and .png for --models")
    parser.add_argument("--from", dest="runs", type=Path, nargs="+",
                        help="with --report-only: the run folders (or their lm_quality.jsonl files) to merge")
    args = parser.parse_args(argv)
    args.models = [kind.strip() for kind in args.models.split(",") if kind.strip()]
    if not args.models or any(kind not in MODEL_KINDS for kind in args.models):
        parser.error(f"--models={','.join(args.models)!r}: expected a comma-separated list from {MODEL_KINDS}")
    if args.runs and not args.report_only:
        parser.error("--from merges runs for a report: pass --report-only with it")
    if args.report_only:
        return parser, args
    if (args.out / "lm_quality.jsonl").exists():
        parser.error(f"--out={str(args.out)!r} already holds lm_quality.jsonl: a run writes to a folder of its own "
                     "(runs are merged with --report-only --from)")
    if args.corpus_archive is None and not args.smoke:
        parser.error("--corpus-archive is required (or --smoke)")
    if args.corpus_archive is not None and not args.corpus_archive.exists():
        parser.error(f"--corpus-archive={str(args.corpus_archive)!r} does not exist")
    for name in ("seq_len", "tokens_per_step", "eval_every_tokens", "curve_eval_bytes", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.tokens_per_step % args.seq_len:
        parser.error(f"--tokens-per-step={args.tokens_per_step} must be a multiple of --seq-len={args.seq_len}")
    if args.budget <= 0 or args.lr <= 0:
        parser.error("--budget and --lr must be > 0")
    if not 0 < args.held_out < 1000:
        parser.error(f"--held-out={args.held_out} must lie in 1..999 (per mille)")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU: pass --smoke for a toy run on the CPU")
    try:
        from reformer_hf.training import parse_overrides

        args.reformer_overrides = parse_overrides(args.reformer_overrides)
    except ValueError as error:
        parser.error(str(error))
    return parser, args


def recorded_arguments(args):
    """The run's arguments as JSON values, for its first row (the report and the merge read them)."""
    return {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()
            if name not in ("report_only", "runs")}


def report_only(parser, args):
    try:
        if args.runs:
            merge_runs(args.runs, args.out / "lm_quality.jsonl", args.models)
        write_report(args.out, args.models)
    except ValueError as error:
        parser.error(str(error))
    print((args.out / "lm_quality.md").read_text(), flush=True)
    return 0


def main(argv=None):
    parser, args = parse_args(argv)
    if args.report_only:
        return report_only(parser, args)
    size = SMOKE_SIZE if args.smoke else GPU_SIZE
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.corpus_archive is not None:
        documents = read_documents(args.corpus_archive)
    else:
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        documents = {**{f"json/{k}": v for k, v in read_documents(stdlib / "json").items()},
                     **{f"email/{k}": v for k, v in read_documents(stdlib / "email").items()}}
    train_stream, held_out = split_documents(documents, args.held_out)
    if len(held_out) < args.min_held_out_bytes:
        parser.error(f"the held-out documents hold {len(held_out)} bytes, fewer than --min-held-out-bytes="
                     f"{args.min_held_out_bytes}; raise --held-out")
    final_windows = held_out_windows(held_out, args.seq_len)
    curve_windows = final_windows[: max(1, args.curve_eval_bytes // args.seq_len)]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    log = JsonLines(args.out / "lm_quality.jsonl")
    log.write(environment=environment(), arguments=recorded_arguments(args), corpus_sha1=corpus_digest(documents),
              documents=len(documents), train_bytes=len(train_stream), held_out_bytes=len(held_out),
              held_out_documents=sum(is_held_out(name, args.held_out) for name in documents))
    print(f"{len(documents)} documents: {len(train_stream)} training bytes, {len(held_out)} held out", flush=True)
    for kind in args.models:
        train_one(kind, args, size, train_stream, curve_windows, final_windows, device, log)
    write_report(args.out, args.models)
    print((args.out / "lm_quality.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
