"""The project's own documentation is there, linked from the README, and the configuration reference is
generated from the code (regenerate with `python scripts/gen_config_docs.py`); the layering it describes
holds (which module may import which)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
METHOD_PAGES = ["regression", "sr3", "cold", "irsde", "refusion", "rddm", "noise_da"]


def _generator():
    return load_script("scripts/gen_config_docs.py", "gen_config_docs")


def test_config_reference_is_up_to_date():
    assert (REPO / "docs" / "config.md").read_text() == _generator().render(), \
        "docs/config.md is out of date: run python scripts/gen_config_docs.py"


def test_config_reference_lists_every_key_and_registered_class():
    import dataclasses

    from irdiff.config import Config, DataSpec, SampleConfig, TrainConfig
    from irdiff.registry import DEGRADATIONS, METHODS, NETS

    text = _generator().render()
    for cls, prefix in ((Config, ""), (DataSpec, "data.train."), (TrainConfig, "train."), (SampleConfig, "sample.")):
        for f in dataclasses.fields(cls):
            assert f"`{prefix}{f.name}`" in text, f.name
    for kind, reg in (("method", METHODS), ("net", NETS), ("degradation", DEGRADATIONS)):
        for name in reg.names():
            assert f"### {kind} `{name}`" in text


def test_docs_exist_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text()
    pages = ["docs/architecture.md", "docs/config.md"] + [f"docs/methods/{m}.md" for m in METHOD_PAGES]
    for page in pages:
        assert (REPO / page).is_file(), page
    assert "docs/architecture.md" in readme and "docs/config.md" in readme and "docs/methods/" in readme
    assert "DESIGN.md" not in readme, "the README points at a design document users cannot see"
    for page in [REPO / "README.md", *(REPO / p for p in pages)]:
        text = page.read_text()
        if page.name != "README.md":
            assert "shared/" not in text and "DESIGN.md" not in text, f"{page} points outside the repository"
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links resolve
            assert (page.parent / target).exists(), f"{page}: broken link {target}"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] == "irdiff"}


@pytest.mark.parametrize("module, allowed", [
    ("nets/unet.py", {"irdiff.nets.layers"}),
    ("nets/restorers.py", {"irdiff.nets.layers"}),
    ("nets/layers.py", set()),
])
def test_nets_import_nothing_of_ours_but_layers(module, allowed):
    assert _imports(REPO / "irdiff" / module) <= allowed


def test_inference_methods_and_evaluation_do_not_import_the_trainer_or_the_cli():
    for path in [REPO / "irdiff" / "inference.py", REPO / "irdiff" / "evaluate.py", REPO / "irdiff" / "build.py",
                 *(REPO / "irdiff" / "methods").glob("*.py"), *(REPO / "irdiff" / "nets").glob("*.py"),
                 *(REPO / "irdiff" / "data").glob("*.py")]:
        bad = {m for m in _imports(path) if m in ("irdiff.train", "irdiff.cli", "irdiff.bench")}
        assert not bad, f"{path.name} imports {bad}"
