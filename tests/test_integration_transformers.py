"""registry.integrations.transformers: small real models (Llama-, Qwen2- and GPT-2-shaped, built
from configs with random weights, saved sharded by `save_pretrained` with a tokenizer) pushed,
then loaded through the registry and compared with `from_pretrained` on the plaintext folder:
the same class, tensors, logits and greedy generations, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from registry.crypto.sealed import HEADER_SIZE  # noqa: E402
from registry.errors import (  # noqa: E402
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
)
from registry.integrations.transformers import load_pretrained, load_tokenizer  # noqa: E402
from registry.service import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V5 = int(transformers.__version__.split(".")[0]) >= 5
WORDS = (  # noqa: SIM905 - a sentence reads better than a column of words
    "the a model registry loads weights tensors verified encrypted shard digest token "
    "serving engine cat dog runs fast slow red blue green one two three four five six seven "
    "eight nine ten hello world llama qwen gpt small random config version alias production"
).split()
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]
VOCAB = 96  # above the tokenizer's size (4 specials + the words)
HELLO, WORLD = 4 + WORDS.index("hello"), 4 + WORDS.index("world")  # their token ids
PROMPTS = ["the model loads verified weights", "hello world the cat runs"]


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
    )


def _llama() -> Any:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )


def _qwen2() -> Any:
    return transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )


def _gpt2() -> Any:
    return transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=128,
        n_layer=3,
        n_head=4,
        n_positions=256,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )


# name: (config, the dtype its weights are saved in)
SHAPES: dict[str, tuple[Callable[[], Any], Any]] = {
    "llama": (_llama, torch.float32),
    "qwen2": (_qwen2, torch.bfloat16),
    "gpt2": (_gpt2, torch.float32),
}


def _save(config: Any, dtype: Any, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.config.dtype = dtype  # what save_pretrained writes as the checkpoint's dtype
    model.save_pretrained(folder, max_shard_size="500KB")
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plaintext folders `save_pretrained` wrote, one per shape."""
    root = tmp_path_factory.mktemp("plain")
    return {
        name: _save(config(), dtype, root / name, seed)
        for seed, (name, (config, dtype)) in enumerate(SHAPES.items())
    }


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the temporary folders of a load go (checked empty afterwards)."""
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _inputs() -> Any:
    return _tokenizer()(PROMPTS, return_tensors="pt", padding=True)


def _same_model(ours: Any, theirs: Any) -> None:
    """The same class, mode, dtypes, parameters and buffers (persistent or not), logits and
    greedy generations, bit for bit."""
    assert type(ours) is type(theirs)
    assert not ours.training and not theirs.training
    assert ours.dtype == theirs.dtype
    ours_named = dict(ours.named_parameters(remove_duplicate=False))
    theirs_named = dict(theirs.named_parameters(remove_duplicate=False))
    ours_named.update(ours.named_buffers(remove_duplicate=False))
    theirs_named.update(theirs.named_buffers(remove_duplicate=False))
    assert ours_named.keys() == theirs_named.keys()
    for name, tensor in theirs_named.items():
        mine = ours_named[name]
        assert mine.dtype == tensor.dtype and mine.device == tensor.device, name
        assert torch.equal(mine, tensor), name
    batch = _inputs()
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, theirs(**batch).logits)
    settings = {"max_new_tokens": 12, "do_sample": False}
    assert torch.equal(ours.generate(**batch, **settings), theirs.generate(**batch, **settings))
    assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_same_model_as_from_pretrained(
    shape: str, plain: dict[str, Path], registry: Registry, scratch: Path
) -> None:
    assert len(list(plain[shape].glob("*.safetensors"))) >= 2  # sharded
    registry.push(f"team/{shape}", plain[shape])
    ours = load_pretrained(f"team/{shape}", registry=registry)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(plain[shape])
    _same_model(ours, theirs)
    if V5:  # from_pretrained's default dtype became "auto", the checkpoint's, in 5.0
        assert ours.dtype == SHAPES[shape][1]
    assert ours.name_or_path == f"team/{shape}@1"
    assert os.listdir(scratch) == []  # the temporary folder is gone


def test_tied_weights_stay_tied(plain: dict[str, Path], registry: Registry) -> None:
    stored = {}
    for shard in plain["gpt2"].glob("*.safetensors"):
        stored.update(load_file(shard))
    assert "lm_head.weight" not in stored  # save_pretrained keeps one copy of a tied weight
    registry.push("team/gpt2", plain["gpt2"])
    model = load_pretrained("team/gpt2", registry=registry)
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = 42.0
    assert model.lm_head.weight[0, 0].item() == 42.0


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [("llama", torch.bfloat16), ("llama", torch.float32), ("qwen2", torch.float32)],
)
def test_dtype_as_from_pretrained(
    shape: str, dtype: Any, plain: dict[str, Path], registry: Registry
) -> None:
    registry.push(f"team/{shape}", plain[shape])
    ours = load_pretrained(f"team/{shape}@1", registry=registry, dtype=dtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(plain[shape], dtype=dtype)
    assert ours.dtype == dtype
    _same_model(ours, theirs)


def test_the_tokenizer_and_a_generation_end_to_end(
    plain: dict[str, Path], registry: Registry, scratch: Path
) -> None:
    registry.push("team/llama", plain["llama"])
    registry.promote("team/llama@1", "production")
    tokenizer = load_tokenizer("team/llama:production", registry=registry)
    reference = transformers.AutoTokenizer.from_pretrained(plain["llama"])
    assert type(tokenizer) is type(reference)
    assert tokenizer.get_vocab() == reference.get_vocab()
    assert tokenizer(PROMPTS)["input_ids"] == reference(PROMPTS)["input_ids"]
    model = load_pretrained("team/llama:production", registry=registry)
    batch = tokenizer(PROMPTS[:1], return_tensors="pt")
    output = model.generate(**batch, max_new_tokens=8, do_sample=False)
    baseline = transformers.AutoModelForCausalLM.from_pretrained(plain["llama"])
    expected = baseline.generate(**reference(PROMPTS[:1], return_tensors="pt"), max_new_tokens=8)
    assert tokenizer.batch_decode(output) == reference.batch_decode(expected)
    assert os.listdir(scratch) == []


def test_a_prepared_folder_loads_the_version_it_pins(
    plain: dict[str, Path], registry: Registry, tmp_path: Path
) -> None:
    registry.push("team/model", plain["llama"])
    registry.promote("team/model@1", "production")
    folder = tmp_path / "prepared"
    registry.prepare("team/model:production", folder)
    registry.push("team/model", plain["gpt2"])  # the alias moves on; the folder does not
    registry.promote("team/model@2", "production")
    ours = load_pretrained(folder, registry=registry)
    _same_model(ours, transformers.AutoModelForCausalLM.from_pretrained(plain["llama"]))
    assert ours.name_or_path == "team/model@1"
    assert type(load_pretrained(str(folder), registry=registry)) is type(ours)  # a str too
    assert load_tokenizer(folder, registry=registry)("hello")["input_ids"] == [HELLO]
    # A file edited since the prepare would build another model: refused.
    config = folder / "config.json"
    config.chmod(0o644)
    config.write_text(
        config.read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers": 3')
    )
    with pytest.raises(IntegrityError, match=r"config\.json is missing or differs"):
        load_pretrained(folder, registry=registry)


def test_folder_keeps_the_small_files_and_no_weight(
    plain: dict[str, Path], registry: Registry, tmp_path: Path
) -> None:
    registry.push("team/qwen2", plain["qwen2"])
    folder = tmp_path / "kept"
    model = load_pretrained("team/qwen2", registry=registry, folder=folder)
    names = set(os.listdir(folder))
    assert {"config.json", "generation_config.json", "tokenizer.json", "registry.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names)
    assert load_tokenizer(folder, registry=registry) is not None
    _same_model(model, transformers.AutoModelForCausalLM.from_pretrained(plain["qwen2"]))


@pytest.mark.slow  # the API server's imports and start-up
def test_through_a_server(plain: dict[str, Path], home: Path, tmp_path: Path) -> None:
    from registry.client import RemoteRegistry
    from tests.test_api_cli import LiveServer

    Registry.init(home)
    with Registry.open(home) as local:
        local.push("team/gpt2", plain["gpt2"])
        _record, token = local.create_token("fleet", role="reader", models=["team/*"])
        with (
            LiveServer(local, tmp_path / "staging") as server,
            RemoteRegistry(server.url, token) as remote,
        ):
            model = load_pretrained("team/gpt2", registry=remote, options=_no_cache())
            tokenizer = load_tokenizer("team/gpt2", registry=remote)
    _same_model(model, transformers.AutoModelForCausalLM.from_pretrained(plain["gpt2"]))
    assert tokenizer("hello world")["input_ids"] == [HELLO, WORLD]


def _no_cache() -> Any:
    from registry import loader

    return loader.LoadOptions(cache=False)


def test_a_tampered_shard_is_refused(
    plain: dict[str, Path], registry: Registry, scratch: Path
) -> None:
    registry.push("team/llama", plain["llama"])
    version = registry.resolve("team/llama@1")
    shard = next(f for f in version.files if f.path.endswith(".safetensors"))
    blob = (
        registry.settings.home
        / "store"
        / "objects"
        / registry.store.object_name("blob", shard.digest)
    )
    blob.chmod(0o644)
    sealed = bytearray(blob.read_bytes())
    sealed[HEADER_SIZE + 100] ^= 0x01
    blob.write_bytes(bytes(sealed))
    with pytest.raises(IntegrityError):
        load_pretrained("team/llama", registry=registry)
    assert os.listdir(scratch) == []


def _rewritten(source: Path, folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The model of `source` as one shard whose tensors `change` edited."""
    folder.mkdir()
    tensors: dict[str, Any] = {}
    for shard in source.glob("*.safetensors"):
        tensors.update(load_file(shard))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def test_missing_and_unexpected_tensors_are_refused(
    plain: dict[str, Path], registry: Registry, tmp_path: Path
) -> None:
    registry.push("team/short", _rewritten(plain["llama"], tmp_path / "short", _drop_norm))
    with pytest.raises(InvalidInputError, match=r"missing .*model\.norm\.weight"):
        load_pretrained("team/short", registry=registry)
    assert load_pretrained("team/short", registry=registry, strict=False) is not None
    registry.push("team/long", _rewritten(plain["llama"], tmp_path / "long", _add_extra))
    with pytest.raises(InvalidInputError, match=r"unexpected .*extra\.weight"):
        load_pretrained("team/long", registry=registry)


def _drop_norm(tensors: dict[str, Any]) -> None:
    del tensors["model.norm.weight"]


def _add_extra(tensors: dict[str, Any]) -> None:
    tensors["extra.weight"] = torch.ones(3)


def test_tensors_of_another_shape_are_refused(
    plain: dict[str, Path], registry: Registry, tmp_path: Path
) -> None:
    folder = _rewritten(plain["llama"], tmp_path / "wide", lambda tensors: None)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(
        config.replace('"intermediate_size": 256', '"intermediate_size": 512')
    )
    registry.push("team/wide", folder)
    shapes = r" \[128, 256\] \(the model's: \[128, 512\]\)" if V5 else ""  # 4.x: names only
    with pytest.raises(
        InvalidInputError,
        match=r"another shape .*model\.layers\.0\.mlp\.down_proj\.weight" + shapes,
    ):
        load_pretrained("team/wide", registry=registry)
    # As from_pretrained does when asked: those tensors are initialised instead.
    model = load_pretrained("team/wide", registry=registry, ignore_mismatched_sizes=True)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (128, 512)


def test_another_model_class(plain: dict[str, Path], registry: Registry) -> None:
    registry.push("team/llama", plain["llama"])
    # The base model of a causal LM: its head is unexpected, which only strict=False accepts.
    with pytest.raises(InvalidInputError, match=r"unexpected .*lm_head\.weight"):
        load_pretrained("team/llama", registry=registry, model_class=transformers.AutoModel)
    ours = load_pretrained(
        "team/llama", registry=registry, model_class=transformers.AutoModel, strict=False
    )
    theirs = transformers.AutoModel.from_pretrained(plain["llama"])
    assert type(ours) is transformers.LlamaModel
    batch = _inputs()
    with torch.no_grad():
        assert torch.equal(ours(**batch).last_hidden_state, theirs(**batch).last_hidden_state)
    with pytest.raises(InvalidInputError, match="no model for a LlamaConfig"):
        load_pretrained(
            "team/llama", registry=registry, model_class=transformers.AutoModelForSeq2SeqLM
        )


def test_bad_references_and_versions_without_a_config(
    plain: dict[str, Path], registry: Registry, tmp_path: Path, scratch: Path
) -> None:
    with pytest.raises(NotFoundError):
        load_pretrained("team/nothing@1", registry=registry)
    with pytest.raises(InvalidReferenceError):
        load_pretrained("not a reference!", registry=registry)
    weights = _rewritten(plain["llama"], tmp_path / "bare", lambda tensors: None)
    (weights / "config.json").unlink()
    (weights / "generation_config.json").unlink()
    registry.push("team/bare", weights)
    with pytest.raises(InvalidInputError, match=r"team/bare@1 has no config\.json"):
        load_pretrained("team/bare", registry=registry)
    with pytest.raises(InvalidInputError, match="no tokenizer"):
        load_tokenizer("team/bare", registry=registry)
    if not torch.cuda.is_available():
        registry.push("team/llama", plain["llama"])
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            load_pretrained("team/llama", registry=registry, device="cuda")
    with pytest.raises(TypeError, match="state_dict"):
        load_pretrained("team/bare", registry=registry, state_dict={})
    with pytest.raises(InvalidInputError, match="not a prepared folder"):
        load_pretrained(tmp_path, registry=registry)  # a Path is a prepared folder, or refused
    assert os.listdir(scratch) == []


def test_importing_is_cheap_and_a_missing_extra_says_which(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = (
        "import sys, registry.integrations.transformers\n"
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'model-registry\[transformers\]'"):
        load_pretrained("team/llama")
