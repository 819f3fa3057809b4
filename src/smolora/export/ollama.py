"""An Ollama Modelfile whose TEMPLATE is the run's own chat template, translated to Go-template text.

The Jinja template is rendered on conversations that grow one message at a time; what each
role adds before and after its content, the generation prompt, a BOS written once and a
default system turn are read off those renders. A template that cannot be described that way
is refused rather than translated wrongly.

Run as:
    text = modelfile_text(tokenizer, tokenizer.chat_template, None, "model.gguf", 4096)
"""

from __future__ import annotations

from typing import Any

from smolora.errors import ExportError
from smolora.export.gguf import adds_bos
from smolora.generate import end_token_ids


def template_parts(tokenizer: Any, template: str) -> dict[str, Any]:
    """Cut a chat template into per-role prefix/suffix, the generation prompt and any default system turn.

    Rendering conversations that grow by one message shows what each message adds; a template
    that cannot be described that way is refused rather than translated wrongly.
    """
    try:
        try:
            return _template_parts(tokenizer, template, lead="")
        except ValueError:
            if not tokenizer.bos_token:
                raise
            # Llama 3 style: the template writes BOS once, before the first turn.
            return _template_parts(tokenizer, template, lead=tokenizer.bos_token)
    except Exception as e:  # jinja raises whatever the template author chose
        raise ExportError(
            f"cannot translate this chat template into an Ollama TEMPLATE ({e}); the GGUF carries the "
            "template itself (tokenizer.chat_template), write the Modelfile TEMPLATE by hand"
        ) from None


def _template_parts(tokenizer: Any, template: str, lead: str) -> dict[str, Any]:
    mark = "\x00{}\x00"

    def render(messages: list[dict], gen: bool = False) -> str:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=gen
        )
        if not text.startswith(lead):
            raise ValueError("the template does not start with BOS")
        return text[len(lead) :]

    convo = [
        {"role": "system", "content": mark.format("S")},
        {"role": "user", "content": mark.format("U1")},
        {"role": "assistant", "content": mark.format("A1")},
        {"role": "user", "content": mark.format("U2")},
    ]
    parts: dict[str, Any] = {"lead": lead}
    previous = ""
    for i, m in enumerate(convo):
        text = render(convo[: i + 1])
        if not text.startswith(previous) or m["content"] not in text[len(previous) :]:
            raise ValueError("rendering is not incremental")
        prefix, _, suffix = text[len(previous) :].partition(m["content"])
        if m["role"] in parts and parts[m["role"]] != (prefix, suffix):
            raise ValueError(f"{m['role']} turns render differently")
        parts[m["role"]] = (prefix, suffix)
        previous = text
    parts["generation"] = render(convo, gen=True)[len(previous) :]
    lone_user = render(convo[1:2])
    user_turn = parts["user"][0] + mark.format("U1") + parts["user"][1]
    if not lone_user.endswith(user_turn):
        raise ValueError("a lone user turn renders differently")
    preamble = lone_user[: len(lone_user) - len(user_turn)]
    sys_prefix, sys_suffix = parts["system"]
    parts["default_system"] = None
    if preamble:
        if not (preamble.startswith(sys_prefix) and preamble.endswith(sys_suffix)):
            raise ValueError("the template adds text before the first turn that is not a system turn")
        parts["default_system"] = preamble[len(sys_prefix) : len(preamble) - len(sys_suffix)]
    return parts


def go_literal(text: str) -> str:
    if "{{" in text or '"""' in text:
        raise ExportError(f"chat template text {text!r} cannot be written inside an Ollama TEMPLATE")
    return text


def modelfile_text(
    tokenizer: Any,
    template: str,
    system_prompt: str | None,
    gguf_name: str,
    n_ctx: int,
    adapter: str | None = None,
) -> str:
    """An Ollama Modelfile: FROM the GGUF (with `adapter`: the base, plus ADAPTER the LoRA GGUF), a Go
    TEMPLATE equal to the chat template, stops, parameters."""
    parts = template_parts(tokenizer, template)
    turns = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{go_literal(parts[role][0])}{{{{ .Content }}}}{go_literal(parts[role][1])}"
        for i, role in enumerate(("system", "user", "assistant"))
    )
    lead = "" if adds_bos(tokenizer) else parts["lead"]  # llama.cpp adds that BOS itself
    go_template = f"{go_literal(lead)}{{{{ range .Messages }}}}{turns}{{{{ end }}}}{{{{ end }}}}{go_literal(parts['generation'])}"
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_token_ids(tokenizer)]
    lines = [
        "# Written by `smolora export --format ollama`. Create the model with:",
        f"#   ollama create my-model -f {'Modelfile.adapter' if adapter else 'Modelfile'} && ollama run my-model",
        f"FROM ./{gguf_name}",
        *([f"ADAPTER ./{adapter}"] if adapter else []),  # a LoRA GGUF for exactly this base
        f'TEMPLATE """{go_template}"""',
    ]
    system = system_prompt or parts["default_system"]
    if system:
        # Ollama sends SYSTEM as the first message when the user gives none, as the template did.
        lines.append(f'SYSTEM """{go_literal(system)}"""')
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]
    # Greedy decoding is what `smolora eval` measured and the parity check verified.
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {n_ctx}"]
    return "\n".join(lines) + "\n"
