"""Write docs/config.md, the configuration reference, from the typed config itself.

    python scripts/gen_config_docs.py            # rewrite docs/config.md
    python scripts/gen_config_docs.py --check    # exit 1 if docs/config.md is out of date

The sections of a run config are the dataclasses of ``irdiff.config`` (each field's type, default and the
comment written beside it); the sections that pick a registered class by name (``method``, ``net``, a
data stream's ``degradation``, ``data.*.name``) list every registered class with its constructor's
keyword arguments and defaults. tests/test_docs.py fails when the committed file differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "config.md"
LEGACY_KEYS = ("loss_norm", "clip_denoised")  # older spellings, read but not documented as options
PAGE_OF = {"autoencoder": "refusion"}  # methods documented on another method's page (Refusion's first stage)


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` at the end of each field's line, or the comment lines right above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    comments: dict[str, str] = {}
    for i, line in enumerate(lines, 1):
        head = line.strip().split(":", 1)[0]
        if head not in names or ":" not in line:
            continue
        if i in trailing and not line.strip().startswith("#"):
            comments[head] = trailing[i]
            continue
        above, j = [], i - 1
        while j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, trailing.get(j, ""))
            j -= 1
        if above:
            comments[head] = " ".join(above)
    return comments


def type_name(tp: typing.Any) -> str:
    text = str(tp) if typing.get_origin(tp) or not hasattr(tp, "__name__") else tp.__name__
    return text.replace("typing.", "").replace("irdiff.config.", "").replace("NoneType", "None")


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return f"`{value!r}`"


def dataclass_table(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        text = comments.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{type_name(hints[f.name])}` | {default_of(f)} | {text} |")
    retired = getattr(cls, "__retired__", ())
    if retired:
        rows.append("")
        rows.append("Retired keys (accepted and ignored, so older runs load): "
                    + ", ".join(f"`{prefix}{k}`" for k in retired) + ".")
    return rows


def registered_table(registry: typing.Any, kind: str, skip: tuple[str, ...] = (),
                     pages: dict[str, str] | None = None) -> list[str]:
    rows = []
    for name in registry.names():
        obj = registry.get(name)
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        doc = inspect.cleandoc(own or "").split("\n\n")[0].replace("\n", " ")
        rows += [f"### {kind} `{name}`", ""]
        if doc:
            rows += [doc, ""]
        if pages and name in pages:
            rows += [f"The math, the samplers and our choices: [{pages[name]}]({pages[name]}).", ""]
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.name not in ("self",) + skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if dataclasses.is_dataclass(obj):
            params = [p for p in params if p.name in {f.name for f in dataclasses.fields(obj)}]
        if not params:
            rows += ["No options.", ""]
            continue
        rows += ["| key | default |", "|---|---|"]
        for p in params:
            default = "required" if p.default is inspect.Parameter.empty else f"`{p.default!r}`"
            rows.append(f"| `{p.name}` | {default} |")
        rows.append("")
    return rows


def render() -> str:
    from irdiff.config import Config, DataConfig, DataSpec, PriorConfig, SampleConfig, TrainConfig
    from irdiff.registry import DATASETS, DEGRADATIONS, METHODS, NETS

    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by scripts/gen_config_docs.py from irdiff/config.py and the registries; do not edit -->",
        "",
        "A run config is a YAML file whose keys mirror the dataclasses below; `irdiff train --config F",
        "--set a.b=c` overrides any key, `--dry-run` prints the resolved config. An unknown key or a value of",
        "the wrong type is an error naming the key. `${VAR}` / `${VAR:-default}` in a string read an",
        "environment variable. The sections `method`, `net` and a data stream's `degradation` pick a",
        "registered class by `name`; their other keys are that class's options, listed further down.",
        "",
        "## Top level",
        "",
        *dataclass_table(Config, ""),
        "",
        "## `data`",
        "",
        *dataclass_table(DataConfig, "data."),
        "",
        "Each stream (`data.train`, `data.val`, `data.real`) is a data spec:",
        "",
        *dataclass_table(DataSpec, "data.train."),
        "",
        "Streams by `name`: " + ", ".join(f"`{n}`" for n in DATASETS.names()) + ".",
        "",
        "## `train`",
        "",
        *dataclass_table(TrainConfig, "train."),
        "",
        "## `sample`",
        "",
        *dataclass_table(SampleConfig, "sample."),
        "",
        "## `prior`",
        "",
        "Predict-and-refine (`irdiff/prior.py`): the method refines the output of a trained one-pass model.",
        "",
        *dataclass_table(PriorConfig, "prior."),
        "",
        "## `method`: the registered methods",
        "",
        "Older spellings still read: `loss_type: 1 | 2` (SR3, Cold) for `l1 | l2`; IR-SDE's",
        "`loss_type: optimal_path | noise` + `loss_norm` for `objective` + `loss_type`; RDDM's `clip_denoised`",
        "for `clip_x0`.",
        "",
        *registered_table(METHODS, "method", skip=LEGACY_KEYS,
                          pages={n: f"methods/{PAGE_OF.get(n, n)}.md" for n in METHODS.names()}),
        "## `net`: the registered networks",
        "",
        "`in_channels`, `out_channels` and `noise_level_dim` are set by the method, not in the config.",
        "",
        *registered_table(NETS, "net", skip=("in_channels", "out_channels", "noise_level_dim")),
        "## `degradation`: the registered degradations",
        "",
        "A range `[lo, hi]` draws a value per image; noise sigmas are on the 0-255 scale.",
        "",
        *registered_table(DEGRADATIONS, "degradation"),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
