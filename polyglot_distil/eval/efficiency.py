"""Efficiency figures: parameters, weight files on disk, peak memory, CPU (and GPU) latency and
throughput, and the ratios of a model's figures to its teacher's."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from pathlib import Path

from polyglot_distil.models.loading import folder_size_bytes
from polyglot_distil.models.classifier import Classifier, load_classifier
from polyglot_distil.params import count_parameters


TIMING_TOKENS = 128


THROUGHPUT_BATCH = 32


def _parameter_figures(model) -> dict:
    counts = count_parameters(model)
    return {"params_total": counts["total"], "params_embedding": counts["embedding"]}


def weights_disk_bytes(path: str) -> int | None:
    """Bytes of the weight files of a model folder (a hub name: its cached copy, if any)."""
    folder = Path(path)
    if folder.suffix == ".onnx" and folder.is_file():  # an ONNX graph: it, and its external data
        return sum(p.stat().st_size for p in (folder, folder.with_name(folder.name + ".data")) if p.is_file())
    if (folder / "model.onnx").is_file():
        return weights_disk_bytes(str(folder / "model.onnx"))
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not cached, or not a hub name: nothing to measure
            return None
    weights = [p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".bin"))]
    return sum(p.stat().st_size for p in weights) if weights else folder_size_bytes(folder)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak increase of this process's resident memory inside a `with` block, sampled every
    `interval` seconds on a thread (Linux /proc; `delta` stays None elsewhere)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.delta = interval, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._start = _rss_bytes()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._start is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.delta = max(self._peak - self._start, 0)


def _release_memory() -> None:
    """Hand freed memory back to the OS so that the next RSS measurement starts clean."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timing_batch(classifier: Classifier, batch: int, tokens: int, device) -> dict:
    """A fixed pseudo-random input of `batch` x `tokens` ids (content does not change the cost)."""
    import torch

    vocab = classifier.model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, tokens), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in classifier.tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(device) for k, v in inputs.items()}


def _seconds_per_call(model, inputs: dict, repeats: int, warmup: int, sync=None) -> float:
    """Median wall seconds of one forward pass."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(**inputs)
            if sync:
                sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_efficiency(path: str, repeats: int = 10, warmup: int = 2, attn_implementation: str = "sdpa",
                       trust_remote_code: bool = False) -> dict:
    """Memory and speed of one model, loaded afresh: peak memory (bytes), CPU latency (ms) and
    throughput (pairs/s), and on a GPU the same plus `gpu_peak_memory_bytes`."""
    import torch

    _release_memory()
    figures: dict = {}
    with PeakRSS() as peak:
        classifier = load_classifier(path, "cpu", attn_implementation, trust_remote_code)
        tokens = min(TIMING_TOKENS, classifier.model.config.max_position_embeddings)
        with torch.inference_mode():
            classifier.model(**_timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cpu"))
    figures["peak_memory_bytes"] = peak.delta
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _timing_batch(classifier, 1, tokens, "cpu")
        figures["cpu_latency_ms"] = 1000 * _seconds_per_call(classifier.model, one, repeats, warmup)
    finally:
        torch.set_num_threads(threads)
    full = _timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cpu")
    seconds = _seconds_per_call(classifier.model, full, repeats, warmup)
    figures["cpu_throughput_pairs_per_s"] = THROUGHPUT_BATCH / seconds
    figures["cpu_threads"] = threads
    figures["timing_tokens"] = tokens
    if torch.cuda.is_available() and not cpu_only(classifier.model):
        model = classifier.model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
        sync = torch.cuda.synchronize
        one = _timing_batch(classifier, 1, tokens, "cuda")
        figures["gpu_latency_ms"] = 1000 * _seconds_per_call(model, one, repeats, warmup, sync)
        full = _timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cuda")
        figures["gpu_throughput_pairs_per_s"] = THROUGHPUT_BATCH / _seconds_per_call(model, full, repeats, warmup, sync)
        figures["gpu_peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        figures["gpu"] = torch.cuda.get_device_name()
    del classifier
    _release_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figures


def cpu_only(model) -> bool:
    """Whether a loaded model runs on the CPU only: an ONNX graph (onnxruntime's CPU provider) or
    an int8 model (PyTorch's dynamic int8 kernels)."""
    return hasattr(model, "parameter_counts") or any(hasattr(m, "_packed_params") for m in model.modules())


def _ratios(model: dict, teacher: dict) -> dict:
    """model / teacher for every numeric figure both have."""
    return {k: model[k] / teacher[k] for k in model
            if isinstance(model[k], (int, float)) and isinstance(teacher.get(k), (int, float)) and teacher[k]
            and k not in ("cpu_threads", "timing_tokens")}
