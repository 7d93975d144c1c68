"""bench/lm_quality.py's report: the JSON lines of one or more runs, checked to compare, merged into
one file and rendered as a .md (budget, tokens/s, held-out bpb at equal wall-clock and at equal
tokens, the models' ratios, each run's command) and a .png (held-out bpb against tokens and seconds).

A run's rows begin with one that holds its environment, its arguments and its data split; a merged
file holds several runs one after another, each beginning so.
"""

import json
from pathlib import Path

from common import environment_markdown, markdown_table, pyplot, read_json_lines, save_figure

# The arguments that decide what the models see and how they are measured: runs compare only when
# they share them (--reformer-overrides too, between runs that train a Reformer).
SHARED_ARGUMENTS = ("seq_len", "tokens_per_step", "budget", "lr", "warmup_steps", "weight_decay",
                    "eval_every_tokens", "curve_eval_bytes", "held_out", "seed", "smoke")
# The data split a run records in its first row: the same corpus and --held-out give the same one.
DATA_SPLIT = ("corpus_sha1", "documents", "train_bytes", "held_out_bytes", "held_out_documents")
REFORMER_KINDS = ("reformer", "full")
JSONL = "lm_quality.jsonl"


def jsonl_path(source):
    """A run's JSON-lines file: `source` itself, or lm_quality.jsonl in the folder `source`."""
    source = Path(source)
    return source / JSONL if source.is_dir() else source


def read_runs(source, flag="--from"):
    """[(label, rows)] of every run in the JSON-lines file of `source` (named by `flag`), in the order written."""
    path = jsonl_path(source)
    if not path.is_file():
        raise ValueError(f"{flag}: {str(source)!r} is neither a folder holding {JSONL} nor a JSON-lines file")
    runs = []
    for row in read_json_lines(path):
        if "environment" in row:
            if "arguments" not in row:
                raise ValueError(f"{path}: a run without its recorded arguments (written before lm_quality.py "
                                 "recorded them), so its --seq-len, --budget and data split cannot be checked")
            runs.append([])
        elif not runs:
            raise ValueError(f"{path}: the first row is not a run's first row (it holds no 'environment')")
        runs[-1].append(row)
    if not runs:
        raise ValueError(f"{path} holds no run")
    return [(str(path) if len(runs) == 1 else f"{path} (run {index + 1})", rows) for index, rows in enumerate(runs)]


def models_of(rows):
    return [row["model"] for row in rows if row.get("event") == "start"]


def check_runs_compare(runs):
    """Raises ValueError, naming the argument and both values, where two runs differ in an argument of
    SHARED_ARGUMENTS, in the data split, in the device, or (both training a Reformer) in
    --reformer-overrides, and where one model was trained twice."""
    first_label, first_rows = runs[0]
    for label, rows in runs[1:]:
        for name in SHARED_ARGUMENTS:
            ours, theirs = first_rows[0]["arguments"][name], rows[0]["arguments"][name]
            if ours != theirs:
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(f"the runs disagree on {flag}: {ours!r} in {first_label}, {theirs!r} in {label}; "
                                 f"only runs with the same {flag} compare")
        for name in DATA_SPLIT:
            if first_rows[0][name] != rows[0][name]:
                raise ValueError(f"the runs disagree on the data split ({name}: {first_rows[0][name]!r} in "
                                 f"{first_label}, {rows[0][name]!r} in {label}); only runs of the same "
                                 "--corpus-archive and --held-out compare")
        ours, theirs = (run_rows[0]["environment"].get("device", "cpu") for run_rows in (first_rows, rows))
        if ours != theirs:
            raise ValueError(f"the runs ran on different devices ({ours!r} in {first_label}, {theirs!r} in {label}); "
                             "tokens/s and bpb at equal wall-clock compare only on the same device")
    reformer_runs = [(label, rows) for label, rows in runs if set(models_of(rows)) & set(REFORMER_KINDS)]
    for label, rows in reformer_runs[1:]:
        ours, theirs = reformer_runs[0][1][0]["arguments"], rows[0]["arguments"]
        if ours["reformer_overrides"] != theirs["reformer_overrides"]:
            raise ValueError(f"the runs disagree on --reformer-overrides: {ours['reformer_overrides']!r} in "
                             f"{reformer_runs[0][0]}, {theirs['reformer_overrides']!r} in {label}")
    trained = {}
    for label, rows in runs:
        for kind in models_of(rows):
            if kind in trained:
                raise ValueError(f"{kind} was trained twice ({trained[kind]} and {label}): merge one run of each model")
            trained[kind] = label


def check_models(runs, kinds):
    """Raises ValueError where a model of `kinds` was trained in none of the runs."""
    trained = [kind for _, rows in runs for kind in models_of(rows)]
    missing = [kind for kind in kinds if kind not in trained]
    if missing:
        raise ValueError(f"--models={','.join(kinds)}: {missing} trained in no run (the runs trained {trained})")


def merge_runs(sources, out_path, kinds):
    """Writes the runs of every source (a folder or a JSON-lines file), each once, to out_path after
    checking that they compare and hold the models `kinds`; returns them.  Refuses to overwrite a run
    of out_path that no source holds."""
    runs = []
    for source in sources:
        for label, rows in read_runs(source):
            if all(rows != kept for _, kept in runs):
                runs.append((label, rows))
    check_runs_compare(runs)
    check_models(runs, kinds)
    if out_path.is_file():
        lost = [label for label, rows in read_runs(out_path, "--out") if all(rows != kept for _, kept in runs)]
        if lost:
            raise ValueError(f"--out: {out_path} holds runs that no --from source holds ({', '.join(lost)}); "
                             "name it in --from or write to another folder")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(row) + "\n" for _, rows in runs for row in rows), encoding="utf-8")
    return runs


# ----------------------------------------------------------------------------------- rendering


def count_label(count):
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}K" if count >= 1e3 else str(count)


def curve(rows, kind):
    return [row for row in rows if row.get("model") == kind and "eval_bpb" in row]


def at_equal_tokens(rows, kinds):
    """Evaluation points at token counts every model reached: [(tokens, {kind: bpb})]."""
    by_tokens = {}
    for kind in kinds:
        for row in curve(rows, kind):
            by_tokens.setdefault(row["tokens"], {})[kind] = row["eval_bpb"]
    return [(tokens, values) for tokens, values in sorted(by_tokens.items()) if len(values) == len(kinds)]


def ratio_lines(kinds, ends):
    """The first finished model against each other: its final held-out bpb and tokens/s as multiples."""
    finished = [kind for kind in kinds if kind in ends]
    lines = []
    for kind in finished[1:]:
        first, other = ends[finished[0]], ends[kind]
        lines.append(f"- {finished[0]} against {kind}: final held-out bpb {first['final_eval_bpb']:.4f} / "
                     f"{other['final_eval_bpb']:.4f} = {first['final_eval_bpb'] / other['final_eval_bpb']:.3f}x "
                     f"(below 1: {finished[0]} predicts better); tokens/s {first['tokens_per_s']:.0f} / "
                     f"{other['tokens_per_s']:.0f} = {first['tokens_per_s'] / other['tokens_per_s']:.2f}x")
    return lines


def recipe_lines(first, final_bytes):
    """The budget, recipe and data split, from a run's first row (the runs share them)."""
    arguments = first["arguments"]
    batch = arguments["tokens_per_step"] // arguments["seq_len"]
    return [(f"Budget {arguments['budget']:g} s of training steps each (evaluation excluded), "
             f"{arguments['tokens_per_step']} tokens per step ({batch} x {arguments['seq_len']}), "
             f"lr {arguments['lr']}, warm-up {arguments['warmup_steps']} steps then constant, "
             f"weight decay {arguments['weight_decay']}, seed {arguments['seed']}"
             f"{', smoke sizes' if arguments['smoke'] else ''}."), "",
            (f"Data: {first['documents']} documents (corpus sha1 `{first['corpus_sha1'][:12]}`), "
             f"{arguments['held_out']} per mille held out: {first['train_bytes']} training bytes, "
             f"{first['held_out_bytes']} held-out bytes in {first['held_out_documents']} documents; evaluated on "
             f"{final_bytes} held-out bytes at the end, on the first {arguments['curve_eval_bytes']} every "
             f"{count_label(arguments['eval_every_tokens'])} tokens (the curve)."), ""]


def equal_tokens_table(rows, kinds):
    """Held-out bpb of the curve at about ten token counts every model reached, and the last one."""
    equal_tokens = at_equal_tokens(rows, kinds)
    if not equal_tokens:
        return "No evaluation point at a token count every model reached."
    step = max(1, len(equal_tokens) // 10)
    shown = equal_tokens[::step] + ([equal_tokens[-1]] if (len(equal_tokens) - 1) % step else [])
    return markdown_table(["tokens", *kinds], [[count_label(tokens), *(f"{values[kind]:.4f}" for kind in kinds)]
                                               for tokens, values in shown])


def render(runs, kinds):
    """The report's markdown for `kinds` from the runs (checked to compare)."""
    rows = [row for _, run_rows in runs for row in run_rows]
    starts = {row["model"]: row for row in rows if row.get("event") == "start"}
    ends = {row["model"]: row for row in rows if row.get("event") == "end"}
    finished = [kind for kind in kinds if kind in ends]
    summary = [[kind, f"{starts[kind]['parameters'] / 1e6:.2f}M", f"{starts[kind]['matrix_parameters'] / 1e6:.2f}M",
                ends[kind]["step"], f"{ends[kind]['seconds']:.0f}", f"{ends[kind]['steps_per_s']:.2f}",
                f"{ends[kind]['tokens_per_s']:.0f}", count_label(ends[kind]["tokens"]),
                f"{ends[kind]['final_eval_bpb']:.4f}", f"{ends[kind]['peak_gib']:.1f}"] for kind in finished]
    final_bytes = ends[finished[0]]["final_eval_bytes"] if finished else "–"
    seq_len = runs[0][1][0]["arguments"]["seq_len"]
    text = [f"# Byte LM at {seq_len} bytes: {', '.join(kinds)} at equal time and equal tokens", "",
            *recipe_lines(runs[0][1][0], final_bytes),
            "## At the end of each budget (equal wall-clock)", "",
            markdown_table(["model", "parameters", "matrix parameters", "steps", "seconds", "steps/s", "tokens/s",
                            "tokens seen", "held-out bpb (all held-out bytes)", "peak GiB"], summary), "",
            *ratio_lines(kinds, ends), "",
            "## At equal tokens (curve bytes)", "", equal_tokens_table(rows, kinds), "",
            "## Runs", ""]
    for index, (_, run_rows) in enumerate(runs):
        overrides = run_rows[0]["arguments"]["reformer_overrides"]
        text += [f"### Run {index + 1}: {', '.join(models_of(run_rows))}", "",
                 environment_markdown(run_rows[0]["environment"])]
        text += [f"- reformer overrides: `{overrides}`"] if overrides else []
        text.append("")
    return "\n".join(text)


def write_report(out_dir, kinds):
    """DIR/lm_quality.md and DIR/lm_quality.png from DIR/lm_quality.jsonl, for the models `kinds`
    (each trained in one of its runs)."""
    runs = read_runs(out_dir, "--out")
    check_runs_compare(runs)
    check_models(runs, kinds)
    (out_dir / "lm_quality.md").write_text(render(runs, kinds), encoding="utf-8")
    plot([row for _, rows in runs for row in rows], kinds, out_dir / "lm_quality.png",
         runs[0][1][0]["arguments"]["seq_len"])


def plot(rows, kinds, path, seq_len):
    plt = pyplot()
    if plt is None:
        return
    figure, (by_tokens, by_seconds) = plt.subplots(1, 2, figsize=(12, 5))
    for kind in kinds:
        points = curve(rows, kind)
        by_tokens.plot([row["tokens"] / 1e6 for row in points], [row["eval_bpb"] for row in points], label=kind)
        by_seconds.plot([row["seconds"] for row in points], [row["eval_bpb"] for row in points], label=kind)
    by_tokens.set_xlabel("training tokens (M)")
    by_seconds.set_xlabel("training seconds")
    for axis in (by_tokens, by_seconds):
        axis.set_ylabel("held-out bits per byte")
    save_figure(plt, figure, (by_tokens, by_seconds), f"byte LM, {seq_len}-byte windows", path)
