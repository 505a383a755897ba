"""Loading a model into memory: the registry's loader (encrypted, every chunk authenticated and
every file's BLAKE3 checked) against safetensors, runai-model-streamer and tensorizer (plain and
encrypted) on the same tensors, in one run, alternating the contestants (issue 6).

    .venv/bin/pip install -e '.[bench]'      # tensorizer, runai-model-streamer
    .venv/bin/python bench/load.py --size-mib 1024 --repeat 3
    .venv/bin/python bench/load.py --size-mib 4096 --repeat 2
    .venv/bin/python bench/load.py --device cuda:0     # on a GPU: adds pinned H2D copy bandwidth

Every contestant ends with every tensor materialised in memory it owns (on `--device`), with the
page cache warm (each file is read once before timing). Each load runs in a fresh process, as a
serving process starting up would (imports and set-up are not timed): in a process that loaded
before, the allocator hands freed memory back without page faults, which flatters whoever
allocates many small tensors. Prints the best time of each, the ratios, and the registry's time
to first tensor (`iter_tensors`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from registry import loader
from registry.service import Registry
from registry.testing.models import make_model


def _warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/load"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="registry loader threads")
    parser.add_argument("--chunks-per-read", type=int, default=loader.api.DEFAULT_CHUNKS_PER_READ)
    parser.add_argument(
        "--only", default="", help="comma-separated contestants (default: all available)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run one contestant, print seconds
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{args.size_mib}m-{args.shards}"
    if not model.exists():
        make_model(
            model,
            shards=args.shards,
            shard_size=args.size_mib * 1024 * 1024 // args.shards,
            tensors_per_shard=8,
            dtype="BF16",
            seed=1,
        )
    shards = sorted(model.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    child = args.child is not None
    scratch = args.scratch if child else Path(tempfile.mkdtemp(dir=work))
    home = scratch / "home"
    if not child:
        Registry.init(home)
    registry = Registry.open(home)
    if not child:
        registry.push("bench/model", model)
    reference = {}
    for shard in shards:
        reference.update(load_file(shard))
    count = len(reference)

    contestants: dict[str, Callable[[], Any]] = {}

    def registry_load() -> Any:
        state = loader.load(
            "bench/model",
            registry=registry,
            device=device,
            workers=args.workers,
            chunks_per_read=args.chunks_per_read,
        )
        assert len(state) == count
        return state

    contestants["registry (encrypted+verified)"] = registry_load

    def safetensors_load() -> Any:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            # load_file maps the file: materialising is copying each tensor into its own memory.
            state.update({k: v.clone() for k, v in load_file(shard, device=device).items()})
        return state

    contestants["safetensors load_file"] = safetensors_load

    try:
        from runai_model_streamer import SafetensorsStreamer

        def runai_load() -> Any:
            state: dict[str, torch.Tensor] = {}
            with SafetensorsStreamer() as streamer:
                streamer.stream_files([str(s) for s in shards])
                for name, tensor in streamer.get_tensors():
                    # The streamer's buffer is reused: materialising means copying out of it.
                    state[name] = tensor.to(device, copy=True)
            return state

        contestants["runai-model-streamer"] = runai_load
    except ImportError:
        print("runai-model-streamer not installed: skipped (pip install -e '.[bench]')")

    try:
        from tensorizer import TensorDeserializer, TensorSerializer
        from tensorizer.serialization import DecryptionParams, EncryptionParams

        plain, sealed = scratch / "plain.tensors", scratch / "encrypted.tensors"
        key_file = scratch / "tensorizer.key"
        if not child:
            serializer = TensorSerializer(str(plain))
            serializer.write_state_dict(reference)
            serializer.close()
            encryption = EncryptionParams.random()
            key_file.write_bytes(encryption.key)
            serializer = TensorSerializer(str(sealed), encryption=encryption)
            serializer.write_state_dict(reference)
            serializer.close()

        def tensorizer_load(path: Path, **kwargs: Any) -> Callable[[], Any]:
            def run() -> Any:
                deserializer = TensorDeserializer(str(path), device=device, **kwargs)
                state = dict(deserializer.items())
                deserializer.close()
                return state

            return run

        contestants["tensorizer plain"] = tensorizer_load(plain)
        contestants["tensorizer encrypted"] = tensorizer_load(
            sealed, encryption=DecryptionParams.from_key(key_file.read_bytes())
        )
    except ImportError:
        print("tensorizer not installed: skipped (pip install -e '.[bench]')")

    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        contestants = {k: v for k, v in contestants.items() if k in wanted}
    del reference  # not in the children's memory while they load
    gc.collect()

    if child:
        run = contestants[args.child]
        if device.startswith("cuda"):
            torch.cuda.init()
            torch.empty(1, device=device)  # CUDA context creation is set-up, not loading
            torch.cuda.synchronize()
        started = time.perf_counter()
        state = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        print(json.dumps({"seconds": time.perf_counter() - started, "tensors": len(state)}))
        registry.close()
        return 0

    try:
        _compare(args, contestants, scratch, shards, size, count, registry)
    finally:
        registry.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _compare(
    args: argparse.Namespace,
    contestants: dict[str, Callable[[], Any]],
    scratch: Path,
    shards: list[Path],
    size: int,
    count: int,
    registry: Registry,
) -> None:
    device, work, home = args.device, args.workdir.absolute(), scratch / "home"
    store = home / "store" / "objects"
    _warm(shards + [p for p in store.rglob("*") if p.is_file()] + list(scratch.glob("*.tensors")))
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _round in range(args.repeat):
        for name in contestants:
            command = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--scratch",
                str(scratch),
                "--workdir",
                str(work),
                "--size-mib",
                str(args.size_mib),
                "--shards",
                str(args.shards),
                "--device",
                device,
                "--chunks-per-read",
                str(args.chunks_per_read),
                *(["--workers", str(args.workers)] if args.workers else []),
            ]
            answer = subprocess.run(command, capture_output=True, text=True, check=False)
            if answer.returncode != 0:
                raise SystemExit(f"{name} failed:\n{answer.stderr[-3000:]}")
            times[name].append(json.loads(answer.stdout.strip().splitlines()[-1])["seconds"])

    # Time to first tensor (registry), best of the same number of rounds: each tensor as its
    # chunks authenticate (early), and file by file once each file is verified (the default).
    first: dict[bool, list[float]] = {True: [], False: []}
    whole: dict[bool, list[float]] = {True: [], False: []}
    for _round in range(args.repeat):
        for early in (True, False):
            started = time.perf_counter()
            stream = loader.iter_tensors(
                "bench/model", registry=registry, device=device, workers=args.workers, early=early
            )
            ttft = None
            for _item in stream:
                if ttft is None:
                    ttft = time.perf_counter() - started
            whole[early].append(time.perf_counter() - started)
            first[early].append(ttft or 0.0)

    print(
        f"model: {size / 2**20:.0f} MiB, {len(shards)} shards, {count} BF16 tensors; "
        f"device {device}; best of {args.repeat}; {os.cpu_count()} CPUs"
    )
    best = {name: min(values) for name, values in times.items()}
    ours = best["registry (encrypted+verified)"]
    for name, seconds in best.items():
        print(
            f"  {name:32s} {seconds:6.2f} s  {size / seconds / 1e9:5.2f} GB/s  "
            f"registry is {seconds / ours:4.2f}x its speed"
        )
    for early, label in ((True, "early=True"), (False, "file by file")):
        ttft, total = min(first[early]), min(whole[early])
        print(
            f"  registry time to first tensor ({label}): {ttft * 1000:.0f} ms of a {total:.2f} s "
            f"streamed load ({ttft / total:.1%})"
        )
    if device.startswith("cuda"):
        host = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, pin_memory=True)
        target = torch.empty_like(host, device=device)
        best_copy = float("inf")
        for _ in range(5):
            torch.cuda.synchronize()
            started = time.perf_counter()
            target.copy_(host, non_blocking=True)
            torch.cuda.synchronize()
            best_copy = min(best_copy, time.perf_counter() - started)
        bandwidth = host.numel() / best_copy
        print(
            f"  pinned host-to-device copy: {bandwidth / 1e9:.2f} GB/s; registry at "
            f"{size / ours / bandwidth:.2f}x of it"
        )


if __name__ == "__main__":
    sys.exit(main())
