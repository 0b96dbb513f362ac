"""The package's layering (ops -> spectral -> policies -> optim) and the absence of import circles, as
scripts/import_layers.py checks them; and that the checker itself sees a planted circle."""
import importlib.util
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _checker():
    spec = importlib.util.spec_from_file_location("import_layers", os.path.join(ROOT, "scripts", "import_layers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_goes_up_a_layer_or_closes_a_circle(capsys):
    assert _checker().main() == 0, capsys.readouterr().out


def test_the_checker_sees_a_planted_circle_and_an_upward_import(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "llr_kernels"), copy / "llr_kernels", ignore=shutil.ignore_patterns("csrc"))
    rules = copy / "llr_kernels" / "spectral" / "rules.py"
    rules.write_text(rules.read_text().replace("import torch\n", "import torch\n\nfrom ..optim import base  # noqa\n", 1))
    mod = _checker()
    monkeypatch.setattr(mod, "ROOT", copy)
    monkeypatch.setattr(mod, "PKG", copy / "llr_kernels")
    assert mod.main() == 1
    out = capsys.readouterr().out
    assert "import circle" in out and "optim is above spectral" in out
