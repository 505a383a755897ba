"""Loading a model into memory: the registry's loader (encrypted, every chunk authenticated and
every file's BLAKE3 checked) against safetensors, fastsafetensors, runai-model-streamer and
tensorizer (plain and encrypted) on the same tensors, in one run, alternating the contestants,
beside the decrypt+hash limit of the same cores measured in the same run (issues 6 and 16).

    .venv/bin/pip install -e '.[bench]'      # tensorizer, runai-model-streamer, fastsafetensors
    .venv/bin/python bench/load.py --size-mib 1024 --repeat 3
    .venv/bin/python bench/load.py --size-mib 4096 --repeat 2
    .venv/bin/python bench/load.py --size-mib 1024 --repeat 3 --scaling   # 1 core, then all
    .venv/bin/python bench/load.py --cpus 0                               # pinned to CPU 0
    .venv/bin/python bench/load.py --device cuda:0     # on a GPU: adds pinned H2D copy bandwidth

Every contestant ends with every tensor materialised in memory it owns (on `--device`), with the
page cache warm (each file is read once before timing). Each load runs in a fresh process, as a
serving process starting up would (imports and set-up are not timed): in a process that loaded
before, the allocator hands freed memory back without page faults, which flatters whoever
allocates many small tensors. Every child process (loads, the limits, time to first tensor, the
H2D copy) runs under the CPU affinity of `--cpus` (set before the interpreter starts, as
`taskset` does), so the limits are those of the cores the loads ran on. Prints the best time of
each, the ratios and the aims, the registry's share of the decrypt+hash limit, and its time to
first tensor (`iter_tensors`).
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

from limits import GB, core_figures, render_core_figures  # noqa: E402 - bench/ is sys.path[0]

from registry import loader  # noqa: E402
from registry.service import Registry  # noqa: E402
from registry.testing.models import make_model  # noqa: E402

MODEL = "bench/model"
REGISTRY = "registry (encrypted+verified)"
SAFETENSORS = "safetensors load_file"
FASTSAFETENSORS = "fastsafetensors (nogds)"
RUNAI = "runai-model-streamer"
TENSORIZER = "tensorizer plain"
TENSORIZER_ENCRYPTED = "tensorizer encrypted"
CONTESTANTS = (REGISTRY, SAFETENSORS, FASTSAFETENSORS, RUNAI, TENSORIZER, TENSORIZER_ENCRYPTED)
# Not contestants: the other jobs a child process does.
LIMITS = "limits"
TTFT_EARLY = "ttft early"
TTFT_FILE = "ttft file by file"
H2D = "pinned h2d"
# Issue 16: the registry's speed over each of these, at least.
AIMS = {RUNAI: 1.3, TENSORIZER_ENCRYPTED: 1.5, SAFETENSORS: 0.75}
AIM_LIMIT = 0.8  # of the decrypt+hash limit of the cores used
AIM_TTFT = 0.05  # time to first tensor, of the load
PROJECT_CORES = 16  # the scaling model's target (a GPU machine's cores)

# Runs first in each child, under `python -S`: pins the process to the CPUs, then becomes the
# child proper, so torch's and every library's thread pools start under that affinity.
PIN = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')})\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def parse_cpus(text: str) -> list[int]:
    """'0', '0,1', '0-3' or '0,2-3' as a sorted list of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise argparse.ArgumentTypeError(f"no CPUs in {text!r}")
    return sorted(cpus)


def _warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def _count_tensors(shards: Sequence[Path]) -> int:
    count = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            count += len(list(handle.keys()))
    return count


def model_dir(args: argparse.Namespace) -> Path:
    return Path(args.workdir).absolute() / f"model-{args.size_mib}m-{args.shards}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/load"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="registry loader threads")
    parser.add_argument(
        "--chunks-per-read", type=int, default=None, help="registry loader (default: its own)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated contestants (default: all available)"
    )
    parser.add_argument(
        "--cpus",
        type=parse_cpus,
        default=None,
        help="CPUs every child runs on, e.g. 0 or 0,1 or 0-3 (default: all this process may use)",
    )
    parser.add_argument(
        "--scaling",
        nargs="?",
        const="1,all",
        default=None,
        metavar="COUNTS",
        help="run the whole comparison on each number of cores (the first N of --cpus), "
        "default 1,all, then a scaling summary",
    )
    parser.add_argument(
        "--limit-mib", type=int, default=64, help="buffer of each thread of the limits (64)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one job, prints JSON
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device}: torch {torch.__version__} sees no CUDA device (CUDA build: "
            f"{torch.version.cuda or 'no'}); run this on a GPU machine with a CUDA build of torch"
        )
    wanted = {name.strip() for name in args.only.split(",") if name.strip()} or set(CONTESTANTS)
    if wanted - set(CONTESTANTS):
        parser.error(f"--only: unknown {sorted(wanted - set(CONTESTANTS))}; from {CONTESTANTS}")
    if args.child:  # a child builds only the contestant it runs (the registry for ttft)
        wanted = {args.child if args.child in CONTESTANTS else REGISTRY}
    sets = [] if args.child else _cpu_sets(parser, args.cpus, args.scaling)
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    model = model_dir(args)
    marker = model.with_name(model.name + ".complete")
    if args.child is None and not marker.exists():
        shutil.rmtree(model, ignore_errors=True)
        print(f"generating {model} ...", file=sys.stderr)
        make_model(
            model,
            shards=args.shards,
            shard_size=args.size_mib * 1024 * 1024 // args.shards,
            tensors_per_shard=8,
            dtype="BF16",
            seed=1,
        )
        marker.write_text("")
    shards = sorted(model.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    count = _count_tensors(shards)

    if args.child == LIMITS:
        cores = len(os.sched_getaffinity(0))
        figures = core_figures(cores, args.limit_mib, repeat=7, files=shards)
        print(json.dumps(figures | {"cpus": sorted(os.sched_getaffinity(0))}))
        return 0
    if args.child == H2D:
        print(json.dumps({"bandwidth": _pinned_h2d(device)}))
        return 0

    child = args.child is not None
    scratch = args.scratch if child else Path(tempfile.mkdtemp(dir=work))
    try:
        return _run(args, wanted, sets, scratch, shards, size, count)
    finally:
        if not child:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    wanted: set[str],
    sets: list[list[int]],
    scratch: Path,
    shards: list[Path],
    size: int,
    count: int,
) -> int:
    """A child's one job, or (the parent) the home, the files, and the comparison on each set
    of CPUs."""
    device, child = args.device, args.child is not None
    home = scratch / "home"
    if not child:
        print("pushing the model to a fresh home ...", file=sys.stderr)
        Registry.init(home)
    registry = Registry.open(home)
    try:
        if not child:
            registry.push(MODEL, model_dir(args))
        options: dict[str, Any] = {"device": device}
        if args.workers is not None:
            options["workers"] = args.workers
        if args.chunks_per_read is not None:
            options["chunks_per_read"] = args.chunks_per_read
        contestants, skipped = _contestants(
            shards, scratch, device, registry, options, child, wanted
        )
        contestants = {k: v for k, v in contestants.items() if k in wanted}
        gc.collect()
        if child:
            return _child(args.child, contestants, registry, options, device, count)
        for line in skipped:
            print(line)
        store = home / "store" / "objects"
        results = []
        for cpu_set in sets:
            _warm(shards + [p for p in store.rglob("*") if p.is_file()])
            _warm(list(scratch.glob("*.tensors")))
            result = _compare(args, list(contestants), scratch, cpu_set, size, count)
            result |= {"model_bytes": size, "shards": len(shards), "tensors": count}
            results.append(result)
            print(_render(result, args))
            sys.stdout.flush()
        if len(results) > 1:
            print(_render_scaling(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        registry.close()
    return 0


def _cpu_sets(
    parser: argparse.ArgumentParser, cpus: list[int] | None, scaling: str | None
) -> list[list[int]]:
    """The CPU sets to run the comparison on: `--cpus` (default: all this process may use), or
    with `--scaling`, its first N for each N asked for."""
    available = sorted(os.sched_getaffinity(0))
    cpus = cpus or available
    if not set(cpus) <= set(available):
        parser.error(f"--cpus {','.join(map(str, cpus))}: this process may use only {available}")
    if not scaling:
        return [cpus]
    try:
        counts = [len(cpus) if c.strip() == "all" else int(c) for c in scaling.split(",")]
    except ValueError:
        parser.error(f"--scaling {scaling}: numbers of cores or 'all', e.g. 1,all or 1,2,4")
    if any(not 1 <= c <= len(cpus) for c in counts):
        parser.error(f"--scaling {scaling}: 1 to {len(cpus)} cores here ({cpus})")
    return [cpus[:c] for c in dict.fromkeys(counts)]


def _contestants(
    shards: list[Path],
    scratch: Path,
    device: str,
    registry: Registry,
    options: dict[str, Any],
    child: bool,
    wanted: set[str],
) -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """The wanted loads, each ending with every tensor in memory it owns on `device`; and a
    line for each wanted contestant that cannot run here, saying why. Only the wanted ones are
    imported, and tensorizer's files are written (by the parent) only when one of its two is."""
    contestants: dict[str, Callable[[], Any]] = {}
    skipped: list[str] = []
    install = "pip install -e '.[bench]'"

    def registry_load() -> Any:
        # Only the public API: the loader's internals are free to change.
        return loader.load(MODEL, registry=registry, **options)

    contestants[REGISTRY] = registry_load

    def safetensors_load() -> Any:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            # load_file maps the file: materialising is copying each tensor into its own memory.
            state.update({k: v.clone() for k, v in load_file(shard, device=device).items()})
        return state

    contestants[SAFETENSORS] = safetensors_load

    if FASTSAFETENSORS in wanted:
        try:
            from fastsafetensors import SafeTensorsFileLoader, SingleGroup
        except ImportError as error:
            skipped.append(f"fastsafetensors not installed: skipped ({error}; {install})")
        else:

            def fastsafetensors_load() -> Any:
                # nogds: pread of each file (through the page cache, not O_DIRECT:
                # FASTSAFETENSORS_ODIRECT=0 in the children's environment) into one buffer per
                # file on the device. The tensors share ownership of that buffer and outlive
                # close(), as the registry's tensors are views of one buffer per file: they own
                # their memory without a copy.
                files = SafeTensorsFileLoader(SingleGroup(), device, nogds=True)
                try:
                    files.add_filenames({0: [str(s) for s in shards]})
                    buffers = files.copy_files_to_device()
                    try:
                        state = {name: buffers.get_tensor(name) for name in files.get_keys()}
                    finally:
                        buffers.close()
                finally:
                    files.close()
                return state

            contestants[FASTSAFETENSORS] = fastsafetensors_load

    if RUNAI in wanted:
        try:
            from runai_model_streamer import SafetensorsStreamer
        except ImportError as error:
            skipped.append(f"runai-model-streamer not installed: skipped ({error}; {install})")
        else:

            def runai_load() -> Any:
                state: dict[str, torch.Tensor] = {}
                with SafetensorsStreamer() as streamer:
                    streamer.stream_files([str(s) for s in shards])
                    for name, tensor in streamer.get_tensors():
                        # The streamer's buffer is reused: materialising is copying out of it.
                        state[name] = tensor.to(device, copy=True)
                return state

            contestants[RUNAI] = runai_load

    if wanted & {TENSORIZER, TENSORIZER_ENCRYPTED}:
        try:
            from tensorizer import TensorDeserializer, TensorSerializer
            from tensorizer.serialization import DecryptionParams, EncryptionParams
        except ImportError as error:
            skipped.append(f"tensorizer not installed: skipped ({error}; {install})")
        else:
            plain, sealed = scratch / "plain.tensors", scratch / "encrypted.tensors"
            key_file = scratch / "tensorizer.key"
            if not child:
                print("serialising tensorizer's files ...", file=sys.stderr)
                reference: dict[str, torch.Tensor] = {}
                for shard in shards:
                    reference.update(load_file(shard))
                serializer = TensorSerializer(str(plain))
                serializer.write_state_dict(reference)
                serializer.close()
                encryption = EncryptionParams.random()
                key_file.write_bytes(encryption.key)
                serializer = TensorSerializer(str(sealed), encryption=encryption)
                serializer.write_state_dict(reference)
                serializer.close()
                del reference  # not in the parent's memory while the children load

            def tensorizer_load(path: Path, **kwargs: Any) -> Callable[[], Any]:
                def run() -> Any:
                    deserializer = TensorDeserializer(str(path), device=device, **kwargs)
                    state = dict(deserializer.items())
                    deserializer.close()
                    return state

                return run

            contestants[TENSORIZER] = tensorizer_load(plain)
            contestants[TENSORIZER_ENCRYPTED] = tensorizer_load(
                sealed, encryption=DecryptionParams.from_key(key_file.read_bytes())
            )
    return contestants, skipped


def _cuda_ready(device: str) -> None:
    if device.startswith("cuda"):
        torch.empty(1, device=device)  # CUDA context creation is set-up, not loading
        torch.cuda.synchronize()


def _cuda_sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _child(
    job: str,
    contestants: dict[str, Callable[[], Any]],
    registry: Registry,
    options: dict[str, Any],
    device: str,
    count: int,
) -> int:
    """One job in this fresh process; its result as JSON on the last line of stdout."""
    _cuda_ready(device)
    answer: dict[str, Any] = {"cpus": sorted(os.sched_getaffinity(0))}
    if job in (TTFT_EARLY, TTFT_FILE):
        kept = []
        started = time.perf_counter()
        first = None
        stream = loader.iter_tensors(MODEL, registry=registry, early=job == TTFT_EARLY, **options)
        for item in stream:
            if first is None:
                _cuda_sync(device)
                first = time.perf_counter() - started
            kept.append(item)
        _cuda_sync(device)
        answer |= {"first": first or 0.0, "seconds": time.perf_counter() - started}
    else:
        run = contestants[job]
        started = time.perf_counter()
        state = run()
        _cuda_sync(device)
        answer["seconds"] = time.perf_counter() - started
        if len(state) != count:
            raise SystemExit(f"{job} loaded {len(state)} tensors of {count}")
        stats = getattr(state, "stats", None)  # the registry's LoadStats
        ttft = getattr(stats, "time_to_first_tensor", None)
        if isinstance(ttft, int | float):
            answer["stats_first"] = float(ttft)
            answer["stats_seconds"] = float(getattr(stats, "seconds", 0.0))
    answer["tensors"] = count
    answer["torch_threads"] = torch.get_num_threads()
    print(json.dumps(answer))
    return 0


def _pinned_h2d(device: str) -> float:
    """Bytes per second of a pinned host-to-device copy of 256 MiB, best of 5."""
    _cuda_ready(device)
    host = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, pin_memory=True)
    target = torch.empty_like(host, device=device)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        started = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return host.numel() / best


def _run_child(
    args: argparse.Namespace, job: str, scratch: Path, cpus: Sequence[int]
) -> dict[str, Any] | str:
    """One job in a fresh process pinned to `cpus`: its JSON answer, or why it failed."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        job,
        "--scratch",
        str(scratch),
        "--workdir",
        str(args.workdir.absolute()),
        "--size-mib",
        str(args.size_mib),
        "--shards",
        str(args.shards),
        "--device",
        args.device,
        "--limit-mib",
        str(args.limit_mib),
        *(["--workers", str(args.workers)] if args.workers is not None else []),
        *(["--chunks-per-read", str(args.chunks_per_read)] if args.chunks_per_read else []),
    ]
    pinned = [sys.executable, "-S", "-c", PIN, ",".join(map(str, cpus)), *command]
    # fastsafetensors reads with O_DIRECT by default on a local disk, bypassing the page cache
    # every other contestant reads from: buffered, like them.
    env = {"FASTSAFETENSORS_ODIRECT": "0"} | dict(os.environ)
    try:
        answer = subprocess.run(
            pinned, capture_output=True, text=True, check=False, env=env, timeout=900
        )
    except subprocess.TimeoutExpired:
        return "timed out after 900 s"
    if answer.returncode != 0:
        lines = [line for line in answer.stderr.strip().splitlines() if line.strip()]
        print(f"{job} failed:\n{answer.stderr[-3000:]}", file=sys.stderr)
        return lines[-1][:200] if lines else f"exit {answer.returncode}"
    result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


def _compare(
    args: argparse.Namespace,
    names: list[str],
    scratch: Path,
    cpus: Sequence[int],
    size: int,
    count: int,
) -> dict[str, Any]:
    """The limits, the contestants alternating for `--repeat` rounds, then the time to first
    tensor, every one in its own process pinned to `cpus`."""
    label = f"{len(cpus)} core{'s' if len(cpus) > 1 else ''} (CPUs {','.join(map(str, cpus))})"
    load_before = os.getloadavg()[0]
    print(f"[{label}] limits ...", file=sys.stderr)
    limits = _run_child(args, LIMITS, scratch, cpus)
    if isinstance(limits, str):
        raise SystemExit(f"measuring the limits failed: {limits}")
    times: dict[str, list[float]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    stats_first: list[tuple[float, float]] = []
    torch_threads = 0
    for round_ in range(args.repeat):
        for name in names:
            if name in failed:
                continue
            print(f"[{label}] round {round_ + 1}/{args.repeat}: {name} ...", file=sys.stderr)
            answer = _run_child(args, name, scratch, cpus)
            if isinstance(answer, str):
                failed[name] = answer
                continue
            times[name].append(answer["seconds"])
            torch_threads = answer.get("torch_threads", torch_threads)
            if "stats_first" in answer:
                stats_first.append((answer["stats_first"], answer["stats_seconds"]))
    ttft: dict[str, list[tuple[float, float]]] = {TTFT_EARLY: [], TTFT_FILE: []}
    if REGISTRY in names:
        for round_ in range(args.repeat):
            for job in ttft:
                print(f"[{label}] round {round_ + 1}/{args.repeat}: {job} ...", file=sys.stderr)
                answer = _run_child(args, job, scratch, cpus)
                if isinstance(answer, str):
                    failed[job] = answer
                    continue
                ttft[job].append((answer["first"], answer["seconds"]))
    h2d = None
    if args.device.startswith("cuda"):
        answer = _run_child(args, H2D, scratch, cpus)
        h2d = None if isinstance(answer, str) else answer["bandwidth"]
    return {
        "cpus": list(cpus),
        "device": args.device,
        "repeat": args.repeat,
        "limits": limits,
        "seconds": times,
        "best": {name: min(values) for name, values in times.items() if values},
        "failed": failed,
        "ttft": ttft,
        "load_stats_ttft": stats_first,
        "h2d": h2d,
        "torch_threads": torch_threads,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
    }


def _render(result: dict[str, Any], args: argparse.Namespace) -> str:
    size, cpus, best = result["model_bytes"], result["cpus"], result["best"]
    limits = result["limits"]
    load = result["load_average"]
    cores = len(cpus)
    lines = [
        "",
        f"== {cores} core{'s' if cores > 1 else ''}: CPUs {','.join(map(str, cpus))} "
        f"(of {os.cpu_count()}); model {size / 2**20:.0f} MiB, {result['shards']} shards, "
        f"{result['tensors']} BF16 tensors; device {result['device']}; best of "
        f"{result['repeat']}; torch threads {result['torch_threads']}; load average "
        f"{load['before']:.2f} before, {load['after']:.2f} after",
        f"limits, {cores} thread{'s' if cores > 1 else ''} at once "
        f"({args.limit_mib} MiB each, best of 7):",
        *render_core_figures(limits),
        "loads (each a fresh process):",
    ]
    ours = best.get(REGISTRY)
    h2d = result["h2d"]
    for name in result["seconds"]:
        if name in result["failed"]:
            lines.append(f"  {name:32s} failed: {result['failed'][name]}")
            continue
        seconds = best[name]
        line = f"  {name:32s} {seconds:6.2f} s  {size / seconds / GB:5.2f} GB/s"
        if h2d:
            line += f"  {size / seconds / h2d:4.2f}x of pinned H2D"
        if ours and name != REGISTRY:
            ratio = seconds / ours
            line += f"  registry is {ratio:4.2f}x its speed"
            if name in AIMS:
                met = "met" if ratio >= AIMS[name] else "missed"
                line += f" (aim >= {AIMS[name]}x: {met})"
        lines.append(line)
    if ours:
        rate = size / ours
        share = rate / limits["decrypt_hash_limit"]
        share_fresh = rate / limits["decrypt_hash_limit_fresh"]
        met = "met" if share >= AIM_LIMIT else "missed"
        lines += [
            f"  registry / decrypt+hash limit of these cores: {share:.0%} (aim >= "
            f"{AIM_LIMIT:.0%}: {met}); / the limit into fresh memory: {share_fresh:.0%}; "
            f"/ copy into fresh memory: {rate / limits['copy_fresh']:.0%}",
        ]
    for job, label in ((TTFT_EARLY, "early=True"), (TTFT_FILE, "file by file")):
        if result["ttft"][job]:
            first, total = min(result["ttft"][job], key=lambda pair: pair[1])
            met = "met" if first / total <= AIM_TTFT else "missed"
            lines.append(
                f"  registry time to first tensor ({label}): {first * 1000:.0f} ms of a "
                f"{total:.2f} s streamed load ({first / total:.1%}; aim <= {AIM_TTFT:.0%}: {met})"
            )
    if result["load_stats_ttft"]:
        first, total = min(result["load_stats_ttft"], key=lambda pair: pair[1])
        if total > 0:
            lines.append(
                f"  registry load()'s own LoadStats: first tensor at {first * 1000:.0f} ms of "
                f"{total:.2f} s ({first / total:.1%})"
            )
    if h2d:
        lines.append(f"  pinned host-to-device copy (256 MiB, best of 5): {h2d / GB:.2f} GB/s")
    elif result["device"].startswith("cuda"):
        lines.append(f"  pinned host-to-device copy failed: {result['failed'].get(H2D, '?')}")
    return "\n".join(lines)


def _amdahl(n1: int, t1: float, n2: int, t2: float, target: int) -> float:
    """Seconds on `target` cores from t(n) = serial + parallel / n through two measurements.
    A speedup beyond the cores' ratio (noise) counts as perfect scaling from the first point;
    a slowdown as none (the better of the two times)."""
    parallel = (t1 - t2) / (1 / n1 - 1 / n2)
    serial = t1 - parallel / n1
    if parallel <= 0:
        return min(t1, t2)
    if serial < 0:
        serial, parallel = 0.0, t1 * n1
    return serial + parallel / target


def _render_scaling(results: list[dict[str, Any]]) -> str:
    first, last = results[0], results[-1]
    n1, n2 = len(first["cpus"]), len(last["cpus"])
    size = first["model_bytes"]
    counts = [len(r["cpus"]) for r in results]
    head = "".join(f"{f'{n} core' + ('s' if n > 1 else ''):>10s}" for n in counts)
    lines = [
        "",
        f"== scaling, GB/s (best of each); {PROJECT_CORES}-core model: t(n) = serial + "
        f"parallel/n through the {n1}- and {n2}-core times (indicative: it knows nothing of "
        "memory bandwidth, NUMA or a faster core); highest load average during the sets "
        f"{max(max(r['load_average'].values()) for r in results):.2f}",
        f"  {'':32s}{head}  speedup  {PROJECT_CORES} cores (model)  registry is",
    ]
    names = [n for n in first["seconds"] if all(n in r["best"] for r in results)]
    model = {
        name: size / _amdahl(n1, first["best"][name], n2, last["best"][name], PROJECT_CORES)
        for name in names
    }
    for name in names:
        rates = "".join(f"{size / r['best'][name] / GB:10.2f}" for r in results)
        speedup = first["best"][name] / last["best"][name]
        line = f"  {name:32s}{rates}  {speedup:6.2f}x  {model[name] / GB:10.2f}"
        if REGISTRY in model and name != REGISTRY:
            aim = f" (aim >= {AIMS[name]}x)" if name in AIMS else ""
            line += f"      {model[REGISTRY] / model[name]:4.2f}x{aim}"
        lines.append(line)
    for key, name in (
        ("decrypt_hash_limit", "decrypt+hash limit"),
        ("decrypt_hash_limit_fresh", "decrypt+hash limit, fresh mem."),
        ("copy_fresh", "copy into fresh memory"),
    ):
        rates = "".join(f"{r['limits'][key] / GB:10.2f}" for r in results)
        r1, r2 = first["limits"][key], last["limits"][key]
        if key == "copy_fresh":
            projected = size / _amdahl(n1, size / r1, n2, size / r2, PROJECT_CORES)
            how = "(model)"
        else:  # N x the per-core figure measured with every core busy
            per_core = last["limits"][key] / n2
            projected = PROJECT_CORES * per_core
            how = f"({PROJECT_CORES} x per core)"
        lines.append(f"  {name:32s}{rates}  {r2 / r1:6.2f}x  {projected / GB:10.2f} {how}")
    if REGISTRY in model:
        limit = PROJECT_CORES * last["limits"]["decrypt_hash_limit"] / n2
        lines.append(
            f"  registry at {PROJECT_CORES} cores (model) / decrypt+hash limit of "
            f"{PROJECT_CORES} cores: {model[REGISTRY] / limit:.0%} (aim >= {AIM_LIMIT:.0%})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
