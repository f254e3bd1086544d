"""What distillation costs on top of training the student alone, on CPU, for a small model.

    .venv/bin/python scripts/bench_distil.py                      # hidden 256, 6 -> 3 layers, 8 x 128 tokens
    .venv/bin/python scripts/bench_distil.py --hidden 384 --layers 12 --block-size 256 --threads 2

Builds a random-weight BERT teacher (tokenizer trained on corpora/*/sample.txt) and a student with
half its layers, then times (median of --repeats, after warm-up) for each loss recipe:

    plain      student forward + backward with its own MLM loss, fast (sdpa) attention
    outputs    student forward + backward returning what the recipe's losses read (eager attention
               and attention maps for BiStil), with a trivial loss: the model cost of the recipe
    losses     the same with the distillation losses against precomputed teacher outputs
    teacher    the teacher's forward as training runs it (no gradients, only what the losses read)
    inference  the teacher's plain inference forward, model(**batch): sdpa, logits everywhere
    same       a plain inference forward of the training teacher asked for the outputs the losses
               read (output_hidden_states / output_attentions; the MLM head everywhere if logits)
    encoder    the same without the MLM head
    step       a whole training step: teacher + student + losses + backward + AdamW

and prints the loss overhead (losses / outputs - 1: the issue's budget is 10%), the teacher's cost
against a plain inference forward, and training steps per second. Then phase 2 (`distil task`,
one full and one sparse epoch over the 240 bundled English NLI pairs) with and without the
teacher-output cache (`--teacher-cache`): the training time of each, and the cache's build time. Then
the logit KL's memory (`--only-kl`): the peak memory (max RSS above the logits, the gradient
included) and time of one forward + backward of the KL over [--kl-rows, --kl-vocab] float32
logits, unchunked (autograd through log_softmax and kl_div) and chunked with the softmaxes
recomputed in the backward pass (`losses.logit_kl`), each in a fresh process. Then phase 1's data
preparation (`--only-data`): the peak RSS of `load_blocks` for 1x and 4x a corpus of --data-mib
MiB, with the token cache (written, then reused) and as it was before (one array per line, then
the blocks), each in a fresh process. On a shared machine
the figures move by 10-20% from run to run: compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polyglot_distil.distill.general import RECIPES, logit_rows, resolve_relation, student_module, \
    teacher_outputs  # noqa: E402
from polyglot_distil.distill.objective import distillation_terms  # noqa: E402
from polyglot_distil.distill.losses import mlm_cross_entropy  # noqa: E402
from polyglot_distil.data.mlm import LanguageBatches, Masking, encode_text, to_blocks  # noqa: E402
from polyglot_distil.models.smoke import build_smoke_model  # noqa: E402
from polyglot_distil.models.loading import quiet_transformers  # noqa: E402
from polyglot_distil.models.encoder import encoder_outputs  # noqa: E402
from polyglot_distil.models.student import StudentSpec, build_student, default_layer_map  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def paired_ms(first, second, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Medians of two functions timed alternately (ABAB...), so that a shared machine's load
    changes weigh on both alike."""
    for _ in range(warmup):
        first(), second()
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, kept in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6, help="teacher layers (the student gets half)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--no-phase2", action="store_true", help="skip the phase-2 cache comparison")
    parser.add_argument("--only-phase2", action="store_true", help="only the phase-2 cache comparison")
    parser.add_argument("--only-kl", action="store_true", help="only the logit KL's memory, chunked and unchunked")
    parser.add_argument("--no-kl", action="store_true", help="skip the logit KL's memory")
    parser.add_argument("--only-data", action="store_true", help="only phase 1's data preparation memory")
    parser.add_argument("--no-data", action="store_true", help="skip phase 1's data preparation memory")
    parser.add_argument("--data-mib", type=float, default=8, help="corpus size (1x) of the data preparation figure")
    parser.add_argument("--kl-rows", type=int, default=512, help="logit rows N of the KL memory figure (8 x 256 "
                                                                  "tokens: 2048)")
    parser.add_argument("--kl-vocab", type=int, default=250_002, help="vocabulary V of the KL memory figure "
                                                                      "(default: untrimmed XLM-R)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    if args.only_phase2:
        phase2_cache(args)
        return
    if args.only_kl:
        kl_memory(args)
        return
    if args.only_data:
        data_memory(args)
        return

    texts = sorted((ROOT / "corpora").glob("*/sample.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_smoke_model(Path(tmp) / "teacher", "bert", texts=texts, vocab_size=args.vocab,
                                   hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                                   intermediate_size=4 * args.hidden, max_position_embeddings=args.block_size + 2)
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        teachers = {impl: AutoModelForMaskedLM.from_pretrained(folder, attn_implementation=impl).eval()
                    for impl in ("sdpa", "eager")}
    ids = encode_text((line for f in texts for line in f.read_text(encoding="utf-8").splitlines() if line.strip()),
                      tokenizer)
    blocks = to_blocks(ids, args.block_size, tokenizer.cls_token_id, tokenizer.sep_token_id)
    vocab = teachers["sdpa"].config.vocab_size
    data = LanguageBatches({"all": blocks}, args.batch_size, Masking.for_tokenizer(tokenizer, vocab))
    batch = data.batch(0)
    mask = batch["attention_mask"]

    print(f"teacher: BERT hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {vocab:,}; "
          f"student {args.layers // 2} layers; batch {args.batch_size} x {args.block_size} tokens; "
          f"{args.threads} thread(s); median of {args.repeats}")
    recipes = [*RECIPES.items(), ("distilbert --logit-positions masked",
                                  dataclasses.replace(RECIPES["distilbert"], logit_positions="masked"))]
    for name, weights in recipes:
        attn = "eager" if weights.attention else "sdpa"
        teacher = teachers[attn]
        plain_student, _ = build_student(teachers["sdpa"], StudentSpec(), attn_implementation="sdpa")
        student, _ = build_student(teacher, StudentSpec(), attn_implementation=attn)
        if weights.relation:  # the relation loss's teacher layer and heads, as a training run fills them in
            weights = dataclasses.replace(weights)
            resolve_relation(weights, teacher.config, student.config)
        model = student_module(student, teacher, weights)
        layer_map = default_layer_map(args.layers, args.layers // 2)
        rows = logit_rows(batch, weights)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        frozen_teacher = teacher_outputs(teacher, batch, weights, rows, layer_map)

        def plain():
            out = encoder_outputs(plain_student, batch["input_ids"], mask, logit_rows=batch["labels"] != -100)
            mlm_cross_entropy(out["logits"], batch["labels"][batch["labels"] != -100]).backward()

        def outputs_only():
            s = model(batch["input_ids"], mask, rows)
            returned = [s["last"], *(s["hidden"] or ()), *(s["attentions"] or ()),
                        *([s["logits"]] if rows is not None else [])]
            sum(x.mean() for x in returned).backward()  # gradients reach every output the losses read

        def with_losses():
            s = model(batch["input_ids"], mask, rows)
            terms = distillation_terms(s, frozen_teacher, mask, weights, layer_map,
                                       mlm_labels=batch["labels"][rows] if weights.mlm else None)
            sum(getattr(weights, k) * v for k, v in terms.items()).backward()

        def teacher_forward():
            teacher_outputs(teacher, batch, weights, rows, layer_map)

        def same_outputs():  # a plain inference forward asked for the outputs the losses read
            with torch.no_grad():
                (teacher if rows is not None else teacher.base_model)(
                    input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=weights.hidden > 0,
                    output_attentions=weights.attention > 0)

        def inference():
            with torch.no_grad():
                teachers["sdpa"](input_ids=batch["input_ids"], attention_mask=mask)

        def encoder():
            with torch.no_grad():
                teachers["sdpa"].base_model(input_ids=batch["input_ids"], attention_mask=mask)

        def step():
            s = model(batch["input_ids"], mask, rows)
            t = teacher_outputs(teacher, batch, weights, rows, layer_map)
            terms = distillation_terms(s, t, mask, weights, layer_map,
                                       mlm_labels=batch["labels"][rows] if weights.mlm else None)
            sum(getattr(weights, k) * v for k, v in terms.items()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        ms = {label: median_ms(fn, args.repeats) for label, fn in (
            ("plain", plain), ("outputs", outputs_only), ("losses", with_losses), ("inference", inference),
            ("encoder", encoder), ("step", step))}
        # the teacher against a plain forward asked for the same outputs, timed alternately, 3x the repeats
        ms["teacher"], ms["same"] = paired_ms(teacher_forward, same_outputs, 3 * args.repeats)
        enabled = ", ".join(f"{k} {v:g}" for k, v in weights.enabled().items())
        print(f"\n{name} ({enabled}; {attn} attention)")
        for label, value in ms.items():
            print(f"  {label:<10} {value:8.2f} ms")
        print(f"  loss overhead        {100 * (ms['losses'] / ms['outputs'] - 1):+6.1f}%  (losses vs outputs; "
              f"vs plain: {100 * (ms['losses'] / ms['plain'] - 1):+.1f}%)")
        print(f"  teacher vs inference {ms['teacher'] / ms['inference']:6.2f}x  (vs encoder alone: "
              f"{ms['teacher'] / ms['encoder']:.2f}x; vs a plain forward asked for the same outputs: "
              f"{ms['teacher'] / ms['same']:.2f}x)")
        print(f"  distillation step    {ms['losses']:6.1f} ms teacher excluded, {ms['losses'] + ms['teacher']:.1f} ms "
              f"included (plain student step {ms['plain']:.1f} ms)")
        print(f"  training steps/s     {1e3 / ms['step']:6.2f}")


    if not args.no_phase2:
        phase2_cache(args)
    if not args.no_kl:
        kl_memory(args)
    if not args.no_data:
        data_memory(args)


KL_PROCESS = '''
import resource, sys, time
import torch
import torch.nn.functional as F
from polyglot_distil.distill import losses

rows, vocab, threads, chunked = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "chunked"
torch.set_num_threads(threads)
generator = torch.Generator().manual_seed(0)
student = torch.randn(rows, vocab, generator=generator).mul_(3).requires_grad_(True)
teacher = torch.randn(rows, vocab, generator=generator).mul_(3)


def kl():
    if chunked:
        return losses.logit_kl(student, teacher, 2.0)
    return F.kl_div(F.log_softmax(student / 2.0, -1), F.log_softmax(teacher / 2.0, -1), log_target=True,
                    reduction="batchmean") * 4.0


def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


base = rss_mib()
times = []
for _ in range(3):
    student.grad = None
    start = time.perf_counter()
    value = kl()
    value.backward()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", peak - base, sorted(times)[1], float(value))
'''


def kl_memory(args) -> None:
    """Peak memory and time of the logit KL, unchunked and chunked, each in a fresh process."""
    import subprocess

    matrix_mib = args.kl_rows * args.kl_vocab * 4 / 2**20
    print(f"\nlogit KL, forward + backward over [{args.kl_rows:,}, {args.kl_vocab:,}] float32 logits (one such matrix: "
          f"{matrix_mib:,.0f} MiB); {args.threads} thread(s), median of 3; peak RSS above the two logit matrices, "
          "the student's gradient included:")
    results = {}
    for kind, label in (("unchunked", "unchunked (autograd: log_softmax, kl_div)"),
                        ("chunked", "chunked, softmaxes recomputed (logit_kl)")):
        out = subprocess.run([sys.executable, "-c", KL_PROCESS, str(args.kl_rows), str(args.kl_vocab),
                              str(args.threads), kind], capture_output=True, text=True, cwd=ROOT, check=True).stdout
        peak, seconds, value = (float(x) for x in out.split("RESULT")[-1].split())
        results[kind] = (peak, seconds, value)
        print(f"  {label:45s} {peak:8,.0f} MiB ({peak / matrix_mib:4.1f} x [N, V])  {seconds * 1e3:8.0f} ms  "
              f"loss {value:.6f}")
    (peak_u, time_u, _), (peak_c, time_c, _) = results["unchunked"], results["chunked"]
    print(f"  chunked: {peak_u / max(peak_c, 1e-9):.1f}x less memory, {time_c / time_u:.2f}x the time")


DATA_PROCESS = '''
import sys, time
from transformers import AutoTokenizer
from polyglot_distil.data.corpus import iter_language, parse_sources
from polyglot_distil.data.mlm import encode_text, to_blocks
from polyglot_distil.distill.general import load_blocks

mode, tokenizer_dir, corpus, cache, block_size = sys.argv[1:6]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def status_mib(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field)) / 1024


with open("/proc/self/clear_refs", "w") as handle:  # the peak (VmHWM) from here on
    handle.write("5")
base, start = status_mib("VmRSS:"), time.perf_counter()
if mode == "before":  # what load_blocks did before the token cache: one array per line, then blocks
    ids = encode_text(iter_language(parse_sources([corpus])), tokenizer)
    blocks = to_blocks(ids, int(block_size), tokenizer.cls_token_id, tokenizer.sep_token_id)
else:
    blocks = load_blocks({"en": parse_sources([corpus])}, tokenizer, int(block_size), None, 0, False, cache)["en"]
print("RESULT", status_mib("VmHWM:") - base, time.perf_counter() - start, blocks.shape[0])
'''


def data_memory(args) -> None:
    """Peak RSS of phase 1's data preparation for 1x and 4x the corpus, each in a fresh process:
    the token cache (written, then reused) against tokenizing into one array per line."""
    import subprocess

    texts = sorted((ROOT / "corpora").glob("*/sample.txt"))
    sample = "".join(f.read_text(encoding="utf-8") for f in texts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = build_smoke_model(tmp / "tokenizer", "bert", texts=texts, vocab_size=args.vocab, hidden_size=32,
                                      num_layers=1, num_heads=2, intermediate_size=64)
        repeats = max(1, round(args.data_mib * 2**20 / len(sample.encode("utf-8"))))
        print(f"\nphase 1 data preparation (load_blocks, block {args.block_size}): peak RSS above the process "
              f"before it (VmHWM - VmRSS), each in a fresh process; corpus 1x = the bundled samples x {repeats}:")
        for scale in (1, 4):
            corpus = tmp / f"corpus-{scale}x.txt"
            corpus.write_text(sample * (repeats * scale), encoding="utf-8")
            megabytes = corpus.stat().st_size / 2**20
            for mode, label in (("before", "one array per line, then blocks (before)"),
                                ("cache", "token cache, written"), ("cache", "token cache, reused")):
                out = subprocess.run([sys.executable, "-c", DATA_PROCESS, mode, str(tokenizer), str(corpus),
                                      str(tmp / f"cache-{scale}x"), str(args.block_size)], capture_output=True,
                                     text=True, cwd=ROOT, check=True).stdout
                peak, seconds, blocks = out.split("RESULT")[-1].split()
                print(f"  {scale}x ({megabytes:5.1f} MiB text, {int(blocks):,} blocks)  {label:42s} "
                      f"{float(peak):7.1f} MiB  {float(seconds):6.1f} s")


def phase2_cache(args) -> None:
    """`distil task` for one full and one sparse epoch, without and with --teacher-cache."""
    import json

    from polyglot_distil import api

    nli = ROOT / "corpora" / "nli"
    texts = sorted((ROOT / "corpora").glob("*/sample.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shape = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                     intermediate_size=4 * args.hidden)
        base = build_smoke_model(tmp / "base", "bert", texts=texts, vocab_size=args.vocab, **shape)
        teacher = build_smoke_model(tmp / "teacher", "bert", vocab_file=base / "vocab.txt",
                                    head="sequence-classification", **shape)
        api.student(str(base), tmp / "student", layers=args.layers // 2)
        common = dict(full_epochs=1, sparse_epochs=1, batch_size=16, max_length=128, eval_every=1000,
                      no_progress=True)

        def train_seconds(out: Path, **extra) -> float:
            start = time.perf_counter()
            api.task(teacher, tmp / "student", [str(nli / "train-en.tsv")], [str(nli / "dev-en.tsv")], out,
                     **common, **extra)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            train = max(r["elapsed_s"] for r in rows if r["kind"] == "train")
            print(f"    ({out.name}: {time.perf_counter() - start:.1f} s in all)", flush=True)
            return train

        plain = train_seconds(tmp / "plain")
        start = time.perf_counter()
        first = train_seconds(tmp / "cached-first", teacher_cache=str(tmp / "cache"))
        built = time.perf_counter() - start
        cached = train_seconds(tmp / "cached", teacher_cache=str(tmp / "cache"))
        steps = 2 * (240 // 16)
        print(f"\nphase 2, {steps} steps (one full and one sparse epoch of 240 pairs, batch 16; teacher "
              f"{args.layers} layers, student {args.layers // 2}):")
        print(f"  without the teacher cache  {plain:6.1f} s  ({plain / steps * 1e3:.0f} ms/step)")
        print(f"  with the cache             {cached:6.1f} s  ({cached / steps * 1e3:.0f} ms/step): "
              f"{plain / cached:.2f}x faster")
        print(f"  first run, building it     {first:6.1f} s of training; {built:.1f} s for the whole run")


if __name__ == "__main__":
    main()
