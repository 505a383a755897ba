"""The hardware limits that push, pull and load are measured against, measured in-process on
this machine's cores: AES-256-GCM (cryptography's `AESGCM`, 1 MiB chunks and their 16-byte tags,
a 91-byte AAD like a sealed header), single-threaded BLAKE3, and plain copies into fresh memory.

Shared by bench/push_pull.py (`single_core_figures`, one thread) and bench/load.py
(`core_figures`: N threads at once for the N cores a run is pinned to, so the per-core figures
are those of cores that are all busy, as in a load). Both cryptography's `decrypt_into` and
blake3's `update` release the GIL, so N Python threads keep N cores busy.

Decrypt+hash limit of N cores = N / (1/decrypt + 1/hash), decrypt and hash being the per-core
figures: every plaintext byte decrypted once and hashed once, on those cores, with nothing else.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MIB = 1024 * 1024
GB = 1e9
CHUNK = MIB  # the registry's default chunk size, and what the micro-benchmarks use
TAG = 16
AAD = bytes(91)  # a sealed header is the AAD of every chunk; 91 bytes like the real one
READ = 4 * MIB  # reads of files, as the loader's default range reads (4 chunks)

State = TypeVar("State")


def best_seconds(run: Callable[[], None], repeat: int) -> float:
    """Best wall time of `repeat` runs, after one warm-up run (page in the buffers, initialise
    the cipher context)."""
    run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _nonces(chunks: int) -> list[bytes]:
    return [os.urandom(7) + index.to_bytes(4, "big") + b"\x00" for index in range(chunks)]


def single_core_figures(buffer_mib: int, repeat: int) -> dict[str, float]:
    """Bytes per second of one core: AES-256-GCM encrypt_into/decrypt_into over 1 MiB chunks
    into a preallocated buffer, and single-threaded BLAKE3 update over the same chunks."""
    chunks = buffer_mib * MIB // CHUNK
    plain = bytearray(os.urandom(buffer_mib * MIB))
    sealed = bytearray(chunks * (CHUNK + TAG))
    plain_view, sealed_view = memoryview(plain), memoryview(sealed)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonces = _nonces(chunks)

    def encrypt() -> None:
        for index in range(chunks):
            aead.encrypt_into(
                nonces[index],
                plain_view[index * CHUNK : (index + 1) * CHUNK],
                AAD,
                sealed_view[index * (CHUNK + TAG) : (index + 1) * (CHUNK + TAG)],
            )

    def decrypt() -> None:
        for index in range(chunks):
            aead.decrypt_into(
                nonces[index],
                sealed_view[index * (CHUNK + TAG) : (index + 1) * (CHUNK + TAG)],
                AAD,
                plain_view[index * CHUNK : (index + 1) * CHUNK],
            )

    def hash_single() -> None:
        hasher = blake3.blake3()
        for index in range(chunks):
            hasher.update(plain_view[index * CHUNK : (index + 1) * CHUNK])
        hasher.digest()

    def hash_all_threads() -> None:  # what hash_file does (max_threads=AUTO), for reference
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update(plain_view)
        hasher.digest()

    size = len(plain)
    enc = size / best_seconds(encrypt, repeat)
    dec = size / best_seconds(decrypt, repeat)  # decrypts what encrypt() left in `sealed`
    hsh = size / best_seconds(hash_single, repeat)
    hsh_mt = size / best_seconds(hash_all_threads, repeat)
    return {
        "aes_gcm_encrypt": enc,
        "aes_gcm_decrypt": dec,
        "blake3_single_thread": hsh,
        "blake3_all_threads": hsh_mt,
        "decrypt_hash_per_core": 1 / (1 / dec + 1 / hsh),
        "encrypt_hash_per_core": 1 / (1 / enc + 1 / hsh),
    }


# -- N threads at once -----------------------------------------------------------------------


def fresh_memory(size: int) -> mmap.mmap:
    """`size` bytes of private anonymous memory no one has touched: every page faults on first
    write, as the memory of freshly allocated tensors does (glibc and torch's CPU allocator
    map large blocks this way)."""
    return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def parallel_seconds(
    threads: int,
    prepare: Callable[[int], State],
    work: Callable[[int, State], None],
    cleanup: Callable[[State], None],
    repeat: int,
) -> float:
    """Best wall time of `threads` threads running `work(i, state)` at once (released together
    by a barrier, timed until the last one ends), after one warm-up. `prepare(i)` runs before
    and `cleanup(state)` after each timed run, outside the timing."""

    def once() -> float:
        states = [prepare(index) for index in range(threads)]
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def body(index: int) -> None:
            barrier.wait()
            try:
                work(index, states[index])
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                errors.append(error)

        pool = [threading.Thread(target=body, args=(index,)) for index in range(threads)]
        for thread in pool:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in pool:
            thread.join()
        seconds = time.perf_counter() - started
        for state in states:
            cleanup(state)
        if errors:
            raise errors[0]
        return seconds

    once()
    return min(once() for _ in range(repeat))


def _address(buffer: Any) -> tuple[int, Any]:
    """The address of a writable buffer (bytearray, mmap) and the ctypes object that pins it
    (drop it before closing an mmap)."""
    pinned = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    return ctypes.addressof(pinned), pinned


def core_figures(
    threads: int, buffer_mib: int, repeat: int, files: Sequence[Path] = ()
) -> dict[str, float]:
    """Bytes per second with `threads` threads at once, each on its own `buffer_mib` MiB
    (per core = aggregate / threads):

    - aes_gcm_decrypt: decrypt_into over 1 MiB chunks (+ tag) into a preallocated buffer;
    - aes_gcm_decrypt_fresh: the same into fresh, never-touched memory (page faults included);
    - blake3_single_thread: blake3 update over 1 MiB pieces, one thread each;
    - decrypt_hash_limit(_fresh): threads / (1/decrypt + 1/hash), the 100% of the loader;
    - copy_fresh / copy_preallocated (aggregate): memmove of the buffer into fresh memory (the
      memory and page-fault ceiling of any loader that makes new tensors) and into memory
      touched before (memory bandwidth);
    - read_fresh (aggregate, when `files` are given): pread of those files (page cache warm) in
      4 MiB reads into fresh memory of each file's size, the files dealt out to the threads:
      what a plain loader of those files can reach.
    """
    size = buffer_mib * MIB
    chunks = size // CHUNK
    plains = [bytearray(os.urandom(size)) for _ in range(threads)]
    sealeds = [bytearray(chunks * (CHUNK + TAG)) for _ in range(threads)]
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonces = _nonces(chunks)
    for plain, sealed in zip(plains, sealeds, strict=True):
        plain_view, sealed_view = memoryview(plain), memoryview(sealed)
        for index in range(chunks):
            aead.encrypt_into(
                nonces[index],
                plain_view[index * CHUNK : (index + 1) * CHUNK],
                AAD,
                sealed_view[index * (CHUNK + TAG) : (index + 1) * (CHUNK + TAG)],
            )

    def decrypt_into(index: int, target: memoryview) -> None:
        sealed_view = memoryview(sealeds[index])
        for chunk in range(chunks):
            aead.decrypt_into(
                nonces[chunk],
                sealed_view[chunk * (CHUNK + TAG) : (chunk + 1) * (CHUNK + TAG)],
                AAD,
                target[chunk * CHUNK : (chunk + 1) * CHUNK],
            )

    def nothing(index: int) -> None:
        return None

    def no_cleanup(state: object) -> None:
        return None

    def fresh(index: int) -> mmap.mmap:
        return fresh_memory(size)

    def close(memory: mmap.mmap) -> None:
        memory.close()

    def decrypt_preallocated(index: int, _state: None) -> None:
        decrypt_into(index, memoryview(plains[index]))

    def decrypt_fresh(index: int, memory: mmap.mmap) -> None:
        with memoryview(memory) as view:
            decrypt_into(index, view)

    def hash_single(index: int, _state: None) -> None:
        hasher = blake3.blake3()
        view = memoryview(plains[index])
        for chunk in range(chunks):
            hasher.update(view[chunk * CHUNK : (chunk + 1) * CHUNK])
        hasher.digest()

    def copy_fresh(index: int, memory: mmap.mmap) -> None:
        target, pinned = _address(memory)
        source, pinned_source = _address(plains[index])
        ctypes.memmove(target, source, size)  # a ctypes call: runs without the GIL
        del pinned, pinned_source

    def copy_preallocated(index: int, _state: None) -> None:
        target, pinned = _address(sealeds[index])  # last: sealed is not needed any more
        source, pinned_source = _address(plains[index])
        ctypes.memmove(target, source, size)
        del pinned, pinned_source

    total = size * threads
    result: dict[str, float] = {"threads": threads, "buffer_mib": buffer_mib}
    result["aes_gcm_decrypt"] = total / parallel_seconds(
        threads, nothing, decrypt_preallocated, no_cleanup, repeat
    )
    result["aes_gcm_decrypt_fresh"] = total / parallel_seconds(
        threads, fresh, decrypt_fresh, close, repeat
    )
    result["blake3_single_thread"] = total / parallel_seconds(
        threads, nothing, hash_single, no_cleanup, repeat
    )
    result["copy_fresh"] = total / parallel_seconds(threads, fresh, copy_fresh, close, repeat)
    result["copy_preallocated"] = total / parallel_seconds(
        threads, nothing, copy_preallocated, no_cleanup, repeat
    )
    for key in ("aes_gcm_decrypt", "aes_gcm_decrypt_fresh", "blake3_single_thread"):
        result[key] /= threads  # per core
    dec, dec_fresh, hsh = (
        result["aes_gcm_decrypt"],
        result["aes_gcm_decrypt_fresh"],
        result["blake3_single_thread"],
    )
    result["decrypt_hash_per_core"] = 1 / (1 / dec + 1 / hsh)
    result["decrypt_hash_per_core_fresh"] = 1 / (1 / dec_fresh + 1 / hsh)
    result["decrypt_hash_limit"] = threads * result["decrypt_hash_per_core"]
    result["decrypt_hash_limit_fresh"] = threads * result["decrypt_hash_per_core_fresh"]
    if files:
        result["read_fresh"] = read_rate(threads, files, max(1, min(repeat, 3)))
    return result


def read_rate(threads: int, files: Sequence[Path], repeat: int) -> float:
    """Bytes per second of `threads` threads reading `files` whole (dealt out in turn) with
    pread into fresh memory of each file's size, 4 MiB a read."""
    sizes = [path.stat().st_size for path in files]
    mine = [list(range(index, len(files), threads)) for index in range(threads)]

    def prepare(index: int) -> list[tuple[int, mmap.mmap]]:
        return [(os.open(files[f], os.O_RDONLY), fresh_memory(sizes[f])) for f in mine[index]]

    def work(index: int, opened: list[tuple[int, mmap.mmap]]) -> None:
        for (fd, memory), f in zip(opened, mine[index], strict=True):
            with memoryview(memory) as view:
                position = 0
                while position < sizes[f]:
                    got = os.preadv(fd, [view[position : position + READ]], position)
                    if got <= 0:
                        raise OSError(f"short read of {files[f]}")
                    position += got

    def cleanup(opened: list[tuple[int, mmap.mmap]]) -> None:
        for fd, memory in opened:
            os.close(fd)
            memory.close()

    return sum(sizes) / parallel_seconds(threads, prepare, work, cleanup, repeat)


def render_core_figures(figures: dict[str, float], indent: str = "  ") -> list[str]:
    """The limits as aligned text lines (GB/s = 1e9 bytes/s)."""
    n = int(figures["threads"])
    cores = f"{n} core{'s' if n > 1 else ''}"
    rows = [
        ("AES-256-GCM decrypt_into, preallocated, per core", figures["aes_gcm_decrypt"]),
        ("AES-256-GCM decrypt_into, fresh memory, per core", figures["aes_gcm_decrypt_fresh"]),
        ("BLAKE3 update, one thread per core", figures["blake3_single_thread"]),
        ("decrypt+hash, 1 core = 1/(1/dec + 1/hash)", figures["decrypt_hash_per_core"]),
        (f"decrypt+hash limit, {cores} (preallocated)", figures["decrypt_hash_limit"]),
        (f"decrypt+hash limit, {cores} (fresh memory)", figures["decrypt_hash_limit_fresh"]),
        (f"copy into fresh memory, {cores} (memmove)", figures["copy_fresh"]),
        (f"copy into touched memory, {cores} (memmove)", figures["copy_preallocated"]),
    ]
    if "read_fresh" in figures:
        rows.append((f"model files read into fresh memory, {cores}", figures["read_fresh"]))
    return [f"{indent}{name:52s} {rate / GB:6.2f} GB/s" for name, rate in rows]
