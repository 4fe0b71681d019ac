"""The README cannot drift from the code: every fenced shell command and Python snippet in it is run here.

Commands run as written, in a sandbox folder that holds what they name (photo.jpg, lowres/, scans/, noisy/,
clean_val/, holes.png, ...), with ``irdiff`` meaning this checkout (``python -m irdiff.cli``) and
``configs/X.yaml`` a tiny version of the shipped config (small net, two steps, sandbox images): the README's
own arguments apply on top. Commands that need a trained run (or an earlier command's output) are slow and
run in README order after the README's training commands. Install lines are not run but checked against
pyproject.toml; the test-suite command is this suite. A new kind of command fails here until it gets a rule
(see ``classify``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIRST_GAIN_DB = 6.0  # the bundled denoiser raises the sample's PSNR by 13.1 dB; a replacement must keep >= 6


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(body: str) -> list[str]:
    """One entry per command: continuation lines joined, comments dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # the README puts no '#' inside quotes
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


SHELL = [c for lang, body in fenced_blocks(README) if lang in ("bash", "sh", "shell", "") for c in
         shell_commands(body)]
PYTHON = [body for lang, body in fenced_blocks(README) if lang == "python"]


def classify(cmd: str) -> str:
    """install | suite | train | irdiff | accelerate | env | fetch | server; anything else has no rule yet."""
    words = shlex.split(cmd)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # leading VAR=value
        words = words[1:]
    if words[:1] == ["export"]:
        return "env"  # shows a variable; the sandbox sets its own IRDIFF_DATA
    if words[:3] == ["irdiff", "data", "fetch"]:
        return "fetch"  # run offline (tests never download): must say what to download by hand
    if words[:2] == ["irdiff", "demo"]:
        return "server"  # parsed here; tests/test_demo_browser.py runs the page
    if words[:3] == ["python3", "-m", "venv"] or words[:1] in (["."], ["source"]) or words[:2] == ["pip", "install"]:
        return "install"
    if words[:3] == ["python", "-m", "pytest"]:
        return "suite"
    if words[:2] == ["irdiff", "train"]:
        return "train"
    if words[:1] == ["irdiff"]:
        return "irdiff"
    if words[:2] == ["accelerate", "launch"]:
        return "accelerate"
    return "unknown"


def test_readme_has_the_snippets_this_test_runs():
    kinds = [classify(c) for c in SHELL]
    assert "unknown" not in kinds, [c for c in SHELL if classify(c) == "unknown"]
    assert kinds.count("irdiff") >= 6 and kinds.count("train") >= 2 and len(PYTHON) >= 1


def test_install_lines_match_pyproject():
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch"))
    for cmd in SHELL:
        words = shlex.split(cmd)
        if words[:2] != ["pip", "install"]:
            continue
        for arg in words[2:]:
            if arg.startswith("torch"):
                assert arg == torch_pin.replace(" ", ""), f"README installs {arg}, pyproject pins {torch_pin}"
            elif arg not in ("-e", "."):
                m = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
                assert m, f"unexpected pip argument {arg!r} in {cmd!r}"
                assert set(m.group(1).split(",")) <= set(extras), f"{arg}: no such extra in pyproject.toml"
    for cmd in SHELL:
        if classify(cmd) == "suite" and " -n " in f" {cmd} ":
            assert any(d.startswith("pytest-xdist") for d in extras["dev"]), "-n needs pytest-xdist in [dev]"


# ---------------------------------------------------------------------------------------------- sandbox


def _image(path: Path, h: int, w: int, seed: int, mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(40, 216, (h, w, 3 if mode == "RGB" else 1), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr if mode == "RGB" else arr[..., 0]).save(path)


def _tiny_configs(sandbox: Path, folders: Path) -> None:
    from test_configs import tiny

    (sandbox / "configs").mkdir()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data = tiny(path, folders)
        (sandbox / "configs" / path.name).write_text(yaml.safe_dump(data, sort_keys=False))


def _env(sandbox: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "IRDIFF_DATA": str(sandbox / "data"),
            "PYTHONDONTWRITEBYTECODE": "1"}


def _run(cmd: str, sandbox: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    words = shlex.split(cmd)
    if words[0] == "irdiff":
        cmd = f"{shlex.quote(sys.executable)} -m irdiff.cli {cmd[len('irdiff '):]}"
    cmd = cmd.replace("/path/to/", "")  # the README's placeholders name sandbox folders
    res = subprocess.run(["bash", "-c", cmd], cwd=sandbox, env=_env(sandbox), capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"README command failed: {cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    (root / "irdiff").symlink_to(REPO / "irdiff")  # the README names irdiff/assets/...
    folders = tmp_path_factory.mktemp("readme_data")
    for i in range(3):
        _image(folders / "gt" / f"im{i}.png", 48, 48, i)
        _image(folders / "lq" / f"im{i}.png", 48, 48, 10 + i)
    _tiny_configs(root, folders)
    for i in range(2):
        _image(root / "clean" / f"c{i}.png", 48, 48, 20 + i)
        _image(root / "clean_val" / f"v{i}.png", 40, 40, 30 + i)
        _image(root / "noisy" / f"v{i}.png", 40, 40, 40 + i)
        _image(root / "lowres" / f"l{i}.png", 12, 16, 50 + i)
        _image(root / "scans" / f"s{i}.png", 40, 36, 60 + i)
    _image(root / "rainy" / "r0.png", 40, 48, 80)
    # the README's `irdiff import` example: a reduced-width IR-SDE state_dict saved as the official code does
    shutil.copy(REPO / "tests" / "fixtures" / "official" / "irsde" / "net.pth", root / "rain100h_sde.pth")
    _image(root / "photo.jpg", 40, 48, 70)
    _image(root / "photo.png", 40, 48, 71)
    holes = np.zeros((40, 48), np.uint8)
    holes[10:20, 12:30] = 255
    from PIL import Image

    Image.fromarray(holes).save(root / "holes.png")
    return root


@pytest.fixture(scope="module")
def trained(sandbox):
    """The sandbox after the README's training commands, plus the runs it uses without training them."""
    from irdiff.config import load_config
    from irdiff.train import train

    for name in ("sr3_inpaint",):
        train(load_config(sandbox / "configs" / f"{name}.yaml"), sandbox / "runs" / name, progress=False)
    for cmd in SHELL:
        if classify(cmd) == "train":
            _run(cmd, sandbox)
    return sandbox


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_first_command_restores_the_bundled_sample_and_improves_it(sandbox):
    from PIL import Image

    first = FIRST
    assert first.startswith("irdiff restore irdiff/assets/sample_noisy.png -o restored.png"), first
    res = _run(first, sandbox)
    assert res.stdout.strip().splitlines() == [res.stdout.strip()] and " -> restored.png (256x256, " in res.stdout
    clean = np.asarray(Image.open(REPO / "irdiff" / "assets" / "sample_clean.png").convert("RGB"))
    noisy = np.asarray(Image.open(REPO / "irdiff" / "assets" / "sample_noisy.png").convert("RGB"))
    restored = np.asarray(Image.open(sandbox / "restored.png").convert("RGB"))
    before, after = _psnr(noisy, clean), _psnr(restored, clean)
    assert f"from {before:.2f} dB" in README  # the README states the input's PSNR
    assert after - before >= FIRST_GAIN_DB, (before, after)


FIRST = next(c for c in SHELL if classify(c) == "irdiff")
OTHERS = [c for c in SHELL if classify(c) == "irdiff" and c != FIRST]  # the first has its own test
# commands that use a trained run or what an earlier command wrote: slow, run in README order after training
NEEDS_RUNS = [c for c in OTHERS if "runs/" in c or shlex.split(c)[1] == "eval" or "models/irsde-derain" in c]
STANDALONE = [c for c in OTHERS if c not in NEEDS_RUNS]


def _check_output(res: subprocess.CompletedProcess, cmd: str, sandbox: Path) -> None:
    words = shlex.split(cmd)
    if words[1] == "restore":  # one line per restored file
        assert res.stdout.count(" -> ") >= 1, res.stdout
    if "--json" in words:
        assert (sandbox / words[words.index("--json") + 1]).is_file() and "wrote" in res.stdout


@pytest.mark.parametrize("cmd", STANDALONE, ids=[c[:60] for c in STANDALONE])
def test_readme_irdiff_command_runs(sandbox, cmd):
    _check_output(_run(cmd, sandbox), cmd, sandbox)


@pytest.mark.slow
def test_readme_training_and_the_commands_using_runs(trained):
    _run(FIRST, trained)  # its restored.png is evaluated
    for cmd in NEEDS_RUNS:
        _check_output(_run(cmd, trained), cmd, trained)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_snippet_runs(sandbox, index):
    script = sandbox / f"snippet{index}.py"
    script.write_text(PYTHON[index])
    res = subprocess.run([sys.executable, str(script)], cwd=sandbox, env=_env(sandbox), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


ACCELERATE = [c for c in SHELL if classify(c) == "accelerate"]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ACCELERATE, ids=[c[:40] for c in ACCELERATE])
def test_readme_accelerate_command_runs(trained, cmd):
    pytest.importorskip("accelerate")
    res = _run(cmd, trained, timeout=600)
    assert res.stdout.count("trained ") == 1, res.stdout  # two processes, one final line


FETCH = [c for c in SHELL if classify(c) == "fetch"]
SERVERS = [c for c in SHELL if classify(c) == "server"]


@pytest.mark.parametrize("cmd", FETCH, ids=[c[:40] for c in FETCH])
def test_readme_fetch_command_offline_says_what_to_download(sandbox, cmd):
    """Tests never download: with the mirror unreachable, the README's fetch fails in one line per set that
    says where to get the files and where to put them."""
    words = shlex.split(cmd)
    full = f"{shlex.quote(sys.executable)} -m irdiff.cli {shlex.join(words[1:])}"
    env = {**_env(sandbox), "IRDIFF_DATA_URL": "http://127.0.0.1:9"}  # the discard port: refused
    res = subprocess.run(["bash", "-c", full], cwd=sandbox, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(words) - 3  # one line per set named
    assert all("offline?" in ln and "download the" in ln and str(sandbox / "data") in ln for ln in lines), lines


@pytest.mark.parametrize("cmd", SERVERS, ids=[c[:40] for c in SERVERS])
def test_readme_demo_command_parses(cmd):
    from irdiff.cli import build_parser

    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert args.command == "demo"


def test_readme_snippet_count():
    """The number of README snippets this file executes (irdiff + training + Python + accelerate)."""
    n = (1 + len(OTHERS) + sum(classify(c) == "train" for c in SHELL) + len(PYTHON) + len(ACCELERATE)
         + len(FETCH) + len(SERVERS))
    print(f"README snippets executed: {n}")
    assert n >= 10
