"""docs/configuration.md and the README's first-settings table, generated from ``Settings``:
names, types, limits and defaults from the fields, meanings from their docstrings, groups
from the section comments of settings.py. ``python -m coverservice.settings_docs --write``
rewrites both; tests/test_settings_docs.py fails when they and the code disagree."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path

from pydantic.fields import FieldInfo

from . import settings as settings_module
from .settings import Settings

PREFIX = "COVERSERVICE_"
ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
FIRST_BEGIN = "<!-- settings:first (generated: python -m coverservice.settings_docs --write) -->"
FIRST_END = "<!-- /settings:first -->"

# What people change first, in the order a deployment meets them.
FIRST = (
    "database_url", "storage_url", "callback_keys", "fetch_allowed_hosts", "admin_tokens",
    "public_base_url", "placeholder_path", "cors_origins", "cover_max_age", "log_format",
)

HEADER = """\
# Configuration

<!-- Generated from coverservice/settings.py: python -m coverservice.settings_docs --write.
     Do not edit by hand; tests/test_settings_docs.py fails when this file and the code disagree. -->

Every setting is a `COVERSERVICE_*` environment variable, read and validated once at
start-up: a bad value stops the process with a message naming the variable. Lists are
comma-separated. Durations are seconds, sizes bytes.
"""

FOOTER = """\
## S3 and compatibles (read by boto3)

S3 storage takes its endpoint and credentials from the standard AWS variables, which
boto3 reads itself: `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`), `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and `AWS_CONFIG_FILE` for the addressing
style (see [deployment](deployment.md#covers-in-tencent-cos)). Tencent COS, MinIO and AWS
S3 all work; requests use botocore's standard retry mode. Nothing else in the package
reads the environment.
"""


def variable(name: str) -> str:
    return PREFIX + name.upper()


def sections() -> list[tuple[str, list[str]]]:
    """Field names grouped by the ``# --- name ---`` comments of settings.py, in order."""
    groups: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(settings_module.Settings).splitlines():
        heading = re.match(r"\s*# --- (.+?) -+$", line)
        if heading:
            groups.append((heading[1].capitalize(), []))
            continue
        field = re.match(r"    ([a-z_]+): ", line)
        if field and field[1] in Settings.model_fields:
            if not groups:
                groups.append(("Settings", []))
            groups[-1][1].append(field[1])
    listed = {name for _, names in groups for name in names}
    rest = [name for name in Settings.model_fields if name not in listed]
    if rest:
        groups.append(("Other", rest))
    return groups


def _default(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        # The embedded defaults live in the working directory.
        return f"`{str(value).replace(Path.cwd().as_posix(), '$PWD')}`"
    value = field.default
    if value is None or value in ((), ""):
        return "empty" if value is not None else "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if annotation is bool:
        return "boolean"
    if typing.get_origin(annotation) is tuple:
        return "list"
    if annotation in (int, float):
        kind = "integer" if annotation is int else "number"
        bounds = []
        for meta in field.metadata:
            for attribute, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
                bound = getattr(meta, attribute, None)
                if isinstance(bound, int | float):
                    bounds.append(f"{symbol} {bound:g}")
        return f"{kind} {', '.join(bounds)}".strip()
    if Path in args:
        return "path"
    return "text"


def _meaning(name: str, field: FieldInfo) -> str:
    if not field.description:
        raise ValueError(f"Settings.{name} has no docstring: say what it means, for docs/configuration.md")
    return " ".join(field.description.split()).replace("|", "\\|")


def _table(names: list[str]) -> list[str]:
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name in names:
        field = Settings.model_fields[name]
        rows.append(f"| `{variable(name)}` | {_type(field)} | {_default(name, field)} | {_meaning(name, field)} |")
    return rows


def configuration() -> str:
    lines = [HEADER]
    for title, names in sections():
        lines += [f"## {title}", "", *_table(names), ""]
    lines.append(FOOTER)
    return "\n".join(lines)


def first_settings() -> str:
    return "\n".join([FIRST_BEGIN, *_table(list(FIRST)), FIRST_END])


def readme_with_first_settings(readme: str) -> str:
    pattern = re.compile(re.escape(FIRST_BEGIN) + ".*?" + re.escape(FIRST_END), re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no {FIRST_BEGIN} ... {FIRST_END} block")
    return pattern.sub(lambda _: first_settings(), readme)


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        CONFIGURATION.write_text(configuration())
        README.write_text(readme_with_first_settings(README.read_text()))
        return 0
    if argv:
        print("usage: python -m coverservice.settings_docs [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(configuration())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

