"""The house rules, checked statically on every import statement (function-level ones too), as
import-linter would: shared/ (the contract) and producer/ never import TensorFlow or Keras;
shared/ imports neither side; producer/ never imports the worker."""
import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "shared": ("tensorflow", "keras", "lstmq.worker", "lstmq.producer"),
    "producer": ("tensorflow", "keras", "lstmq.worker"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or absolute `from ... import` in the file names (relative imports
    stay inside their own package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return names


def violations(side: str) -> list[str]:
    found = []
    for path in sorted((REPOSITORY / side).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == banned or module.startswith(banned + ".") for banned in FORBIDDEN[side]):
                found.append(f"{path.relative_to(REPOSITORY)} imports {module}")
    return found


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_the_contract_and_the_producer_import_no_tensorflow_and_nothing_upward(side):
    assert (REPOSITORY / side).is_dir()
    assert violations(side) == []


def test_the_checker_sees_function_level_imports(tmp_path):
    """The rule would be empty if the parser missed imports inside functions: it does not."""
    module = tmp_path / "sample.py"
    module.write_text("def load():\n    import tensorflow as tf\n    from keras import layers\n"
                      "    from lstmq.worker.engine import network\n    from . import sibling\n")
    assert imported_modules(module) == {"tensorflow", "keras", "lstmq.worker.engine"}
