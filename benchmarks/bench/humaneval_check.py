"""HumanEval pass/fail for a chat answer: pull the code out, run the problem's tests in a sandbox.

The HumanEval paper (Chen et al., 2021) counts a sample as passing when the problem's
``check(entry_point)`` raises nothing. Generated code is untrusted: it runs only in a
child Python started isolated (``-I``: no site-packages of ours, no PYTHON* variables),
with an empty environment, in a throw-away directory, under CPU-time, memory, file-size
and process limits, and is killed at the wall-clock limit.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

_FENCED = re.compile(r"```(?:[Pp]ython3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MEMORY_BYTES = 1 << 30
_FILE_BYTES = 1 << 20


def extract_code(answer: str, problem: dict) -> str:
    """The program to test: the answer's first code block (or the whole answer), made runnable.

    A chat model may answer with the whole function (usual) or with only its body; either
    way the prompt's own imports come first, since answers often drop ``from typing …``.
    """
    match = _FENCED.search(answer)
    code = match.group(1) if match else answer
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        imports = "\n".join(line for line in problem["prompt"].splitlines()
                            if line.startswith(("import ", "from ")))
        return f"{imports}\n{code}"
    return problem["prompt"] + code


def _child_limits(cpu_s: int):
    """What runs in the child before exec: bound what untrusted code may take."""

    def apply() -> None:
        for limit, value in ((resource.RLIMIT_AS, _MEMORY_BYTES), (resource.RLIMIT_FSIZE, _FILE_BYTES),
                             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, cpu_s)):
            resource.setrlimit(limit, (value, value))

    return apply


def passes(answer: str, problem: dict, timeout_s: float = 5.0) -> bool:
    """True when the answer's code passes the problem's tests within ``timeout_s``."""
    program = f"{extract_code(answer, problem)}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    with tempfile.TemporaryDirectory(prefix="humaneval-") as workdir:
        script = Path(workdir) / "program.py"
        script.write_text(program)
        try:
            result = subprocess.run([sys.executable, "-I", "-B", str(script)], check=False, cwd=workdir, env={},
                                    stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                                    preexec_fn=_child_limits(int(timeout_s) + 1), start_new_session=True)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0
