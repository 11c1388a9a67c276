"""Private virtualenvs for the engines we compare against (benchmarks/.venvs/<name>).

Each engine gets its own environment so its pins never touch the project's
.venv. Creation is idempotent: a venv whose install finished carries a marker
file naming what was installed, and is reused as is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENVS_DIR = Path(__file__).resolve().parent / ".venvs"
_MARKER = "bench-installed.json"
# numpy below 2.3 keeps wheels for every Python these engines support.
_COMMON = ["onnxruntime>=1.18,<2", "numpy>=1.26,<2.3"]

REQUIREMENTS: dict[str, list[str]] = {
    # uvloop 0.22 breaks MLServer 1.7's parallel workers ("no current event loop";
    # MLServer issue 2286, unfixed in 1.7.1).
    "mlserver": ["mlserver>=1.6,<2", "uvloop<0.22", *_COMMON],
    "bentoml": ["bentoml>=1.4,<2", *_COMMON],
    "rayserve": ["ray[serve]>=2.40,<3", *_COMMON],
}


class VenvError(RuntimeError):
    pass


@dataclass(frozen=True)
class Venv:
    name: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, tool: str) -> Path:
        return self.path / "bin" / tool

    def _marker(self) -> dict[str, Any]:
        marker = self.path / _MARKER
        return dict(json.loads(marker.read_text())) if marker.exists() else {}

    def installed(self) -> dict[str, str]:
        """Distribution versions recorded when the install finished."""
        return dict(self._marker().get("versions", {}))

    def up_to_date(self) -> bool:
        return self._marker().get("requirements") == REQUIREMENTS[self.name]


def _run(cmd: list[str | Path], log: Path, timeout_s: float) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VenvError(f"{cmd[0]} took longer than {timeout_s:.0f}s; see {log}") from None
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise VenvError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")


def _versions(venv: Venv, packages: list[str]) -> dict[str, str]:
    names = [re.split(r"[\[<>=!~ ]", p, maxsplit=1)[0] for p in packages]
    code = (
        "import json, sys\nfrom importlib.metadata import version\n"
        "print(json.dumps({n: version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [venv.python, "-c", code, *names], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def ensure_venv(name: str, *, timeout_s: float = 1800.0) -> Venv:
    """The engine's venv, created and installed on first use; reused afterwards
    (installed again only when its requirements here changed)."""
    if name not in REQUIREMENTS:
        raise VenvError(f"no requirements known for engine {name!r}")
    venv = Venv(name, VENVS_DIR / name)
    if venv.up_to_date():
        return venv
    venv.path.mkdir(parents=True, exist_ok=True)
    log = venv.path / "install.log"
    print(f"[venv] installing {name} into {venv.path} (once; log: {log.name})", flush=True)
    if not venv.python.exists():
        _run([sys.executable, "-m", "venv", venv.path], log, 300)
        # The base interpreter's pip may be old; a current one resolves faster.
        _run([venv.python, "-m", "pip", "install", "-q", "--upgrade", "pip"], log, 600)
    packages = REQUIREMENTS[name]
    (venv.path / _MARKER).unlink(missing_ok=True)  # not "ready" until this install ends
    _run([venv.python, "-m", "pip", "install", "-q", *packages], log, timeout_s)
    marker = {"requirements": packages, "versions": _versions(venv, packages)}
    (venv.path / _MARKER).write_text(json.dumps(marker, indent=1))
    return venv
