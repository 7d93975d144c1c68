"""bench/lm_quality.py --report-only: two --smoke runs made apart (reformer, then llama) merged into
one report that shows each model's figures from its rows, their ratios and both commands; runs that
differ in an argument the comparison rests on are refused with a message naming it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "bench"))
import lm_quality  # noqa: E402

SMOKE = ["--smoke", "--seq-len", "64", "--tokens-per-step", "256", "--budget", "1.5", "--eval-every-tokens", "1024",
         "--curve-eval-bytes", "512", "--min-held-out-bytes", "1000", "--held-out", "100", "--log-every", "5"]


def train(out, *args):
    """A real --smoke run of bench/lm_quality.py in its own process, into the folder `out`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, str(REPO / "bench" / "lm_quality.py"), *SMOKE, *args, "--out", str(out)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    assert completed.returncode == 0, f"exit {completed.returncode}\n{output}"
    return out


def rows_of(folder):
    return [json.loads(line) for line in (folder / "lm_quality.jsonl").read_text().splitlines()]


def refusal(capsys, argv):
    """The message of main(argv)'s usage error (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        lm_quality.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{model: run folder} of two smoke runs made apart, one model each; "short" trained at --seq-len 32."""
    root = tmp_path_factory.mktemp("lm_quality_runs")
    return {"reformer": train(root / "reformer", "--models", "reformer"),
            "llama": train(root / "llama", "--models", "llama"),
            "short": train(root / "short", "--models", "llama", "--seq-len", "32")}


def test_each_run_records_its_arguments_and_data_split_in_its_first_row(runs):
    first = rows_of(runs["reformer"])[0]
    assert first["arguments"]["seq_len"] == 64 and first["arguments"]["budget"] == 1.5
    assert first["arguments"]["models"] == ["reformer"] and first["arguments"]["smoke"]
    assert len(first["corpus_sha1"]) == 40 and first["documents"] > 0 and first["held_out_bytes"] >= 1000
    assert rows_of(runs["llama"])[0]["corpus_sha1"] == first["corpus_sha1"]


def test_report_only_merges_the_runs_and_shows_each_models_figures(runs, tmp_path):
    out = tmp_path / "merged"
    assert lm_quality.main(["--report-only", "--models", "reformer,llama",
                            "--from", str(runs["reformer"]), str(runs["llama"]), "--out", str(out)]) == 0
    assert rows_of(out) == rows_of(runs["reformer"]) + rows_of(runs["llama"])
    report = (out / "lm_quality.md").read_text()
    ends = {row["model"]: row for row in rows_of(out) if row.get("event") == "end"}
    starts = {row["model"]: row for row in rows_of(out) if row.get("event") == "start"}
    for kind, end in ends.items():
        parameters = f"{starts[kind]['parameters'] / 1e6:.2f}M | {starts[kind]['matrix_parameters'] / 1e6:.2f}M"
        speed = f"{end['seconds']:.0f} | {end['steps_per_s']:.2f} | {end['tokens_per_s']:.0f}"
        assert f"| {kind} | {parameters} | {end['step']} | {speed} |" in report
        assert f"| {end['final_eval_bpb']:.4f} |" in report
    bpb_ratio = ends["reformer"]["final_eval_bpb"] / ends["llama"]["final_eval_bpb"]
    speed_ratio = ends["reformer"]["tokens_per_s"] / ends["llama"]["tokens_per_s"]
    assert f"- reformer against llama: final held-out bpb {ends['reformer']['final_eval_bpb']:.4f} / " in report
    assert f"= {bpb_ratio:.3f}x (below 1: reformer predicts better); tokens/s" in report
    assert f"= {speed_ratio:.2f}x" in report
    curves = {kind: {row["tokens"]: row["eval_bpb"] for row in rows_of(runs[kind]) if "eval_bpb" in row}
              for kind in ("reformer", "llama")}
    assert curves["reformer"][1024] != curves["llama"][1024]
    assert f"| 1.0K | {curves['reformer'][1024]:.4f} | {curves['llama'][1024]:.4f} |" in report
    assert "Budget 1.5 s of training steps each (evaluation excluded), 256 tokens per step (4 x 64)" in report
    for kind in ("reformer", "llama"):
        command = rows_of(runs[kind])[0]["environment"]["command"]
        assert f"--models {kind} --out {runs[kind]}" in command and f"- command: `{command}`" in report
    assert report.index("### Run 1: reformer") < report.index("### Run 2: llama")
    if (out / "lm_quality.png").exists():
        assert (out / "lm_quality.png").read_bytes()[:4] == b"\x89PNG"


def test_merging_again_gives_the_same_file_and_a_foreign_file_is_not_overwritten(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    argv = ["--report-only", "--from", str(runs["reformer"]), str(runs["llama"]), "--out", str(out)]
    lm_quality.main(argv)
    merged = (out / "lm_quality.jsonl").read_text()
    lm_quality.main(argv[:2] + [str(out), *argv[2:]])  # the merged file among the sources: each run kept once
    assert (out / "lm_quality.jsonl").read_text() == merged
    message = refusal(capsys, ["--report-only", "--models", "reformer", "--from", str(runs["reformer"]),
                               "--out", str(out)])
    assert f"--out: {out / 'lm_quality.jsonl'} holds runs that no --from source holds" in message
    assert (out / "lm_quality.jsonl").read_text() == merged


def test_runs_of_another_seq_len_are_refused_naming_it(runs, tmp_path, capsys):
    message = refusal(capsys, ["--report-only", "--from", str(runs["reformer"]), str(runs["short"]),
                               "--out", str(tmp_path / "merged")])
    assert "the runs disagree on --seq-len: 64 in" in message and "32 in" in message
    assert not (tmp_path / "merged").exists()


def edited_run(source, folder, edit):
    """A copy of the run in `source` with `edit(rows)` applied to its rows."""
    rows = rows_of(source)
    edit(rows)
    folder.mkdir()
    (folder / "lm_quality.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[0]["arguments"].update(tokens_per_step=512), "the runs disagree on --tokens-per-step: 256 in"),
    (lambda rows: rows[0]["arguments"].update(budget=3.0), "the runs disagree on --budget: 1.5 in"),
    (lambda rows: rows[0]["arguments"].update(held_out=50), "the runs disagree on --held-out: 100 in"),
    (lambda rows: rows[0].update(train_bytes=1), "the runs disagree on the data split (train_bytes: "),
    (lambda rows: rows[0]["environment"].update(device="NVIDIA H200"), "the runs ran on different devices ('cpu' in"),
    (lambda rows: [row.update(model="reformer") for row in rows if "model" in row], "reformer was trained twice"),
])
def test_runs_that_do_not_compare_are_refused(runs, tmp_path, capsys, edit, message):
    other = edited_run(runs["llama"], tmp_path / "edited", edit)
    assert message in refusal(capsys, ["--report-only", "--from", str(runs["reformer"]), str(other),
                                       "--out", str(tmp_path / "merged")])


def test_bad_report_only_arguments_are_refused(runs, tmp_path, capsys):
    assert "--from: " in refusal(capsys, ["--report-only", "--from", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "--models=reformer,full: ['full'] trained in no run" in refusal(
        capsys, ["--report-only", "--models", "reformer,full", "--from", str(runs["reformer"]),
                 "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()  # refused before anything is written
    assert "pass --report-only with it" in refusal(
        capsys, ["--smoke", "--from", str(runs["reformer"]), "--out", str(tmp_path)])
    assert "already holds lm_quality.jsonl: a run writes to a folder of its own" in refusal(
        capsys, [*SMOKE, "--out", str(runs["reformer"])])
