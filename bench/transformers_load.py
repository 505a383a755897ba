"""Time to a ready transformers model, and its peak memory: `load_pretrained` from the registry
(encrypted, every chunk authenticated, every shard's BLAKE3 checked, config and tokenizer files
prepared into a temporary folder) against `from_pretrained` on the same model's plaintext
folder, alternating, each load in a fresh process (issue 17).

    .venv/bin/pip install -e '.[transformers]'
    .venv/bin/python bench/transformers_load.py                      # ~400 MB bf16 Llama, 3 rounds
    .venv/bin/python bench/transformers_load.py --layers 24 --repeat 2
    .venv/bin/python bench/transformers_load.py --device cuda:0      # both straight onto the GPU

The model is Llama-shaped, built from a config with random weights, saved by `save_pretrained`
in `--dtype` with `--shard-mib` shards under `<workdir>/transformers/` once (reused), and pushed
into a fresh registry home. Before the rounds, every file of the folder and of the store is read
once (a warm page cache for both). Each child imports torch, transformers and the registry
first (not timed), then times the one call that returns the model ready for `generate()`, and
reports its wall time, CPU time, resident memory before the call and its peak (VmHWM) after;
then runs one forward pass on a fixed batch, timed from the same start (from_pretrained's
weights may still be mapped from the files, read on first use), with the peak after it. The
digests of those logits must be equal for every run of both (bit for bit) or the run fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

MODEL = "bench/llama"
REGISTRY = "registry load_pretrained"
HF = "transformers from_pretrained"
CONTESTANTS = (REGISTRY, HF)
MiB = 1024 * 1024


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """One load in this process; prints its figures as JSON."""
    import torch
    import transformers

    from registry.integrations import transformers as integration
    from registry.service import import_serving

    import_serving()  # what importing the loader does in a serving process
    # transformers imports a model's code on first use: done here, for both, untimed.
    _ = transformers.AutoModelForCausalLM, transformers.LlamaForCausalLM
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    before = _status("VmRSS")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if args.child == REGISTRY:
        model = integration.load_pretrained(MODEL, device=args.device)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.folder, device_map=None if args.device == "cpu" else args.device
        )
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = _status("VmHWM")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=generator)
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits.float().cpu()
    # A model whose weights are still mapped from files (from_pretrained's mmap, when the
    # dtype matches) reads them on its first forward: timed too.
    forward = time.perf_counter() - started
    digest = hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16]
    result = {
        "seconds": seconds,
        "cpu_seconds": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "rss_before": before,
        "peak_rss": peak,
        "first_forward_seconds": forward,
        "peak_rss_forward": _status("VmHWM"),
        "dtype": str(model.dtype),
        "parameters": sum(p.numel() for p in model.parameters()),
        "logits": digest,
        "transformers": transformers.__version__,
    }
    print(json.dumps(result))


def _build(args: argparse.Namespace, folder: Path) -> None:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 128,
        num_key_value_heads=max(1, args.hidden // 512),
        max_position_embeddings=4096,
    )
    dtype = getattr(torch, args.dtype)
    with torch.device("cpu"):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch, max_shard_size=f"{args.shard_mib}MB")
    scratch.rename(folder)


def _warm(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(16 * MiB):
                    pass


def _run(args: argparse.Namespace, who: str, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", who, "--folder", str(args.folder)]
    command += ["--device", args.device]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{who} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shard-mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from registry.service import Registry

    spec = f"llama-h{args.hidden}-i{args.intermediate}-l{args.layers}-v{args.vocab}-{args.dtype}"
    args.folder = args.workdir / "transformers" / spec
    if not args.folder.is_dir():
        print(f"building {args.folder} ...", file=sys.stderr)
        _build(args, args.folder)
    size = sum(p.stat().st_size for p in args.folder.glob("*.safetensors"))
    shards = len(list(args.folder.glob("*.safetensors")))
    home = Path(tempfile.mkdtemp(prefix="home-", dir=args.workdir))
    try:
        Registry.init(home)
        with Registry.open(home) as registry:
            registry.push(MODEL, args.folder)
        env = {**os.environ, "MODEL_REGISTRY_HOME": str(home), "PYTHONPATH": str(ROOT)}
        env.pop("MODEL_REGISTRY_URL", None)
        _warm(args.folder)
        _warm(home / "store")
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, Any]]] = {who: [] for who in CONTESTANTS}
        for _round in range(args.repeat):
            for who in CONTESTANTS:
                runs[who].append(_run(args, who, env))
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    digests = {run["logits"] for who in CONTESTANTS for run in runs[who]}
    report = {
        "model": spec,
        "bytes": size,
        "shards": shards,
        "device": args.device,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "same_logits": len(digests) == 1,
        "runs": runs,
    }
    (args.workdir / "transformers-results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0 if len(digests) == 1 else 1


def _table(report: dict[str, Any]) -> str:
    first = report["runs"][HF][0]
    lines = [
        f"{report['model']}: {first['parameters'] / 1e6:.0f}M parameters, "
        f"{report['bytes'] / 1e6:.0f} MB in {report['shards']} shards, {first['dtype']}, "
        f"device {report['device']}, {report['cpus']} CPUs, transformers {first['transformers']}, "
        f"load average {report['load_average_before'][0]:.2f} before, "
        f"{report['load_average_after'][0]:.2f} after",
        "",
        "| path | ready s, best | median | + first forward s | CPU s | RSS before MiB "
        "| peak RSS MiB, ready | after first forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for who in CONTESTANTS:
        runs = report["runs"][who]
        best = min(runs, key=lambda run: run["seconds"])
        peak = max(run["peak_rss"] for run in runs)
        forward = max(run["peak_rss_forward"] for run in runs)
        before = min(run["rss_before"] for run in runs)
        lines.append(
            f"| {who} | {best['seconds']:.2f} | "
            f"{statistics.median(run['seconds'] for run in runs):.2f} | "
            f"{min(run['first_forward_seconds'] for run in runs):.2f} | "
            f"{best['cpu_seconds']:.2f} | {before / MiB:.0f} | {peak / MiB:.0f} | "
            f"{forward / MiB:.0f} |"
        )
    same = "equal" if report["same_logits"] else "DIFFERENT"
    lines += ["", f"logits of a fixed batch, every run: {same}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
