"""Push/pull throughput and peak RSS of the real CLI on the local driver, beside the same run's
single-core AES-256-GCM and BLAKE3 figures (the ceiling a push or pull can reach on these cores).

Run by hand, never as a timed unit test (see bench/README.md):

    .venv/bin/python bench/push_pull.py                  # 1 GiB, 8 shards, 3 repetitions
    .venv/bin/python bench/push_pull.py --size-mib 256 --repeat 1 --no-large   # quick look

Every push and pull is its own `model-registry` process, started here and reaped with
`os.wait4`, which returns that one child's resource usage: its peak RSS (ru_maxrss) and CPU time
are exact per operation, with no `/usr/bin/time` and no deltas of RUSAGE_CHILDREN.

Nothing is dropped from the page cache (that needs root): the model files and the stored objects
are read warm, so these figures are the CPU-bound ceiling of the code, not of a cold disk. Writes
are real: a push fsyncs each object and a pull fsyncs each file before publishing it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3
import cryptography

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

from limits import GB, MIB, single_core_figures  # noqa: E402 - bench/ is sys.path[0]

from registry import Registry  # noqa: E402
from registry.config import load_settings  # noqa: E402
from registry.testing.models import make_model  # noqa: E402

MODEL_NAME = "bench/model"


# -- running the CLI -------------------------------------------------------------------------


@dataclass
class Run:
    """One `model-registry` process: wall time, CPU time and peak RSS from its own rusage."""

    label: str
    command: str
    seconds: float
    cpu_seconds: float
    max_rss_mib: float
    minor_faults: int
    bytes: int
    output: Any

    @property
    def command_seconds(self) -> float:
        """The CLI's own timing of the operation (its --json "seconds"): wall minus start-up."""
        if isinstance(self.output, dict) and isinstance(self.output.get("seconds"), int | float):
            return float(self.output["seconds"])
        return self.seconds

    @property
    def throughput(self) -> float:
        return self.bytes / self.seconds


# Peak RSS must be read from a process started by a *small* parent. Linux carries a parent's
# RSS high-water mark into its child: fork copies the current RSS into the child's mm, vfork (what
# subprocess uses) shares the parent's mm, and exec keeps the old mm's peak as ru_maxrss. Reaping
# the CLI straight from this script would report this script's peak (it generates the models)
# instead of the CLI's. So every CLI run goes through GNU time, or a tiny fork/exec launcher on
# `python -S` when there is no /usr/bin/time, and its figure is the CLI's own.
TIME = "/usr/bin/time"
LAUNCHER = """
import os, sys
report, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as handle:
    handle.write(f"{usage.ru_maxrss} {usage.ru_minflt}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def rss_method() -> str:
    return "GNU time %M" if os.access(TIME, os.X_OK) else "python -S fork/exec launcher, wait4"


def run_cli(label: str, argv: Sequence[str], env: dict[str, str], logs: Path, nbytes: int) -> Run:
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{label}.out", logs / f"{label}.err"
    rss_path = logs / f"{label}.maxrss"
    if os.access(TIME, os.X_OK):
        wrapped = [TIME, "-f", "%M %R", "-o", str(rss_path), *argv]
    else:
        wrapped = [sys.executable, "-S", "-c", LAUNCHER, str(rss_path), *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            wrapped, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        # The wrapper has reaped the CLI, so its rusage includes the CLI's CPU time.
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{label} failed (exit {process.returncode}): {shlex.join(argv)}\n"
            + err_path.read_text(errors="replace")[-4000:]
        )
    text = out_path.read_text()
    try:
        output: Any = json.loads(text)
    except ValueError:
        output = text.strip()
    # GNU time writes a "Command exited with non-zero status" line first on failure.
    max_rss_kib, minor_faults = map(int, rss_path.read_text().splitlines()[-1].split())
    shown = f"MODEL_REGISTRY_HOME={shlex.quote(env['MODEL_REGISTRY_HOME'])} {shlex.join(argv)}"
    return Run(
        label,
        shown,
        seconds,
        usage.ru_utime + usage.ru_stime,
        max_rss_kib / 1024,  # ru_maxrss is in kilobytes on Linux
        minor_faults,
        nbytes,
        output,
    )


def write_fsync_rate(directory: Path, size_mib: int) -> float:
    """Bytes per second of writing `size_mib` MiB in 1 MiB writes and one fsync, into the
    workdir's filesystem: the storage ceiling a push (store object) and a pull (files) share."""
    chunk = os.urandom(MIB)
    path = directory / "write-test.tmp"
    best = float("inf")
    for _ in range(2):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(size_mib):
                os.write(fd, chunk)
            os.fsync(fd)
            best = min(best, time.perf_counter() - start)
        finally:
            os.close(fd)
            path.unlink()
    return size_mib * MIB / best


def fresh_home(path: Path) -> dict[str, str]:
    shutil.rmtree(path, ignore_errors=True)
    Registry.init(path)
    env = dict(os.environ)
    env.pop("MODEL_REGISTRY_CATALOG_URL", None)
    env["MODEL_REGISTRY_HOME"] = str(path)
    env["MODEL_REGISTRY_ACTOR"] = "bench"
    return env


def in_process_rates(model: Path, work: Path, repeat: int) -> dict[str, float]:
    """Push, verify --read-data and pull through the Python API in this process: the pipeline
    without CLI start-up (best of `repeat`). Push and pull still write and fsync to the disk;
    verify reads, decrypts and re-hashes without writing anything."""
    total = model_bytes(model)
    best = {"push": float("inf"), "verify": float("inf"), "pull": float("inf")}
    for index in range(repeat):
        home = work / "homes" / f"inproc{index}"
        fresh_home(home)
        dest = work / "pulled" / f"inproc{index}"
        shutil.rmtree(dest, ignore_errors=True)
        with Registry.open(home) as registry:
            started = time.perf_counter()
            registry.push(MODEL_NAME, model)
            best["push"] = min(best["push"], time.perf_counter() - started)
            started = time.perf_counter()
            assert registry.verify(MODEL_NAME, read_data=True).ok
            best["verify"] = min(best["verify"], time.perf_counter() - started)
            started = time.perf_counter()
            registry.pull(MODEL_NAME, dest)
            best["pull"] = min(best["pull"], time.perf_counter() - started)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    return {key: total / seconds for key, seconds in best.items()}


# -- models ----------------------------------------------------------------------------------


def model_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def ensure_model(models: Path, size_mib: int, shards: int) -> Path:
    """The generated model for these parameters, made once and reused (a marker says it is
    complete, so an interrupted generation is redone)."""
    directory = models / f"model-{size_mib}m-{shards}s"
    marker = models / f"model-{size_mib}m-{shards}s.complete"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        print(f"generating a {size_mib} MiB model in {shards} shards: {directory}", file=sys.stderr)
        make_model(directory, shards=shards, shard_size=size_mib * MIB // shards, seed=size_mib)
        marker.write_text(json.dumps({"bytes": model_bytes(directory)}))
    return directory


def ensure_variant(base: Path) -> tuple[Path, int]:
    """`base` with one shard changed (the last 8 bytes of its last tensor flipped); the other
    files are hard links. Returns the directory and the size of the changed shard."""
    variant = base.with_name(base.name + "-variant")
    marker = variant.with_name(variant.name + ".complete")
    shard = sorted(base.glob("*.safetensors"))[0]
    if not marker.exists():
        shutil.rmtree(variant, ignore_errors=True)
        variant.mkdir(parents=True)
        for path in base.iterdir():
            if path != shard:
                os.link(path, variant / path.name)
        shutil.copyfile(shard, variant / shard.name)
        with (variant / shard.name).open("r+b") as handle:
            handle.seek(-8, os.SEEK_END)
            tail = handle.read(8)
            handle.seek(-8, os.SEEK_END)
            handle.write(bytes(b ^ 0xFF for b in tail))
        marker.write_text("")
    return variant, shard.stat().st_size


def check_same(source: Path, pulled: Path) -> None:
    for path in source.iterdir():
        other = pulled / path.name
        if path.stat().st_size != other.stat().st_size:
            raise SystemExit(f"pulled {other} has another size than {path}")
        mine = blake3.blake3(max_threads=blake3.blake3.AUTO)
        mine.update_mmap(path)
        theirs = blake3.blake3(max_threads=blake3.blake3.AUTO)
        theirs.update_mmap(other)
        if mine.digest() != theirs.digest():
            raise SystemExit(f"pulled {other} differs from {path}")


# -- the benchmark ---------------------------------------------------------------------------


def push_pull_round(
    cli: str, model: Path, variant: Path, variant_bytes: int, work: Path, tag: str, full: bool
) -> dict[str, Run]:
    """In a fresh registry home: push (new content), and with `full` a second identical push
    (dedup: hashing only) and a push of the one-shard variant; then pull into an empty folder."""
    logs = work / "logs"
    total = model_bytes(model)
    env = fresh_home(work / "homes" / tag)
    runs = {
        "push": run_cli(
            f"{tag}-push", [cli, "push", MODEL_NAME, str(model), "--json", "-q"], env, logs, total
        )
    }
    if full:
        runs["push_dedup"] = run_cli(
            f"{tag}-push-dedup",
            [cli, "push", MODEL_NAME, str(model), "--json", "-q"],
            env,
            logs,
            total,
        )
        runs["push_one_shard"] = run_cli(
            f"{tag}-push-one-shard",
            [cli, "push", MODEL_NAME, str(variant), "--json", "-q"],
            env,
            logs,
            variant_bytes,
        )
    dest = work / "pulled" / tag
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    runs["pull"] = run_cli(
        f"{tag}-pull", [cli, "pull", f"{MODEL_NAME}@1", str(dest), "--json", "-q"], env, logs, total
    )
    if full:
        runs["verify"] = run_cli(
            f"{tag}-verify",
            [cli, "verify", f"{MODEL_NAME}@1", "--read-data", "--json", "-q"],
            env,
            logs,
            total,
        )
    return runs


def machine() -> dict[str, Any]:
    cpu = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or "unknown"
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = backend.openssl_version_text()
    except Exception:  # noqa: BLE001 - informational only
        openssl = "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "cpu_flags": sorted(flags & {"aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f"}),
        "ram_gib": round(ram / 2**30, 1),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": openssl,
        "blake3": getattr(blake3, "__version__", "unknown"),
        "git": commit,
    }


def summarise(runs: list[Run]) -> dict[str, Any]:
    seconds = [r.seconds for r in runs]
    median = statistics.median(seconds)
    command = statistics.median(r.command_seconds for r in runs)
    return {
        "bytes": runs[0].bytes,
        "seconds": seconds,
        "median_seconds": median,
        "best_seconds": min(seconds),
        "median_gbps": runs[0].bytes / median / GB,
        "best_gbps": runs[0].bytes / min(seconds) / GB,
        "median_mibps": runs[0].bytes / median / MIB,
        "command_seconds": [r.command_seconds for r in runs],
        "median_command_seconds": command,
        "median_command_gbps": runs[0].bytes / command / GB,
        "minor_faults": [r.minor_faults for r in runs],
        "cpu_seconds": [r.cpu_seconds for r in runs],
        "cores_busy": statistics.median(r.cpu_seconds / r.seconds for r in runs),
        "max_rss_mib": max(r.max_rss_mib for r in runs),
        "commands": [r.command for r in runs],
    }


OPERATIONS = (
    ("push", "**push** (new content)"),
    ("pull", "**pull**"),
    ("verify", "verify --read-data (read, decrypt, re-hash; no disk writes)"),
    ("push_dedup", "push, identical content (dedup: hash only)"),
    ("push_one_shard", "push, one shard changed"),
    ("large_push", "push, large model"),
    ("large_pull", "pull, large model"),
)


def render(result: dict[str, Any]) -> str:
    m, lim, ops = result["machine"], result["limits"], result["operations"]
    cores = m["cores"]
    load = result["load_average"]
    lines = [
        "# model-registry push/pull benchmark",
        "",
        f"- machine: {m['cpu']}, {cores} cores ({', '.join(m['cpu_flags'])}), "
        f"{m['ram_gib']} GiB RAM, Linux {m['kernel']}",
        f"- date: {m['date']}; git {m['git']}; load average before/after "
        f"{load['before']:.2f}/{load['after']:.2f}",
        f"- python {m['python']}, cryptography {m['cryptography']} ({m['openssl']}), "
        f"blake3 {m['blake3']}",
        f"- model: {result['model']['bytes'] / MIB:.0f} MiB in {result['model']['shards']} "
        f"shards (large: {result.get('large_mib', '-')} MiB); registry chunk "
        f"{result['registry']['chunk_size'] // 1024} KiB, {result['registry']['workers']} workers; "
        f"{result['repeat']} repetition(s)",
        "- page cache warm (nothing dropped); pushes and pulls fsync what they write; "
        f"CLI start-up alone: {result['cli_startup_seconds']:.2f} s (`model-registry --version`)",
        "",
        "| limit (single pass, in-process) | GB/s | MiB/s | how |",
        "|---|---:|---:|---|",
    ]

    def row(name: str, rate: float, note: str) -> None:
        lines.append(f"| {name} | {rate / GB:.2f} | {rate / MIB:.0f} | {note} |")

    row("AES-256-GCM encrypt, 1 core", lim["aes_gcm_encrypt"], "encrypt_into, 1 MiB chunks")
    row("AES-256-GCM decrypt, 1 core", lim["aes_gcm_decrypt"], "decrypt_into, 1 MiB chunks")
    row("BLAKE3, 1 thread", lim["blake3_single_thread"], "update, 1 MiB pieces")
    row("BLAKE3, all threads", lim["blake3_all_threads"], "max_threads=AUTO, as hash_file")
    row("decrypt+hash, 1 core", lim["decrypt_hash_per_core"], "1 / (1/dec + 1/hash)")
    row(
        f"**decrypt+hash limit, {cores} cores**",
        lim["decrypt_hash_limit"],
        f"{cores} x the above = 100% for the ratios",
    )
    row(f"encrypt+hash limit, {cores} cores", lim["encrypt_hash_limit"], "for reference")
    row(
        "write + fsync, workdir disk",
        result["write_fsync"],
        f"{min(result['model']['bytes'] / MIB, 1024):.0f} MiB in 1 MiB writes, best of 2",
    )
    lines += [
        "",
        "| operation | MiB | GB/s | MiB/s | wall s, median (best) | GB/s w/o start-up "
        "| cores busy | peak RSS MiB | minor faults |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in OPERATIONS:
        if key not in ops:
            continue
        op = ops[key]
        rate = op["bytes"] / op["median_seconds"]
        lines.append(
            f"| {name} | {op['bytes'] / MIB:.0f} | {rate / GB:.2f} | {rate / MIB:.0f} "
            f"| {op['median_seconds']:.2f} ({op['best_seconds']:.2f}) "
            f"| {op['median_command_gbps']:.2f} | {op['cores_busy']:.2f} "
            f"| {op['max_rss_mib']:.0f} | {statistics.median(op['minor_faults']):.0f} |"
        )
    inproc = result["in_process"]
    limit = lim["decrypt_hash_limit"]
    lines += [
        "",
        "| in-process, Python API (no CLI start-up), best of the repetitions | GB/s | MiB/s "
        "| of the decrypt+hash limit |",
        "|---|---:|---:|---:|",
    ]
    for key, name in (
        ("push", "push (hash pass, seal pass, write + fsync)"),
        ("verify", "verify --read-data (read, decrypt, re-hash; nothing written)"),
        ("pull", "pull (read, decrypt, re-hash, write + fsync, rename)"),
    ):
        rate = inproc[key]
        lines.append(f"| {name} | {rate / GB:.2f} | {rate / MIB:.0f} | {rate / limit:.0%} |")
    ratios = result["ratios"]
    lines += [
        "",
        "| ratio / memory | value | aim |",
        "|---|---:|---|",
        f"| push / decrypt+hash limit | {ratios['push']:.0%} "
        f"({ratios['push_command']:.0%} w/o start-up) | >= 50% |",
        f"| pull / decrypt+hash limit | {ratios['pull']:.0%} "
        f"({ratios['pull_command']:.0%} w/o start-up) | >= 50% |",
        f"| verify --read-data / decrypt+hash limit | {ratios['verify']:.0%} "
        f"({ratios['verify_command']:.0%} w/o start-up) | (no disk writes) |",
    ]
    for key in ("push", "pull", "large_push", "large_pull"):
        if key in ops:
            rss = ops[key]["max_rss_mib"]
            lines.append(f"| peak RSS {key.replace('_', ' ')} | {rss:.0f} MiB | < 300 MiB |")
    lines += [
        "",
        "GB/s = 1e9 bytes/s of model content, over the wall time of the whole CLI process; "
        "'w/o start-up' uses the CLI's own --json `seconds`. Medians over the repetitions.",
        "",
        f"Commands (each its own process; peak RSS and minor faults by {result['rss_method']}, "
        "CPU time from wait4):",
        "",
        "```",
    ]
    for key, op in ops.items():
        lines.append(f"# {key}")
        lines.append(op["commands"][0])
    lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024)")
    parser.add_argument("--shards", type=int, default=8, help="safetensors shards (default 8)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--repeat", type=int, default=3, help="push/pull repetitions (default 3)")
    parser.add_argument("--rss-size-mib", type=int, default=2048, help="large-model RSS check")
    parser.add_argument("--no-large", action="store_true", help="skip the large-model check")
    parser.add_argument("--buffer-mib", type=int, default=64, help="micro-benchmark buffer")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--keep", action="store_true", help="keep registry homes and pulls")
    parser.add_argument(
        "--cli",
        default=str(Path(sys.executable).with_name("model-registry")),
        help="the model-registry executable (default: beside this Python)",
    )
    args = parser.parse_args(argv)
    if not Path(args.cli).exists():
        args.cli = shutil.which("model-registry") or parser.error("no model-registry executable")
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()[0]
    print("single-core figures ...", file=sys.stderr)
    limits = single_core_figures(args.buffer_mib, repeat=9)
    cores = os.cpu_count() or 1
    limits["decrypt_hash_limit"] = limits["decrypt_hash_per_core"] * cores
    limits["encrypt_hash_limit"] = limits["encrypt_hash_per_core"] * cores

    disk = write_fsync_rate(work, min(args.size_mib, 1024))
    model = ensure_model(work / "models", args.size_mib, args.shards)
    variant, variant_bytes = ensure_variant(model)
    start_env = dict(os.environ)
    startup = min(
        run_cli(
            "startup",
            [args.cli, "--version"],
            start_env | {"MODEL_REGISTRY_HOME": "-"},
            work / "logs",
            0,
        ).seconds
        for _ in range(3)
    )

    print("in-process pipeline ...", file=sys.stderr)
    in_process = in_process_rates(model, work, args.repeat)

    rounds: list[dict[str, Run]] = []
    for index in range(args.repeat):
        print(f"round {index + 1}/{args.repeat} ...", file=sys.stderr)
        rounds.append(
            push_pull_round(args.cli, model, variant, variant_bytes, work, f"r{index}", True)
        )
        if index == 0:
            check_same(model, work / "pulled" / "r0")
        if not args.keep:
            shutil.rmtree(work / "homes" / f"r{index}", ignore_errors=True)
            shutil.rmtree(work / "pulled" / f"r{index}", ignore_errors=True)

    operations = {
        key: summarise([r[key] for r in rounds])
        for key in ("push", "pull", "verify", "push_dedup", "push_one_shard")
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "model": {"bytes": model_bytes(model), "shards": args.shards, "path": str(model)},
        "repeat": args.repeat,
        "cli_startup_seconds": startup,
        "limits": limits,
        "write_fsync": disk,
        "rss_method": rss_method(),
        "in_process": in_process,
    }
    settings_home = work / "homes" / "settings"
    fresh_home(settings_home)
    settings = load_settings(settings_home)
    result["registry"] = {"chunk_size": settings.chunk_size, "workers": settings.effective_workers}
    shutil.rmtree(settings_home, ignore_errors=True)

    if not args.no_large:
        print(f"large model ({args.rss_size_mib} MiB) ...", file=sys.stderr)
        large = ensure_model(work / "models", args.rss_size_mib, args.shards)
        runs = push_pull_round(args.cli, large, large, 0, work, "large", False)
        operations["large_push"] = summarise([runs["push"]])
        operations["large_pull"] = summarise([runs["pull"]])
        result["large_mib"] = args.rss_size_mib
        if not args.keep:
            shutil.rmtree(work / "homes" / "large", ignore_errors=True)
            shutil.rmtree(work / "pulled" / "large", ignore_errors=True)

    result["operations"] = operations
    limit = limits["decrypt_hash_limit"]
    push_rate = operations["push"]["bytes"] / operations["push"]["median_seconds"]
    pull_rate = operations["pull"]["bytes"] / operations["pull"]["median_seconds"]
    result["ratios"] = {
        "push": push_rate / limit,
        "pull": pull_rate / limit,
        "push_command": operations["push"]["median_command_gbps"] * GB / limit,
        "pull_command": operations["pull"]["median_command_gbps"] * GB / limit,
        "verify": operations["verify"]["bytes"] / operations["verify"]["median_seconds"] / limit,
        "verify_command": operations["verify"]["median_command_gbps"] * GB / limit,
    }
    result["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    result["runs"] = [asdict(run) for r in rounds for run in r.values()]
    markdown = render(result)
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (work / "results.md").write_text(markdown)
    print(json.dumps(result, indent=2) if args.json else markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
