"""Config parsing under hypothesis: any YAML text, any mapping, any `--set` string.

The only outcomes allowed are a RunConfig or a ConfigError (a SmoLoRAError) whose message is
bounded; never another exception, never a traceback for the CLI to print. Run names that
would leave output.dir are always refused. Examples are capped (~200 each) so this stays fast.
"""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smolora.config import RunConfig, apply_overrides, build_config, load_config
from smolora.config_problems import MAX_PROBLEMS
from smolora.errors import SmoLoRAError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Real section and field names, so many examples get past "unknown key" into the validators.
FIELDS = {name: list(field.annotation.model_fields) for name, field in RunConfig.model_fields.items()}
KEYS = st.sampled_from([f"{s}.{f}" for s, fs in FIELDS.items() for f in fs]) | st.text(
    string.ascii_letters + "._-", min_size=1, max_size=20
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["..", ".", "a/b", "auto", "lora", "cpu", "1e-4", "-1", "0", "[1, 2]", "{}"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
SECTIONS = st.dictionaries(
    st.sampled_from(list(FIELDS)) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(sum(FIELDS.values(), [])) | st.text(max_size=8), VALUES, max_size=6)
    | VALUES,
    max_size=6,
)


def outcome(make) -> RunConfig | None:
    """The config, or None after a bounded, one-message SmoLoRAError."""
    try:
        cfg = make()
    except SmoLoRAError as e:
        message = str(e)
        assert message and len(message) < 8000, len(message)
        assert len(message.splitlines()) <= MAX_PROBLEMS + 2
        return None
    assert isinstance(cfg, RunConfig)
    name = cfg.output.name
    assert name is None or (name not in ("", ".", "..") and not any(c in name for c in "/\\\0")), name
    return cfg


@FUZZ
@given(SECTIONS)
def test_any_mapping_gives_a_config_or_a_config_error(data):
    outcome(lambda: build_config(data, "fuzz"))


@FUZZ
@given(
    st.lists(st.tuples(KEYS, st.sampled_from(["=", ""]), st.text(max_size=30) | SCALARS.map(str)), max_size=6)
)
def test_any_set_strings_give_a_config_or_a_config_error(parts):
    overrides = [f"{key}{sep}{value}" for key, sep, value in parts]
    outcome(lambda: build_config(apply_overrides({}, overrides), "--set"))


@FUZZ
@given(st.text(max_size=300) | SECTIONS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
def test_any_yaml_file_gives_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome(lambda: load_config(path))
