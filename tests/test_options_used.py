"""Every option a user can set is used by some test: CLI options, SmoLoRA's arguments, UI controls.

`smolora generate --sample` once crashed on its first use and no test noticed, because no test
passed `--sample`. This file lists everything a user can set and fails, naming each one, when no
other test file uses it. It is a static scan of tests/*.py (this file left out), so it is fast
and needs no model. Its rules, where a "function" is any `def` in a test file (nested ones and
fixtures included) together with the functions it calls by name (one level deep), defined in
its file or imported from another test file:

- CLI: `smolora CMD --flag` is used when one function's string literals hold CMD's words in a
  row (`"data", "inspect"`) and the flag or one of its other names (`"--sample"`, `"-f"`,
  `"--set=..."`, its environment variable). Options of `smolora` itself (`--quiet`) must
  come right before a command's name (or before other such options), as click reads them.
- Python API: a parameter of `SmoLoRA(...)` or of a public method is used when a function that
  names `SmoLoRA` passes it to that call, by keyword or by position. `**overrides` counts any
  other keyword; `generate(**kwargs)` stands for the keyword parameters of
  `smolora.generate.generate`, where they go.
- UI: a control (an input/select/textarea with a literal id or name in ui/static) is used when a
  test drives it by a selector (`"#chat-temp"`, `'[name="x"]'`, `"#export-run option"`), or, when the JS sends its value
  as a request field (`temperature: +$("#chat-temp").value`, or `const run = $("#export-run")`
  sent as `{ run }`), when a test's call names that request's route and passes a dict with the
  field as a key (`client.post("/api/chat", json={"temperature": 0.7, ...})`).

What it cannot see: whether the test checks the option's effect (the tests it points at do; a
new option needs one that does), and config keys (`--set a.b=c`, the Train form's generated
fields), which the config's own tests cover.

Run as:
    pytest -q tests/test_options_used.py
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
STATIC = TESTS.parent / "src" / "smolora" / "ui" / "static"


# --- what the test files do --------------------------------------------------------------


@dataclass
class Function:
    """One function of a test file: its string literals in source order, its calls, the names it uses."""

    strings: list[str] = field(default_factory=list)
    calls: list[ast.Call] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    helpers: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # (position, callee)
    positions: list[tuple[int, int]] = field(default_factory=list)  # of each string


def literal_text(node: ast.AST) -> str | None:
    """A string literal's value; for an f-string, its leading constant part (`f"--set={x}"` -> "--set=")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def scan_function(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Function:
    out = Function()
    nodes = list(ast.walk(fn))
    # the constant pieces of an f-string are its own business: literal_text reads its leading one
    pieces = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}
    items = []
    for node in nodes:
        text = literal_text(node)
        if text is not None and id(node) not in pieces:
            items.append(((node.lineno, node.col_offset), text))
        if isinstance(node, ast.Call):
            out.calls.append(node)
            if isinstance(node.func, ast.Name):
                out.helpers.append(((node.lineno, node.col_offset), node.func.id))
        if isinstance(node, ast.Name):
            out.names.add(node.id)
    items.sort(key=lambda item: item[0])
    out.positions = [pos for pos, _ in items]
    out.strings = [s for _, s in items]
    return out


def functions_of_tests() -> list[Function]:
    """Every function of every test file, with the string literals of the helpers it calls spliced in."""
    files = {}
    for path in sorted(TESTS.glob("*.py")):
        if path.name != Path(__file__).name:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            files[path.stem] = (tree, [(d.name, scan_function(d)) for d in defs])
    result = []
    for tree, defs in files.values():
        by_name = {}
        for (
            node
        ) in tree.body:  # helpers imported from helpers.py or another file: `from helpers import push_cli`
            if isinstance(node, ast.ImportFrom) and node.module in files:
                imported = {a.name for a in node.names}
                by_name |= {n: f for n, f in files[node.module][1] if n in imported}
        by_name |= dict(defs)
        for _, fn in defs:
            merged = list(zip(fn.positions, fn.strings, strict=True))
            for pos, callee in fn.helpers:
                helper = by_name.get(callee)
                if helper is not None and helper is not fn:
                    merged += [(pos, s) for s in helper.strings]  # the helper's words come at the call
            merged.sort(key=lambda item: item[0])
            result.append(
                Function(
                    strings=[s for _, s in merged],
                    calls=fn.calls,
                    names=fn.names,
                    positions=[p for p, _ in merged],
                )
            )
    return result


# --- the CLI -----------------------------------------------------------------------------


TYPER_OWN = {"help", "install_completion", "show_completion"}  # Typer's, the same in every Typer app


@functools.cache
def cli_options() -> list[tuple[tuple[str, ...], str, set[str]]]:
    """(command words, label, every name of the option) for each option of each command but Typer's own."""
    import typer.main

    from smolora.cli.main import app

    found = []

    def walk(cmd, words: tuple[str, ...]) -> None:
        for param in cmd.params:
            if param.param_type_name != "option" or param.name in TYPER_OWN:
                continue
            names = set(param.opts) | set(param.secondary_opts)
            envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
            label = max((n for n in param.opts if n.startswith("--")), key=len, default=param.opts[0])
            found.append((words, label, names | set(envvars)))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*words, name))

    walk(typer.main.get_command(app), ())
    return found


@functools.cache
def command_words() -> list[tuple[str, ...]]:
    return sorted({words for words, _, _ in cli_options() if words}, key=len, reverse=True)


def at(strings: list[str], words: tuple[str, ...]) -> list[int]:
    """Indices just after each run of `words` in `strings`."""
    n = len(words)
    return [i + n for i in range(len(strings) - n + 1) if tuple(strings[i : i + n]) == words]


def names_flag(s: str, names: set[str]) -> bool:
    return s in names or any(n.startswith("--") and s.startswith(n + "=") for n in names)


def cli_option_used(words: tuple[str, ...], names: set[str], fns: list[Function]) -> bool:
    envvars = {n for n in names if not n.startswith("-")}
    for fn in fns:
        if words:  # anywhere in the function: argument lists are often built before the call
            if at(fn.strings, words) and any(names_flag(s, names) or s in envvars for s in fn.strings):
                return True
        else:  # an option of `smolora` itself: right before a command's name, or other such options
            starts = {i - len(w) for w in command_words() for i in at(fn.strings, w)}
            for j, s in enumerate(fn.strings):
                if names_flag(s, names):
                    k = j + 1
                    while k < len(fn.strings) and fn.strings[k] in root_names():
                        k += 1
                    if k in starts:
                        return True
    return False


@functools.cache
def root_names() -> set[str]:
    return {n for words, _, names in cli_options() if not words for n in names}


def unused_cli_options(fns: list[Function]) -> list[str]:
    return [
        " ".join(["smolora", *words, label])
        for words, label, names in cli_options()
        if not cli_option_used(words, names, fns)
    ]


# --- the Python API ----------------------------------------------------------------------


def api_parameters() -> list[tuple[str, str, int | None]]:
    """(method, parameter, its position or None for keyword-only/expanded) of SmoLoRA's public calls."""
    from smolora import SmoLoRA
    from smolora.generate import generate

    found = []
    methods = ["__init__"] + [n for n, v in vars(SmoLoRA).items() if callable(v) and not n.startswith("_")]
    for name in methods:
        params = list(inspect.signature(getattr(SmoLoRA, name)).parameters.values())[1:]  # no self
        named = {p.name for p in params}
        for pos, p in enumerate(params):
            if p.kind is p.VAR_KEYWORD and name == "generate":  # forwarded to smolora.generate.generate
                skip = {"model", "tokenizer", "prompts"} | named
                found += [(name, q, None) for q in inspect.signature(generate).parameters if q not in skip]
            elif p.kind is p.VAR_KEYWORD:
                found.append((name, "**" + p.name, None))
            elif p.kind is not p.VAR_POSITIONAL:
                found.append((name, p.name, pos if p.kind is not p.KEYWORD_ONLY else None))
    return found


def api_calls(fn: Function, method: str) -> list[ast.Call]:
    def is_it(call: ast.Call) -> bool:
        f = call.func
        if method == "__init__":
            return isinstance(f, ast.Name) and f.id == "SmoLoRA"
        return isinstance(f, ast.Attribute) and f.attr == method

    return [c for c in fn.calls if is_it(c)] if "SmoLoRA" in fn.names else []


def api_parameter_used(method: str, param: str, pos: int | None, fns: list[Function]) -> bool:
    from smolora import SmoLoRA

    named = set(inspect.signature(getattr(SmoLoRA, method)).parameters)
    for fn in fns:
        for call in api_calls(fn, method):
            keywords = {k.arg for k in call.keywords}
            if param.startswith("**"):
                if None in keywords or keywords - named:  # **{...} or a key SmoLoRA does not name
                    return True
            elif param in keywords or (pos is not None and len(call.args) > pos):
                return True
    return False


def unused_api_parameters(fns: list[Function]) -> list[str]:
    return [
        f"SmoLoRA.{method}({param}=)" if method != "__init__" else f"SmoLoRA({param}=)"
        for method, param, pos in api_parameters()
        if not api_parameter_used(method, param, pos, fns)
    ]


# --- the UI ------------------------------------------------------------------------------

CONTROL = re.compile(r"<(?:input|select|textarea)\b([^>]*)>")
JS_CONTROL = re.compile(r"el\(\s*\"(?:input|select|textarea)\"\s*,\s*\{([^}]*)\}")
ATTR = re.compile(r"\b(id|name)\s*[=:]\s*\"([^\"]+)\"")
ROUTE = re.compile(r"\"(/api/[^\"?]+)\"")


def ui_controls() -> list[str]:
    """Ids (or names) of the UI's controls with a literal id or name, in the HTML and the JS."""
    found: list[str] = []
    for path in sorted(STATIC.glob("*.html")) + sorted(STATIC.glob("*.js")):
        text = path.read_text(encoding="utf-8")
        pattern = CONTROL if path.suffix == ".html" else JS_CONTROL
        for m in pattern.finditer(text):
            attrs = dict(ATTR.findall(m.group(1)))
            if "id" in attrs or "name" in attrs:
                found.append(attrs.get("id") or attrs["name"])
    return list(dict.fromkeys(found))


def sent_as(control: str) -> list[tuple[str, str]]:
    """(route, field) where the JS sends this control's value: the nearest "/api/..." literal."""
    out = []
    ref = re.escape(f'$("#{control}")')
    for path in sorted(STATIC.glob("*.js")):
        lines = path.read_text(encoding="utf-8").splitlines()
        routes = [(i, r) for i, line in enumerate(lines) for r in ROUTE.findall(line)]
        for i, line in enumerate(lines):
            for m in re.finditer(rf"(?:const|let)\s+(\w+)\s*=\s*{ref}|(\w+):\s*[^,;{{}}()]*?{ref}", line):
                if routes:
                    route = min(routes, key=lambda r: abs(r[0] - i))[1]
                    out.append((route, m.group(1) or m.group(2)))
    return out


def dict_keys(node: ast.AST) -> set[str]:
    return {
        k.value
        for d in ast.walk(node)
        if isinstance(d, ast.Dict)
        for k in d.keys
        if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }


def ui_control_used(control: str, fns: list[Function]) -> bool:
    selector = re.compile(rf"(#{re.escape(control)}|\\[name=[\"']{re.escape(control)}[\"']\\])([ .:\\[]|$)")
    routes = sent_as(control)
    for fn in fns:
        if any(selector.match(s) for s in fn.strings):
            return True
        for call in fn.calls:
            args = {literal_text(a) for a in call.args}
            keys = dict_keys(call)
            if any(route in args and name in keys for route, name in routes):
                return True
    return False


def unused_ui_controls(fns: list[Function]) -> list[str]:
    return [f"ui #{c}" for c in ui_controls() if not ui_control_used(c, fns)]


# --- the tests ---------------------------------------------------------------------------


def test_the_scan_finds_what_users_can_set():
    """Guards against a scan that finds nothing and so passes: known options are listed."""
    cli = {" ".join(["smolora", *w, label]) for w, label, _ in cli_options()}
    assert {"smolora generate --sample", "smolora --quiet", "smolora data inspect --set"} <= cli
    assert ("generate", "do_sample", None) in api_parameters()
    assert ("__init__", "**overrides", None) in api_parameters()
    assert {"chat-temp", "resume", "export-quant"} <= set(ui_controls())
    assert ("/api/chat", "temperature") in sent_as("chat-temp")


def test_the_rules_can_fail():
    """Each rule on made-up test code: a flag of another command, a kwarg to another class, a route."""
    src = (
        "def test_a(runner, app):\n"
        "    runner.invoke(app, ['export', 'r', '-q', 'f16', '--sample'])\n"
        "    runner.invoke(app, ['chat', 'r', '--system', 'hi'])\n"
        "    Other().generate('x', do_sample=True)\n"
        "    client.post('/api/chat', json={'model': 'm'})\n"
        "def test_b(runner, app):\n"
        "    runner.invoke(app, ['-q', 'generate', 'r', 'hi', '--sample'])\n"
        "    SmoLoRA('m').generate('x', do_sample=True)\n"
        "    client.post('/api/chat', json={'temperature': 0.5})\n"
    )
    tree = ast.parse(src)
    a, b = (scan_function(d) for d in tree.body if isinstance(d, ast.FunctionDef))
    sample = {"--sample"}
    assert not cli_option_used(("generate",), sample, [a]) and cli_option_used(("generate",), sample, [b])
    assert not cli_option_used((), {"--quiet", "-q"}, [a]) and cli_option_used((), {"--quiet", "-q"}, [b])
    assert not api_parameter_used("generate", "do_sample", None, [a])
    assert api_parameter_used("generate", "do_sample", None, [b])
    assert not ui_control_used("chat-temp", [a]) and ui_control_used("chat-temp", [b])


def test_every_option_is_used_by_a_test():
    fns = functions_of_tests()
    unused = unused_cli_options(fns) + unused_api_parameters(fns) + unused_ui_controls(fns)
    assert not unused, (
        f"{len(unused)} options no test uses (add a test that passes each and checks its effect; "
        "the rules are in tests/test_options_used.py):\n  " + "\n  ".join(unused)
    )
