"""`smolora serve`: the OpenAI-compatible server for a run and its sibling adapters.

Run as:
    smolora serve runs/quickstart --adapter other=runs/other --api-key secret
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smolora.cli.common import StrictOpt, strict_process
from smolora.errors import SmoLoRAError


def parse_adapters(items: list[str]) -> dict[str, str]:
    adapters = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SmoLoRAError(
                f"--adapter {item!r}: expected NAME=RUN_DIR, e.g. --adapter support=runs/support"
            )
        if name in adapters:
            raise SmoLoRAError(f"--adapter {name} given twice; each served name must be unique")
        adapters[name] = path
    return adapters


def one_of(*choices: str):
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


# The longer option declarations, named here so `serve` below stays readable.
BatchingOption = Annotated[
    str,
    typer.Option(
        callback=one_of("continuous", "static"),
        help="continuous: requests join and leave the batch at every token; static: a batch runs to its end.",
    ),
]

RequestTimeoutOption = Annotated[
    float, typer.Option(min=1, help="Seconds a request may queue and decode before a 504.")
]

RateLimitOption = Annotated[
    float,
    typer.Option(
        min=0,
        help="Requests per minute per client address (see --forwarded-allow-ips behind a proxy); 0: no limit.",
    ),
]

MaxBodyKbOption = Annotated[int, typer.Option(min=1, help="Largest request body accepted (413 beyond).")]

ForwardedAllowIpsOption = Annotated[
    str | None,
    typer.Option(
        help="Proxies whose X-Forwarded-For names the client (comma-separated IPs or networks); "
        "default: none, not even loopback."
    ),
]

AdapterDirOption = Annotated[
    str | None,
    typer.Option(help="Allow POST /v1/adapters to load adapters from runs inside this directory."),
]

WeightLayoutOption = Annotated[
    str,
    typer.Option(
        callback=one_of("auto", "row", "column"),
        help="auto: store weights transposed if that measures faster for small batches at load "
        "(CPU; /health says what was chosen); row or column: force one.",
    ),
]
EngineOption = Annotated[
    str,
    typer.Option(
        callback=one_of("smolora", "vllm"),
        help="smolora: this server; vllm: launch vLLM's OpenAI server for the run "
        "(host, port and API key forwarded; the other options are this server's).",
    ),
]

JobsDirOption = Annotated[
    Path | None,
    typer.Option(help="The fine-tuning job queue (jobs.db, uploads, runs); default: SMOLORA_HOME/jobs."),
]
JobsWorkersOption = Annotated[
    int, typer.Option(min=0, help="Fine-tuning jobs trained at once (0: queue them, train none here).")
]
JobsConfigOption = Annotated[
    Path | None,
    typer.Option(help="The run config fine-tuning jobs start from (default: the served run's config.yaml)."),
]
MaxFileMbOption = Annotated[int, typer.Option(min=1, help="Largest training file POST /v1/files accepts.")]

VllmPythonOption = Annotated[
    str | None,
    typer.Option(help="A python that has vllm (default: .venv-vllm/bin/python, which `make vllm` builds)."),
]


def serve(
    model: Annotated[str, typer.Argument(help="Run directory, adapter directory or model name.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", "-a", help="Serve another adapter on the same base: NAME=RUN (repeatable)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless you set --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SMOLORA_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests decoded together (1: one at a time).")] = 8,
    batching: BatchingOption = "continuous",
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits for company.")] = 20.0,
    weight_layout: WeightLayoutOption = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: physical cores).")] = None,
    max_tokens_cap: Annotated[int, typer.Option(min=1, help="Most tokens one request may ask for.")] = 2048,
    request_timeout: RequestTimeoutOption = 300.0,
    rate_limit: RateLimitOption = 600.0,
    max_body_kb: MaxBodyKbOption = 1024,
    forwarded_allow_ips: ForwardedAllowIpsOption = None,
    adapter_dir: AdapterDirOption = None,
    jobs_dir: JobsDirOption = None,
    jobs_workers: JobsWorkersOption = 1,
    jobs_config: JobsConfigOption = None,
    max_file_mb: MaxFileMbOption = 64,
    engine: EngineOption = "smolora",
    vllm_python: VllmPythonOption = None,
    strict: StrictOpt = False,
) -> None:
    """Serve an OpenAI-compatible API: /v1/chat/completions (SSE streaming too), /v1/completions, /v1/models.

    The request's `model` field picks the base model or any adapter by name. OpenAI's fine-tuning API
    (/v1/files, /v1/fine_tuning/jobs) trains on the served base; see docs/jobs.md.

    Example: smolora serve runs/quickstart --adapter other=runs/other --port 8000

    Example: smolora serve runs/quickstart --jobs-dir jobs --jobs-workers 2 --api-key secret
    """
    strict_process(strict)
    if engine == "vllm":
        from smolora.serve.vllm import launch

        launch(model, parse_adapters(adapter or []), host, port, api_key, vllm_python)  # never returns
    from smolora.serve.app import serve as run_server

    run_server(
        model,
        parse_adapters(adapter or []),
        host,
        port,
        api_key,
        max_batch,
        batch_wait_ms,
        threads,
        max_tokens_cap=max_tokens_cap,
        request_timeout=request_timeout,
        rate_limit=rate_limit,
        max_body_kb=max_body_kb,
        forwarded_allow_ips=forwarded_allow_ips,
        batching=batching,
        weight_layout=weight_layout,
        adapter_dir=adapter_dir,
        jobs=jobs_settings(model, jobs_dir, jobs_workers, jobs_config, max_file_mb),
    )


def jobs_settings(
    model: str, jobs_dir: Path | None, workers: int, config: Path | None, max_file_mb: int
) -> dict:
    """The job queue's settings; its template is --jobs-config, else the served run's own config."""
    from smolora.runs import ADAPTER_DIR, CONFIG_FILE, smolora_home

    if config is not None and not config.is_file():
        raise SmoLoRAError(f"--jobs-config {config}: no such file; name a run config (YAML or JSON)")
    from smolora.config import load_config

    run = Path(model)
    places = (run, run.parent) if run.name == ADAPTER_DIR else (run,)
    found = next((p / CONFIG_FILE for p in places if (p / CONFIG_FILE).is_file()), None)
    if config or found:
        load_config(config or found)  # a broken template is an error now, not at the first job
    return {
        "root": (jobs_dir or smolora_home() / "jobs").expanduser().resolve(),
        "template": config or found,
        "workers": workers,
        "max_file_bytes": max_file_mb << 20,
    }
